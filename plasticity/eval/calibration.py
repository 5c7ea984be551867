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


class CalibrationAccumulator:
    """Accumulate over chunks of an eval bank; `compute()` equals the one-shot metrics on the whole bank.

    Positions index the sequence axis, so chunks must split the batch axis, not the time axis.
    """

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        z = lambda n: torch.zeros(n, dtype=torch.float64)
        self.count = z(max_seq_len)  # scored entries per position
        self.kl = z(max_seq_len)  # sums per position, in nats
        self.h_model = z(max_seq_len)
        self.h_post = z(max_seq_len)
        self.nll = 0.0
        self.bayes_nll = 0.0
        self.diff_sq = 0.0  # Σ (nll − bayes_nll)², for the standard error
        self.bin_count = z(ECE_BINS)
        self.bin_conf = z(ECE_BINS)
        self.bin_acc = z(ECE_BINS)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor,
               tokens: torch.Tensor) -> None:
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
        pos = p > 0  # 0·log 0 = 0, whatever q is
        kl = torch.where(pos, p * (torch.log(torch.where(pos, p, 1.0)) - logq), 0.0).sum(-1)
        h_post = -torch.xlogy(p, p).sum(-1)
        h_model = -(q * logq).nan_to_num(0.0).sum(-1)

        m = mask.to(torch.float64)
        self.count[:T] += m.sum(0).cpu()
        self.kl[:T] += (kl * m).sum(0).cpu()
        self.h_model[:T] += (h_model * m).sum(0).cpu()
        self.h_post[:T] += (h_post * m).sum(0).cpu()

        # The next token tokens[b, t+1]; position T-1 has none and is never scored.
        nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1).to(logits.device).unsqueeze(-1)
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

        def by_position(total: torch.Tensor) -> list:
            per = (total / safe / LN2).tolist()
            return [v if h else None for v, h in zip(per, has.tolist())]

        out: dict = {
            "n_scored": int(n),
            "kl_bits_by_position": by_position(self.kl),
            "model_entropy_bits_by_position": by_position(self.h_model),
            "posterior_entropy_bits_by_position": by_position(self.h_post),
        }
        if n == 0:
            keys = ("kl_bits", "entropy_gap_bits", "nll_bits", "bayes_nll_bits", "nll_gap_se_bits", "ece")
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
            "entropy_gap_bits": gap,
            "nll_bits": self.nll / n / LN2,
            "bayes_nll_bits": self.bayes_nll / n / LN2,
            "nll_gap_se_bits": se,
            "ece": ece,
        }


def calibration(logits: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor,
                tokens: torch.Tensor) -> dict:
    """The calibration metrics of one batch (see CalibrationAccumulator)."""
    acc = CalibrationAccumulator(logits.shape[1])
    acc.update(logits, posterior, scored, tokens)
    return acc.compute()
