"""How close does a frozen transformer get to the exact change-point posterior, by position after a change?

Usage:
    plasticity run changepoint_icl run.dir=runs/changepoint_icl   # train (~6000 steps)
    python scripts/changepoint_icl.py runs/changepoint_icl         # this table

For every scored token of the eval bank, d = how many earlier tokens came from the same θ as the token to
predict (d = 0: θ was redrawn right before it, so nothing in context can reveal the new θ). The table
gives the mean KL to the exact BOCPD posterior, in bits, per d-bin — for the trained model and for two
reference predictors computed exactly: `no_change` (the Dirichlet posterior over the whole prefix, as if
θ never changed) and `prior` (the prior mean, ignoring the context).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from plasticity.eval.calibration import LN2, kl_nats
from plasticity.run.build import build
from plasticity.run.config import load_run_config

BINS = [(0, 0), (1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 10**9)]


def kl_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p ‖ q) in bits (the calibration module's, on probabilities)."""
    return kl_nats(p.double(), q.double().clamp_min(1e-300).log()) / LN2


def since_change(change: torch.Tensor) -> torch.Tensor:
    """d[b, t] = tokens before x_{t+1} that share its θ; change[b, t] marks a redraw before x_{t+1}."""
    B, L = change.shape
    idx = torch.arange(L).expand(B, L)
    last = torch.where(change, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    cfg = load_run_config(args.run_dir)
    built = build(cfg)
    stream = built.stream
    family = stream.phases[0].family
    bank = stream.eval_bank(0)
    model = built.new_model(cfg.seed)
    model.load_state_dict(torch.load(args.run_dir / "checkpoints" / "pretrained.pt", weights_only=True)["model"])
    model.eval()
    with torch.no_grad():
        q = torch.cat([torch.softmax(model(bank.tokens[i:i + 256]).double(), -1) for i in range(0, len(bank), 256)])
    L, K = family.length, family.n_symbols
    post = bank.posterior[:, :L]  # positions 0..L-1 predict x_1..x_L
    alpha = torch.as_tensor(family.alpha if isinstance(family.alpha, (list, tuple)) else [family.alpha] * K,
                            dtype=torch.float64)
    symbols = bank.tokens[:, 1:] - 1  # x_1..x_L as 0..K-1 (token 0 is BOS)
    counts = torch.nn.functional.one_hot(symbols, K).double().cumsum(1)
    counts = torch.cat([torch.zeros(len(bank), 1, K, dtype=torch.float64), counts[:, :-1]], 1)  # before x_{t+1}
    no_change = torch.zeros_like(post)
    no_change[..., 1:] = (counts + alpha) / (counts.sum(-1, keepdim=True) + alpha.sum())
    prior = torch.zeros_like(post)
    prior[..., 1:] = alpha / alpha.sum()
    d = since_change(bank.latent["change"])
    rows = {"model": kl_bits(post, q[:, :L]), "no_change": kl_bits(post, no_change), "prior": kl_bits(post, prior)}
    print(f"run: {args.run_dir}   hazard {family.hazard}, {K} symbols, length {L}, {len(bank)} sequences")
    print("| tokens since the change | share of tokens | model KL (bits) | no-change Dirichlet KL | prior KL |")
    print("|---|---|---|---|---|")
    for lo, hi in BINS:
        mask = (d >= lo) & (d <= hi)
        if mask.any():
            label = f"{lo}" if lo == hi else (f"{lo}–{hi}" if hi < 10**9 else f"≥{lo}")
            cells = " | ".join(f"{rows[k][mask].mean():.4f}" for k in rows)
            print(f"| {label} | {mask.double().mean():.3f} | {cells} |")
    print(f"| all | 1.000 | {' | '.join(f'{v.mean():.4f}' for v in rows.values())} |")


if __name__ == "__main__":
    main()
