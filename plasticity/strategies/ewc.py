"""`ewc`: online elastic weight consolidation (Kirkpatrick et al. 2017, arXiv:1612.00796; the online form
of Schwarz et al. 2018, "Progress & Compress", arXiv:1805.06370).

A diagonal Fisher F is estimated at the end of each phase (and at attach for phase 0, at the pretrained
weights) and folded in as F ← γ·F + F_new with the anchor θ* moved to the current weights; the loss gains
(λ/2)·Σ F·(θ − θ*)².

The Fisher is that of the sequence likelihood: for each sequence, g = ∇θ Σ_t log q(y_t | x_≤t) over its
scored positions, and F_new = Σ_seq g² / (number of scored tokens), i.e. per scored token so that λ does
not depend on sequence length or batch size. With `fisher: true` the y_t are sampled from the model's own
predictive (the true Fisher; the cross terms between positions then vanish in expectation, so this is an
unbiased estimate of the mean per-token Fisher); with `empirical` they are the data's next tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plasticity.strategies.base import (
    Strategy,
    check_param,
    cpu_tensors,
    register,
    set_generator_state,
    strategy_generator,
    tensors_to,
)
from streams import Batch
from streams.checks import is_number


def fisher_targets(logits: torch.Tensor, batch: Batch, empirical: bool, generator: torch.Generator) -> torch.Tensor:
    """The labels whose log-likelihood gradients make the Fisher: [B, T] (meaningful where scored)."""
    if empirical:
        return batch.tokens.roll(-1, dims=1)  # position t predicts tokens[t+1]; the last one is unscored
    probs = F.softmax(logits.detach().float(), dim=-1).cpu()  # sampled on the CPU generator: same on CUDA
    draws = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return draws.view(batch.tokens.shape).to(batch.tokens.device)


def fisher_diagonal(model: nn.Module, batches: list[Batch], empirical: bool, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
    """Σ over sequences of (∇θ Σ_scored log q(y_t))², divided by the number of scored tokens."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    n_tokens = 0
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deterministic predictor
    try:
        for batch in batches:
            with torch.no_grad():
                targets = fisher_targets(model(batch.tokens), batch, empirical, generator)
            # One backward per sequence: the squares must be taken per sequence, not of the batch sum.
            for b in range(len(batch)):
                mask = batch.scored[b]
                if not mask.any():
                    continue
                logp = F.log_softmax(model(batch.tokens[b : b + 1])[0].float(), dim=-1)
                ll = logp[mask].gather(-1, targets[b][mask][:, None]).sum()
                grads = torch.autograd.grad(ll, list(params.values()), allow_unused=True)
                for name, g in zip(params, grads):
                    if g is not None:
                        fisher[name] += g.detach().pow(2)
                n_tokens += int(mask.sum())
    finally:
        model.train(was_training)
    return {n: f / max(n_tokens, 1) for n, f in fisher.items()}


@register
class EWC(Strategy):
    name = "ewc"
    description = "online elastic weight consolidation: a diagonal-Fisher penalty per phase (Kirkpatrick et al. 2017)"

    @dataclass
    class Params:
        lam: float = 100.0  # λ: penalty strength (the Fisher is per scored token, like the task loss)
        gamma: float = 1.0  # γ: decay of the accumulated Fisher at each new phase (1: plain sum)
        fisher_batches: int = 8  # stream batches of the finished phase, evenly spaced over its steps
        fisher: str = "true"  # true: labels sampled from the model | empirical: the data's next tokens
        seed: int = 0  # for the sampled labels; mixed with the stream's seed

    def check(self, p: Params) -> None:
        check_param(self.name, "lam", p.lam, is_number(p.lam) and p.lam >= 0, "a finite number >= 0")
        check_param(self.name, "gamma", p.gamma, is_number(p.gamma) and 0 <= p.gamma <= 1, "in [0, 1]")
        check_param(self.name, "fisher_batches", p.fisher_batches,
                    type(p.fisher_batches) is int and p.fisher_batches >= 1, "an integer >= 1")
        if p.fisher is True:  # YAML reads an unquoted `fisher: true` as a boolean
            p.fisher = "true"
        check_param(self.name, "fisher", p.fisher, p.fisher in ("true", "empirical"), "'true' or 'empirical'")
        check_param(self.name, "seed", p.seed, type(p.seed) is int and p.seed >= 0, "an integer >= 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.generator = strategy_generator(stream.seed, self.params.seed, 0x6577)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._consolidate(module, 0)  # the pretraining phase, at the weights the arm starts from

    def state_dict(self) -> dict:
        return {"fisher": cpu_tensors(self.fisher), "anchor": cpu_tensors(self.anchor),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        device = next(self.module.model.parameters()).device
        self.fisher, self.anchor = tensors_to(state["fisher"], device), tensors_to(state["anchor"], device)
        set_generator_state(self.generator, state["generator"])

    def phase_batches(self, phase: int, device: torch.device) -> list[Batch]:
        """`fisher_batches` batches at evenly spaced steps of the phase, only that phase's sequences
        (a gradual transition mixes neighbours into a batch)."""
        out = []
        for step in self.stream.phases[phase].spaced_steps(self.params.fisher_batches):
            batch = self.stream.batch(step)
            if "phase" in batch.latent:
                batch = batch[batch.latent["phase"] == phase]
            if len(batch):
                out.append(batch.to(device))
        return out

    def _consolidate(self, module, phase: int) -> None:
        model = module.model
        device = next(model.parameters()).device
        new = fisher_diagonal(model, self.phase_batches(phase, device), self.params.fisher == "empirical",
                              self.generator)
        g = self.params.gamma
        self.fisher = {n: g * self.fisher[n] + f if n in self.fisher else f for n, f in new.items()}
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.fisher}

    def on_phase_end(self, module, phase: int) -> None:
        if phase < len(self.stream.phases) - 1:  # nothing comes after the last phase to protect it from
            self._consolidate(module, phase)

    def penalty(self, module, batch, logits):
        total = sum((self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                    for n, p in module.model.named_parameters() if n in self.fisher)
        return 0.5 * self.params.lam * total
