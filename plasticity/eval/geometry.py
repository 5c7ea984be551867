"""The geometry of Bayesian inference in a transformer (Agarwal, Dalal & Misra, arXiv:2512.22471), as probes
tracked through a stream: key orthogonality, query-key alignment, attention entropy by position, the
representation's principal components and their order by the posterior's entropy, and a logit lens.
Definitions, the paper's formulas and where ours differ: docs/geometry.md.

The probes need a model's internals: a model offers them with `internals(tokens)` -> one dict per layer
({"q", "k": [B, H, T, d_head], "attn": [B, H, T, T], "residual": [B, T, d_model] after the layer}) and
`readout(residual) -> logits`; for other models `geometry_probes` returns {} (absent, not zero).
"""

from __future__ import annotations

import torch
from torch import nn

from plasticity.eval.calibration import LN2, kl_nats
from streams import Batch

MAX_POSITIONS = 4096  # scored positions the PCA and the Spearman correlation use (the first ones)


def mean_abs_offdiag_cosine(vectors: torch.Tensor) -> float:
    """Mean |cos| over the ordered pairs i != j of the rows of `vectors` [n, d]; 0 for n < 2."""
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (unit @ unit.T).abs()
    return ((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))).item()


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits over the last axis (0 · log 0 = 0): of each attention row over the positions it
    attends to ([..., T, T] -> [..., T]; causal rows count only s <= t, uniform over t + 1 positions gives
    log2(t + 1)), or of the posterior at each position."""
    return -torch.special.xlogy(p, p).sum(-1) / LN2


def pca_variance(x: torch.Tensor, standardize: bool = True) -> dict[str, float | torch.Tensor]:
    """Principal components of the rows of x [n, d] (z-scored per column first, as the paper does):
    the variance fractions of PC1 and of PC1 + PC2, the number of components for 90% of the variance, and
    every row's coordinate on PC1."""
    x = x.to(torch.float64)
    x = x - x.mean(0)
    if standardize:
        x = x / x.std(0, unbiased=False).clamp_min(1e-12)
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    var = s.square()
    frac = var / var.sum().clamp_min(1e-300)
    cum = frac.cumsum(0)
    return {"pc1": frac[0].item(), "pc12": cum[min(1, len(cum) - 1)].item(),
            "n90": int((cum < 0.9 - 1e-12).sum().item()) + 1, "pc1_coords": x @ vt[0],
            "pc2_coords": x @ vt[1] if len(vt) > 1 else torch.zeros_like(x[:, 0])}


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties given their average rank."""
    order = values.argsort()
    r = torch.empty(len(values), dtype=torch.float64)
    r[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    uniq, inverse = torch.unique(values, return_inverse=True)
    if len(uniq) < len(values):  # average the ranks within each tie
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, r)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(r))
        r = (sums / counts)[inverse]
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson on average ranks); nan where either side is constant."""
    ra, rb = ranks(a.flatten()), ranks(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.square().sum() * rb.square().sum()).sqrt()
    return (ra @ rb / den).item() if den > 0 else float("nan")


