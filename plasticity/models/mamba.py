"""A selective state-space model (Mamba, Gu & Dao 2023) in plain PyTorch: no compiled extension, CPU or CUDA.

Each layer is a pre-norm residual block `x + Mixer(LayerNorm(x))`; the mixer is Mamba's gated block:

    x, z   = in_x(u), in_z(u)                        two projections d_model -> d_inner = expand * d_model
    x      = SiLU(causal depthwise conv1d(x))        kernel d_conv, left-padded: no look-ahead
    Δ, B, C = softplus(dt(x_proj_Δ(x))), x_proj_B(x), x_proj_C(x)      input-dependent (selective)
    h_t    = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t       per channel d a diagonal state of size d_state
    y_t    = C_t · h_t + D ⊙ x_t
    out    = out_proj(y ⊙ SiLU(z))

with A = −exp(A_log) diagonal (initialized S4D-real: A_dn = −(n + 1)), D initialized to 1 and Δ's bias
such that softplus(bias) is log-uniform in [1e-3, 0.1], as in the reference implementation. Where we
differ: LayerNorm instead of RMSNorm (the `layer_norm` switch the other models have), and in_proj split in
two Linear layers with biases so the gate's channels are hidden units (`unit_layers`: the probes count
them as dormant, CBP/ReDo re-initialize them; a re-initialized channel's out_proj column is zeroed, so the
new channel adds nothing until it learns).

The scan is exact and sequential (`SelectiveScan`): one position at a time, on a state [batch, d_state,
d_inner], with the backward pass written out as a reverse scan that recomputes the states between the
few the forward keeps. Its cost is elementwise work on batch × T × d_inner × d_state numbers, which eager
PyTorch cannot fuse as the reference CUDA kernel does (benchmarks/bench_architectures.py measures it
against the LSTM, benchmarks/bench_mamba_scan.py the scans' share of a step and what fusing each
position's update would give; docs/benchmarks.md says what dominates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plasticity.models.registry import register
from plasticity.models.units import UnitLayer, layer_norm
from streams.checks import check_int

INIT_STD = 0.02


@dataclass
class MambaConfig:
    n_layers: int = 2  # residual Mamba blocks
    d_model: int = 64  # residual stream width
    d_state: int = 16  # N: the diagonal state per channel
    expand: int = 2  # d_inner = expand * d_model channels in the mixer
    d_conv: int = 4  # kernel of the causal depthwise convolution
    dt_rank: int = 0  # rank of Δ's projection; 0: ceil(d_model / 16), as in the paper
    layer_norm: bool = True  # false: no LayerNorm anywhere (the blocks' and the final one)

    def __post_init__(self) -> None:
        check_int("model", "n_layers", self.n_layers, 1, 1024)
        for key in ("d_model", "d_state", "expand", "d_conv"):
            check_int("model", key, getattr(self, key), 1)
        check_int("model", "dt_rank", self.dt_rank, 0)
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"model.layer_norm={self.layer_norm!r}: must be true or false")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)


CHUNK = 8  # positions between the states a training forward keeps; the backward recomputes the others


class _Scan:
    """The forward recurrence on time-major inputs, delta, x [T, B, e], Bm, C [T, B, n], A [n, e], with its
    per-position buffers allocated once: `step(t, h_prev, out)` writes h_t into `out` ([B, n, e]), and
    exp(Δ_t A) into `decay` when given (the backward keeps a chunk's decays)."""

    def __init__(self, delta, A, Bm, x):
        self.delta, self.A, self.Bm, self.dx = delta, A, Bm, delta * x
        self.decay = x.new_empty(x.shape[1], A.shape[0], x.shape[2])

    def step(self, t: int, h_prev: torch.Tensor | None, out: torch.Tensor, decay: torch.Tensor | None = None):
        if h_prev is None:  # h_{-1} = 0
            return torch.mul(self.dx[t, :, None, :], self.Bm[t, :, :, None], out=out)
        decay = self.decay if decay is None else decay
        torch.mul(self.delta[t, :, None, :], self.A, out=decay).exp_()
        torch.mul(decay, h_prev, out=out)
        # + B_t ⊗ Δ_t x_t as a batched outer product: half the time of a broadcast mul and an addcmul (measured)
        return out.baddbmm_(self.Bm[t, :, :, None], self.dx[t, :, None, :])


def _time_major(delta, A, Bm, C, x) -> tuple[torch.Tensor, ...]:
    """The scan's layout from the caller's: [B, T, ·] -> contiguous [T, B, ·], and A [e, n] -> [n, e]."""
    delta, Bm, C, x = (v.transpose(0, 1).contiguous() for v in (delta, Bm, C, x))
    return delta, A.t().contiguous(), Bm, C, x


def _scan(delta, A, Bm, C, x, every: int = 0):
    """y [T, B, e] and, with `every`, the states h_t at t = every - 1, 2 every - 1, ... (the last excluded)."""
    T, Bsz, e = x.shape
    scan = _Scan(delta, A, Bm, x)
    y = x.new_empty(T, Bsz, e)
    ring = x.new_empty(2, Bsz, A.shape[0], e)
    kept = x.new_empty((T - 1) // every if every else 0, Bsz, A.shape[0], e)
    h = None
    for t in range(T):
        h = scan.step(t, h, ring[t % 2])
        torch.bmm(C[t, :, None, :], h, out=y[t, :, None, :])
        if every and (t + 1) % every == 0 and t + 1 < T:
            kept[(t + 1) // every - 1].copy_(h)
    return y, kept


class SelectiveScan(torch.autograd.Function):
    """y_t = C_t · h_t with h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) ⊗ B_t, h_{-1} = 0, one position at a time.

    Shapes: delta, x [B, T, e]; A [e, n]; Bm, C [B, T, n]; y [B, T, e]. Inside, time-major, and a state is
    [B, n, e] with the channels contiguous: the contractions over n (C_t · h_t, and B_t's in the backward)
    are then batched row-vector products, several times faster on a CPU than reductions over a short last
    axis. Each position's ops write into buffers allocated once per call and touch one state (64 x 16 x 164
    floats at the default sizes: in cache). The forward keeps every CHUNK-th state only; the backward, a
    reverse scan written out rather than recorded by autograd, recomputes a chunk's states from the one
    before it. Keeping all T states instead (43 MB per layer at the default sizes, written and read back
    through DRAM) measured slower than recomputing them in cache (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, delta, A, Bm, C, x):
        delta, At, Bm, C, x = _time_major(delta, A, Bm, C, x)
        y, kept = _scan(delta, At, Bm, C, x, every=CHUNK)
        ctx.save_for_backward(delta, At, Bm, C, x, kept)
        return y.transpose(0, 1)

    @staticmethod
    def backward(ctx, gy):
        delta, At, Bm, C, x, kept = ctx.saved_tensors
        gy = gy.transpose(0, 1).contiguous()
        T = x.shape[0]
        scan = _Scan(delta, At, Bm, x)
        dx = scan.dx
        g_delta, g_dx = torch.empty_like(delta), torch.empty_like(x)
        g_B, g_C = torch.empty_like(Bm), torch.empty_like(C)
        g_At = torch.zeros_like(At)
        hs = x.new_empty(CHUNK, x.shape[1], At.shape[0], x.shape[2])  # one chunk's states
        decays = torch.empty_like(hs)  # and their exp(Δ_t A)
        g_h = torch.zeros_like(hs[0])  # dL/dh_t through y_t, h_{t+1}, ..., accumulated backwards
        g_log, tmp = torch.empty_like(g_h), torch.empty_like(g_h)
        for start in reversed(range(0, T, CHUNK)):
            before = kept[start // CHUNK - 1] if start else None  # h_{start - 1}
            for t in range(start, min(start + CHUNK, T)):  # this chunk's states again
                scan.step(t, hs[t - start - 1] if t > start else before, hs[t - start], decays[t - start])
            for t in reversed(range(start, min(start + CHUNK, T))):
                h, h_prev = hs[t - start], (hs[t - start - 1] if t > start else before)
                g_h.addcmul_(gy[t, :, None, :], C[t, :, :, None])
                torch.bmm(h, gy[t, :, :, None], out=g_C[t, :, :, None])
                torch.bmm(Bm[t, :, None, :], g_h, out=g_dx[t, :, None, :])
                torch.bmm(g_h, dx[t, :, :, None], out=g_B[t, :, :, None])
                if h_prev is None:  # h_0 does not depend on exp(Δ_0 A): h_{-1} = 0
                    g_delta[0].zero_()
                    continue
                g_h.mul_(decays[t - start])  # now dL/dh_{t-1} through h_t
                torch.mul(g_h, h_prev, out=g_log)  # dL/d(Δ_t A) = dL/dh_t ⊙ exp(Δ_t A) ⊙ h_{t-1}
                torch.sum(torch.mul(g_log, At, out=tmp), 1, out=g_delta[t])
                g_At += torch.mul(g_log, delta[t, :, None, :], out=tmp).sum(0)
        g_delta += g_dx * x
        g_dx *= delta
        # back in the caller's layout, contiguous: the gradients flow on into elementwise backwards and adds
        g_delta, g_B, g_C, g_dx = (v.transpose(0, 1).contiguous() for v in (g_delta, g_B, g_C, g_dx))
        return g_delta, g_At.t(), g_B, g_C, g_dx


def selective_scan(delta, A, Bm, C, x) -> torch.Tensor:
    """The selective SSM's output C_t · h_t for every position (see SelectiveScan); under no_grad, or with no
    input that needs a gradient, the scan keeps no states."""
    if torch.is_grad_enabled() and any(v.requires_grad for v in (delta, A, Bm, C, x)):
        return SelectiveScan.apply(delta, A, Bm, C, x)
    return _scan(*_time_major(delta, A, Bm, C, x))[0].transpose(0, 1)


class Mixer(nn.Module):
    """Mamba's gated selective-SSM block, d_model -> d_model."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        d, e, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank
        self.cfg = cfg
        self.in_x = nn.Linear(d, e)
        self.in_z = nn.Linear(d, e)
        self.gate = nn.SiLU()
        self.conv = nn.Conv1d(e, e, cfg.d_conv, groups=e, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt = nn.Linear(r, e)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.A_log.no_weight_decay = True  # as in the reference implementation (plasticity.train.optim)
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d)
        for layer in (self.in_x, self.in_z, self.out_proj):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)
        nn.init.uniform_(self.dt.weight, -r ** -0.5, r ** -0.5)
        with torch.no_grad():  # softplus(bias) log-uniform in [1e-3, 0.1]: the inverse softplus of such a Δ
            dt = torch.exp(torch.rand(e) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def ssm_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (after conv and SiLU), z, Δ, B, C for u [B, T, d_model]."""
        T = u.shape[1]
        # contiguous again after the convolution's [B, e, T] layout: x has three consumers (x_proj, the scan,
        # D ⊙ x), whose gradients would otherwise meet in strided adds
        x = F.silu(self.conv(self.in_x(u).transpose(1, 2))[..., :T].transpose(1, 2).contiguous())
        r, n = self.cfg.rank, self.cfg.d_state
        dt, B, C = self.x_proj(x).split([r, n, n], dim=-1)
        return x, self.in_z(u), F.softplus(self.dt(dt)), B, C

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x, z, delta, B, C = self.ssm_inputs(u)
        y = selective_scan(delta, -torch.exp(self.A_log), B, C, x) + self.D * x
        return self.out_proj(y * self.gate(z))


class Block(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = layer_norm(cfg.d_model, cfg.layer_norm)
        self.mixer = Mixer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


@register
class Mamba(nn.Module):
    name = "mamba"
    description = "selective state-space model (Mamba): gated blocks with an input-dependent diagonal scan"
    Config = MambaConfig
    width_param = "d_model"

    def __init__(self, cfg: MambaConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = layer_norm(cfg.d_model, cfg.layer_norm)
        self.head = nn.Linear(cfg.d_model, vocab_size)
        nn.init.normal_(self.head.weight, std=INIT_STD)
        nn.init.zeros_(self.head.bias)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))

    def unit_layers(self) -> list[UnitLayer]:
        return [UnitLayer(f"block{i}.gate", b.mixer.in_z, b.mixer.gate, b.mixer.out_proj, INIT_STD)
                for i, b in enumerate(self.blocks)]
