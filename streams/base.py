"""The family contract: a Batch of tokens with the exact posterior predictive at every position.

A family is a dataclass of its parameters; `sample(batch_size, generator)` draws one task per sequence
(a permutation, an HMM, a Dirichlet θ...) and the tokens, and computes the exact posterior predictive of
every next token, vectorized over the batch. Families validate their parameters on construction and
raise ValueError naming the parameter, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from streams.checks import did_you_mean
from streams.registry import Registry, field_defaults

GROUP_MASK_PREFIX = "scored_"


@dataclass
class Batch:
    """`posterior[b, t]` is the exact distribution of `tokens[b, t+1]` given `tokens[b, :t+1]`.

    It is meaningful where `scored[b, t]`; elsewhere it is all zeros. `scored[:, -1]` is always False.
    `latent` optionally carries the sampled tasks, for diagnostics (tensors with a leading batch axis).
    `general`, for sequences drawn from a finite task pool (streams.pool), is the posterior under the
    family's own prior — what an in-context learner that ignores the pool predicts — while `posterior` is
    the exact one, under the pool; None when the two are the same.
    A latent named `scored_<group>` (GROUP_MASK_PREFIX) is a bool mask [B, T] of a subset of `scored` that
    evaluations report on its own, as `kl_bits_<group>` (the causal family's observational and
    interventional values); padding pads it with False.
    """

    tokens: torch.Tensor  # long [B, T]
    posterior: torch.Tensor  # float64 [B, T, V]
    scored: torch.Tensor  # bool [B, T]
    latent: dict[str, torch.Tensor] = field(default_factory=dict)
    general: torch.Tensor | None = None  # float64 [B, T, V]

    def __post_init__(self) -> None:
        B, T = self.tokens.shape
        if self.posterior.shape[:2] != (B, T) or self.scored.shape != (B, T) or (
                self.general is not None and self.general.shape != self.posterior.shape):
            raise ValueError(
                f"Batch shapes disagree: tokens {tuple(self.tokens.shape)}, "
                f"posterior {tuple(self.posterior.shape)}, scored {tuple(self.scored.shape)}"
                + (f", general {tuple(self.general.shape)}" if self.general is not None else "")
            )

    @property
    def general_posterior(self) -> torch.Tensor:
        """The posterior under the family's own prior (`posterior` itself outside a task pool)."""
        return self.posterior if self.general is None else self.general

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.posterior.shape[-1]

    def to(self, device: torch.device | str, posterior_dtype: torch.dtype | None = None) -> Batch:
        """Tokens, posterior and mask on `device`; `latent` stays where it is (diagnostics that training
        never reads, so no per-step transfer is paid for them)."""
        dtype = posterior_dtype or self.posterior.dtype
        post = self.posterior.to(device=device, dtype=dtype)
        general = None if self.general is None else self.general.to(device=device, dtype=dtype)
        return Batch(self.tokens.to(device), post, self.scored.to(device), dict(self.latent), general)

    def __getitem__(self, index) -> Batch:
        latent = {k: v[index] for k, v in self.latent.items()}
        general = None if self.general is None else self.general[index]
        return Batch(self.tokens[index], self.posterior[index], self.scored[index], latent, general)

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Concatenate along the batch axis; all batches must share T and V. Latents are dropped
        unless every batch has the same keys with matching shapes."""
        latent: dict[str, torch.Tensor] = {}
        keys = set(batches[0].latent)
        if all(set(b.latent) == keys for b in batches):
            try:
                latent = {k: torch.cat([b.latent[k] for b in batches]) for k in keys}
            except RuntimeError:
                latent = {}
        general = None  # a batch outside a pool has its own posterior as the general one
        if any(b.general is not None for b in batches):
            general = torch.cat([b.general_posterior for b in batches])
        return Batch(
            torch.cat([b.tokens for b in batches]),
            torch.cat([b.posterior for b in batches]),
            torch.cat([b.scored for b in batches]),
            latent,
            general,
        )

    def placed(self, offset: int, vocab_size: int) -> Batch:
        """The same batch with every token id shifted by `offset` in a vocabulary of `vocab_size`."""
        V = self.vocab_size
        if offset < 0 or offset + V > vocab_size:
            raise ValueError(f"cannot place {V} tokens at offset {offset} in a vocabulary of {vocab_size}")
        if offset == 0 and V == vocab_size:
            return self
        def place(p: torch.Tensor) -> torch.Tensor:
            out = p.new_zeros(*p.shape[:2], vocab_size)
            out[..., offset : offset + V] = p
            return out

        general = None if self.general is None else place(self.general)
        return Batch(self.tokens + offset, place(self.posterior), self.scored, self.latent, general)


# ---------------------------------------------------------------------------------------------------
# Registry


@dataclass
class Family:
    """Base class: subclasses are dataclasses whose fields are the family's parameters."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The parameter that sets the sequence length, for longer evaluation banks (None: fixed length).
    length_param: ClassVar[str | None] = None

    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def seq_len(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def with_length(self, length: int) -> Family:
        """The same family with sequences of a different length (for length generalization)."""
        if self.length_param is None:
            raise ValueError(f"family '{self.name}' has a fixed sequence length")
        return dataclasses.replace(self, **{self.length_param: length})

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


FAMILIES: Registry[type[Family]] = Registry("family", Family)
register = FAMILIES.register  # @register on a Family dataclass with a name and a one-line description


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    description: str
    params: dict[str, Any]  # parameter -> default (dataclasses.MISSING shown as None)
    length_param: str | None


def families() -> list[FamilyInfo]:
    """Every registered family with its parameters, their defaults and its description."""
    return [
        FamilyInfo(c.name, c.description, field_defaults(c), c.length_param)
        for c in (FAMILIES.classes[n] for n in FAMILIES.names())
    ]


def family_class(name: str) -> type[Family]:
    """A registered family by name, or one defined elsewhere by its import path `package.module:Class`."""
    return FAMILIES.get(name)


def make(name: str, **params: Any) -> Family:
    """Build a family by name (or import path), e.g. `make("bijection", n_keys=8)`."""
    cls = family_class(name)
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"unknown parameter '{key}' for family '{name}'; allowed: {', '.join(allowed)}."
                f"{did_you_mean(key, allowed)}"
            )
    return cls(**params)


# ---------------------------------------------------------------------------------------------------
# Sampling helpers: every draw goes through the caller's torch.Generator, so batches are reproducible.


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded from the torch generator (torch has no seeded gamma/Dirichlet sampler)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def sample_dirichlet(alpha: torch.Tensor | tuple[float, ...], shape: tuple[int, ...], generator: torch.Generator
                     ) -> torch.Tensor:
    """Draw Dirichlet(alpha) vectors of shape `shape + (K,)` in float64."""
    alpha_np = np.asarray(alpha, dtype=np.float64)
    g = numpy_rng(generator).standard_gamma(np.broadcast_to(alpha_np, (*shape, alpha_np.shape[-1])))
    g = np.maximum(g, 1e-300)  # tiny α can underflow every gamma draw to 0
    return torch.from_numpy(g / g.sum(-1, keepdims=True))


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of `probs[..., K]` by inverting the CDF with one uniform per row."""
    u = torch.rand(probs.shape[:-1], generator=generator, dtype=torch.float64).unsqueeze(-1)
    cdf = probs.to(torch.float64).cumsum(-1)
    idx = (cdf < u * cdf[..., -1:]).sum(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def random_permutations(batch_size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """`batch_size` independent uniform permutations of range(n), as a long tensor [B, n]."""
    return torch.rand(batch_size, n, generator=generator, dtype=torch.float64).argsort(dim=-1)