def keys_by_token(k: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The mean key of each distinct input token: k [B, T, d], tokens [B, T] -> [n_distinct, d]."""
    ids, inverse = torch.unique(tokens.flatten(), return_inverse=True)
    flat = k.reshape(-1, k.shape[-1])
    sums = torch.zeros(len(ids), flat.shape[1], dtype=k.dtype, device=k.device).index_add_(0, inverse, flat)
    counts = torch.bincount(inverse, minlength=len(ids)).to(k.dtype)
    return sums / counts[:, None]


@torch.no_grad()
def geometry_probes(model: nn.Module, bank: Batch) -> dict:
    """Every probe on `bank` (its scored positions), per layer (`layer<l>`) and head (`.head<h>`), plus the
    headline figures: key orthogonality of layer 0 (mean over heads) and the last layer's PC1 fraction and
    PC1-entropy correlation. Empty for a model without `internals`."""
    if not hasattr(model, "internals"):
        return {}
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        tokens = bank.tokens.to(device)
        layers = model.internals(tokens)
        scored = bank.scored.to(device)
        posterior = bank.posterior.to(device)
        entropy = entropy_bits(posterior)[scored][:MAX_POSITIONS]
        out: dict = {}
        for li, layer in enumerate(layers):
            q, k, attn, res = layer["q"], layer["k"], layer["attn"], layer["residual"]
            ent = entropy_bits(attn)  # [B, H, T]
            w = scored[:, None, :].to(ent.dtype)
            qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            align = (attn * (qn @ kn.transpose(-1, -2))).sum(-1)  # [B, H, T]: attention-weighted cos(q_t, k_s)
            for h in range(q.shape[1]):
                tag = f"layer{li}.head{h}"
                out[f"key_orthogonality/{tag}"] = mean_abs_offdiag_cosine(keys_by_token(k[:, h], tokens))
                out[f"qk_alignment/{tag}"] = ((align[:, h] * w[:, 0]).sum() / w[:, 0].sum()).item()
                out[f"attention_entropy_bits/{tag}"] = ((ent[:, h] * w[:, 0]).sum() / w[:, 0].sum()).item()
            by_pos = (ent * w).sum((0, 1)) / w.sum((0, 1)).clamp_min(1)
            out[f"attention_entropy_bits_by_position/layer{li}"] = [
                v if n > 0 else None for v, n in zip(by_pos.tolist(), w.sum((0, 1)).tolist())]
            pca = pca_variance(res[scored][:MAX_POSITIONS])
            out[f"pc1_fraction/layer{li}"], out[f"pc12_fraction/layer{li}"] = pca["pc1"], pca["pc12"]
            out[f"n90/layer{li}"] = pca["n90"]
            out[f"pc1_entropy_spearman/layer{li}"] = abs(spearman(pca["pc1_coords"].cpu(), entropy.cpu()))
            logq = torch.log_softmax(model.readout(res)[scored].to(torch.float64), -1)
            out[f"logit_lens_kl_bits/layer{li}"] = (kl_nats(posterior[scored], logq).mean() / LN2).item()
        heads = [v for key, v in out.items() if key.startswith("key_orthogonality/layer0.")]
        last = len(layers) - 1
        out["key_orthogonality"] = sum(heads) / len(heads)
        out["pc1_fraction"] = out[f"pc1_fraction/layer{last}"]
        out["pc1_entropy_spearman"] = out[f"pc1_entropy_spearman/layer{last}"]
        return out
    finally:
        model.train(was_training)


MANIFOLD_POINTS = 1024  # scored positions drawn in the manifold figure


@torch.no_grad()
def manifold(model: nn.Module, bank: Batch, points: int = MANIFOLD_POINTS) -> dict | None:
    """The paper's manifold figure's data: the last layer's representation at the first `points` scored
    positions of `bank` on its first two principal components (z-scored, as `pca_variance`), with the exact
    posterior's entropy there; PC1 is sign-aligned so that it grows with the entropy. None without
    `internals`."""
    if not hasattr(model, "internals"):
        return None
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        scored = bank.scored.to(device)
        res = model.internals(bank.tokens.to(device))[-1]["residual"][scored][:points]
        entropy = entropy_bits(bank.posterior.to(device))[scored][:points].cpu()
        pca = pca_variance(res)
        pc1, pc2 = pca["pc1_coords"].cpu(), pca["pc2_coords"].cpu()
        rho = spearman(pc1, entropy)
        if rho < 0:
            pc1, rho = -pc1, -rho
        return {"pc1": pc1.tolist(), "pc2": pc2.tolist(), "entropy_bits": entropy.tolist(),
                "pc1_fraction": pca["pc1"], "pc12_fraction": pca["pc12"], "pc1_entropy_spearman": rho}
    finally:
        model.train(was_training)
