"""Calibration against the exact posterior, in bits, computed in float64 from the logits.

`kl_bits` — mean over scored positions of KL(p* ‖ q) — is the primary metric: the expected excess log-loss
over the Bayes predictor. `nll_bits − bayes_nll_bits` on the sampled next tokens is a noisy estimate of the
same quantity (its standard error is reported); `entropy_gap_bits` is the paper's metric, a necessary
condition only (right entropy on the wrong support scores 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)
ECE_BINS = 15


def kl_nats(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats over the last axis, float64; 0·log 0 = 0, whatever q is."""
    pos = p > 0
    return torch.where(pos, p * (torch.log(torch.where(pos, p, 1.0)) - logq), 0.0).sum(-1)


def next_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """`[B, T, 1]`: tokens[b, t+1] at position t; position T-1 has none (it is never scored)."""
    return torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1).unsqueeze(-1)


@torch.no_grad()
def step_calibration(logits: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor, tokens: torch.Tensor,
                     general: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's prequential figures, as a float64 tensor on the logits' device (no host sync):
    [KL(p* ‖ q) in nats summed over scored tokens, model NLL summed, Bayes NLL summed, scored tokens,
    KL to the family's general posterior summed (a task pool's second yardstick; NaN without one)].

    The quantities of CalibrationAccumulator, on the scored positions only, in float64 and with the fewest
    passes over the logits, since every training step pays for them: with log q = z − lse(z) and Σ p = 1,
    Σ KL = Σ p log p − Σ p·z + Σ lse(z) and Σ NLL = Σ lse(z) − Σ z[next], so no log-softmax is materialised
    (a float32 one would be cheaper still but moves the KL by ~1e-7 bits; the record must equal the
    evaluator's to 1e-9). p log p uses max(p, 1e-300) inside the log: 0 where p = 0, exact elsewhere."""
    rows = scored.reshape(-1).nonzero().squeeze(1).to(logits.device)
    V = logits.shape[-1]
    z = logits.reshape(-1, V).index_select(0, rows).to(torch.float64)
    # scored[:, -1] is False, so a scored position's next token is the next entry of the flattened tokens.
    nxt = tokens.to(logits.device).reshape(-1).index_select(0, rows + 1).unsqueeze(1)
    m = z.amax(-1, keepdim=True)
    lse_sum = (z - m).exp_().sum(-1).log_().sum() + m.sum()

    def at_scored(dist: torch.Tensor) -> torch.Tensor:
        return dist.to(logits.device).reshape(-1, V).index_select(0, rows).to(torch.float64)

    def kl_sum(d: torch.Tensor) -> torch.Tensor:
        flat = d.reshape(-1)
        return torch.dot(flat, flat.clamp_min(1e-300).log()) - torch.dot(flat, z.reshape(-1)) + lse_sum

    p = at_scored(posterior)
    kl = kl_sum(p)
    kl_general = kl.new_full((), float("nan")) if general is None else kl_sum(at_scored(general))
    bayes = -p.gather(-1, nxt).log().sum()
    n = kl.new_full((), float(len(rows)))
    return torch.stack([kl, lse_sum - z.gather(-1, nxt).sum(), bayes, n, kl_general])


class CalibrationAccumulator:
    """Accumulate over chunks of an eval bank; `compute()` equals the one-shot metrics on the whole bank.

    Positions index the sequence axis, so chunks must split the batch axis, not the time axis.
    """

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        z = lambda n: torch.zeros(n, dtype=torch.float64)
        self.count = z(max_seq_len)  # scored entries per position
        self.kl = z(max_seq_len)  # sums per position, in nats
        self.kl_general: torch.Tensor | None = None  # to a task pool's general posterior, when there is one
        self.h_model = z(max_seq_len)
        self.h_post = z(max_seq_len)
        self.nll = 0.0
        self.bayes_nll = 0.0
        self.diff_sq = 0.0  # Σ (nll − bayes_nll)², for the standard error
        self.bin_count = z(ECE_BINS)
        self.bin_conf = z(ECE_BINS)
        self.bin_acc = z(ECE_BINS)
        self.groups: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (KL sums, counts) per position

    @torch.no_grad()
    def update(self, logits: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor,
               tokens: torch.Tensor, general: torch.Tensor | None = None,
               groups: dict[str, torch.Tensor] | None = None) -> None:
        """`groups`: name -> bool mask [B, T] of a subset of the scored tokens, each reported on its own."""
        B, T, V = logits.shape
        if posterior.shape != (B, T, V) or scored.shape != (B, T) or tokens.shape != (B, T):
            raise ValueError(
                f"shapes disagree: logits {tuple(logits.shape)}, posterior {tuple(posterior.shape)}, "
                f"scored {tuple(scored.shape)}, tokens {tuple(tokens.shape)}"
            )
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the accumulator's max_seq_len {self.max_seq_len}")
        mask = scored.bool()
        logq = F.log_softmax(logits.to(torch.float64), dim=-1)
        q = logq.exp()
        p = posterior.to(device=logits.device, dtype=torch.float64)
        kl = kl_nats(p, logq)
        h_post = -torch.xlogy(p, p).sum(-1)
        h_model = -(q * logq).nan_to_num(0.0).sum(-1)

        m = mask.to(torch.float64)
        self.count[:T] += m.sum(0).cpu()
        self.kl[:T] += (kl * m).sum(0).cpu()
        if general is not None:
            if self.kl_general is None:
                self.kl_general = torch.zeros_like(self.kl)
            g = general.to(device=logits.device, dtype=torch.float64)
            self.kl_general[:T] += (kl_nats(g, logq) * m).sum(0).cpu()
        for name, where in (groups or {}).items():
            g = (where.to(mask.device) & mask).to(torch.float64)
            kl_sum, count = self.groups.setdefault(name, (torch.zeros_like(self.kl), torch.zeros_like(self.count)))
            kl_sum[:T] += (kl * g).sum(0).cpu()
            count[:T] += g.sum(0).cpu()
        self.h_model[:T] += (h_model * m).sum(0).cpu()
        self.h_post[:T] += (h_post * m).sum(0).cpu()

        nxt = next_tokens(tokens.to(logits.device))
        nll = -logq.gather(-1, nxt).squeeze(-1)[mask]
        bayes = -torch.log(p.gather(-1, nxt).squeeze(-1)[mask])
        self.nll += nll.sum().item()
        self.bayes_nll += bayes.sum().item()
        self.diff_sq += ((nll - bayes) ** 2).sum().item()

        conf, pred = q.max(-1)
        conf, correct = conf[mask], (pred == nxt.squeeze(-1))[mask].to(torch.float64)
        # Bins (k/15, (k+1)/15], as in Guo et al. 2017.
        bins = (torch.ceil(conf * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)
        self.bin_count += torch.bincount(bins, minlength=ECE_BINS).to(torch.float64).cpu()
        self.bin_conf += torch.bincount(bins, weights=conf, minlength=ECE_BINS).cpu()
        self.bin_acc += torch.bincount(bins, weights=correct, minlength=ECE_BINS).cpu()

    def compute(self) -> dict:
        n = self.count.sum().item()
        has = self.count > 0
        safe = self.count.clamp(min=1)

        def by_position(total: torch.Tensor, count: torch.Tensor = self.count) -> list:
            per = (total / count.clamp(min=1) / LN2).tolist()
            return [v if c > 0 else None for v, c in zip(per, count.tolist())]

        out: dict = {
            "n_scored": int(n),
            "kl_bits_by_position": by_position(self.kl),
            "kl_bits_general_by_position": by_position(self.kl_general) if self.kl_general is not None else None,
            "model_entropy_bits_by_position": by_position(self.h_model),
            "posterior_entropy_bits_by_position": by_position(self.h_post),
            "groups": {},  # kl_bits_<group> and its curve, for each token group (None where it has no token)
        }
        for name, (kl_sum, count) in sorted(self.groups.items()):
            total = count.sum().item()
            out["groups"][f"kl_bits_{name}"] = kl_sum.sum().item() / total / LN2 if total else None
            out["groups"][f"kl_bits_{name}_by_position"] = by_position(kl_sum, count)
        if n == 0:
            keys = ("kl_bits", "entropy_gap_bits", "nll_bits", "bayes_nll_bits", "nll_gap_se_bits", "ece",
                    "kl_bits_general")
            return {**out, **dict.fromkeys(keys)}
        gap = ((self.h_model - self.h_post).abs() / safe)[has].mean().item() / LN2
        mean_diff = (self.nll - self.bayes_nll) / n
        se = None
        if n > 1:
            var = max(self.diff_sq - n * mean_diff**2, 0.0) / (n - 1)
            se = math.sqrt(var / n) / LN2
        ece = ((self.bin_acc - self.bin_conf).abs().sum() / n).item()
        return {
            **out,
            "kl_bits": self.kl.sum().item() / n / LN2,
            "kl_bits_general": self.kl_general.sum().item() / n / LN2 if self.kl_general is not None else None,
            "entropy_gap_bits": gap,
            "nll_bits": self.nll / n / LN2,
            "bayes_nll_bits": self.bayes_nll / n / LN2,
            "nll_gap_se_bits": se,
            "ece": ece,
        }


def calibration(logits: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor,
                tokens: torch.Tensor, general: torch.Tensor | None = None) -> dict:
    """The calibration metrics of one batch (see CalibrationAccumulator)."""
    acc = CalibrationAccumulator(logits.shape[1])
    acc.update(logits, posterior, scored, tokens, general)
    return acc.compute()
