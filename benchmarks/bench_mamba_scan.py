"""Where Mamba's training step goes on a CPU, and what fusing the scan's per-position update would give.

    python benchmarks/bench_mamba_scan.py                 # 1 thread, T = 64, batch 64, the default sizes
    python benchmarks/bench_mamba_scan.py --no-fused      # without the torch.compile experiment

1. One training step of the parameter-matched model (as benchmarks/bench_architectures.py times it), and the
   same step with the selective scan replaced by a stand-in of negligible cost that keeps its inputs in the
   graph: their difference is the scans' share, the stand-in's step everything else (projections, the
   convolution, LayerNorms, gates, the optimizer).
2. One layer's scan, forward and backward, at the default sizes: the shipped eager `selective_scan` against
   the same algorithm (the forward keeps every CHUNK-th state, the backward recomputes a chunk's states and
   runs the reverse recurrence) with each position's update fused into one kernel by torch.compile
   (Inductor's C++ backend: needs a C++ compiler; a few seconds to compile). The model itself does not use
   it: issue 17 asks for a scan with no compiled code, and this measures what such code would buy.
Interleaved rounds, median CPU-ms (process time); run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import plasticity.models.mamba as mamba
from plasticity.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_architectures import SPECS, VOCAB, step_fn, timed_rounds  # noqa: E402


def stand_in_scan(delta, A, Bm, C, x):
    """Same shapes and inputs in the graph as the scan, a few elementwise passes of cost."""
    return delta * x + (Bm.sum(-1, keepdim=True) + C.sum(-1, keepdim=True)) * A.sum()


def model_step(batch: int, T: int):
    """One training step of the parameter-matched Mamba, as benchmarks/bench_architectures.py times it."""
    torch.manual_seed(0)
    model = build_model(SPECS["mamba"], VOCAB, T + 1)
    return step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.randint(0, VOCAB, (batch, T + 1)))


# The fused variant: one compiled kernel per position forward (the update and the readout) and backward.

def _update(h, d, At, Bt, Ct, dx):
    h = torch.exp(d[:, None, :] * At) * h + Bt[:, :, None] * dx[:, None, :]
    return h, (h * Ct[:, :, None]).sum(1)


def _first(Bt, Ct, dx):  # h_{-1} = 0
    h = Bt[:, :, None] * dx[:, None, :]
    return h, (h * Ct[:, :, None]).sum(1)


def _reverse(g, gy, Ct, h, h_prev, d, At, Bt, dx, gA):
    """dL/dh_{t-1} from dL/dh_t (through later positions) and y_t's gradient, and the inputs' gradients."""
    g = g + gy[:, None, :] * Ct[:, :, None]
    gC, gdx, gB = (h * gy[:, None, :]).sum(2), (Bt[:, :, None] * g).sum(1), (g * dx[:, None, :]).sum(2)
    g = g * torch.exp(d[:, None, :] * At)
    g_log = g * h_prev
    return g, gC, gdx, gB, (g_log * At).sum(1), gA + (g_log * d[:, None, :]).sum(0)


def _reverse_first(g, gy, Ct, h, Bt, dx):
    g = g + gy[:, None, :] * Ct[:, :, None]
    return (h * gy[:, None, :]).sum(2), (Bt[:, :, None] * g).sum(1), (g * dx[:, None, :]).sum(2)


class FusedScan(torch.autograd.Function):
    kernels: tuple = ()

    @classmethod
    def compile(cls):
        cls.kernels = tuple(torch.compile(f, dynamic=False) for f in (_update, _first, _reverse, _reverse_first))

    @staticmethod
    def states(delta, At, Bm, C, dx, start, stop, h):
        update, first = FusedScan.kernels[:2]
        hs, ys = [h], []
        for t in range(start, stop):
            h, y = first(Bm[t], C[t], dx[t]) if h is None else update(h, delta[t], At, Bm[t], C[t], dx[t])
            hs.append(h)
            ys.append(y)
        return hs, ys

    @staticmethod
    def forward(ctx, delta, A, Bm, C, x):
        delta, At, Bm, C, x = mamba._time_major(delta, A, Bm, C, x)
        dx, T, ys, kept, h = delta * x, x.shape[0], [], [], None
        for start in range(0, T, mamba.CHUNK):
            kept.append(h)
            hs, y = FusedScan.states(delta, At, Bm, C, dx, start, min(start + mamba.CHUNK, T), h)
            h = hs[-1]
            ys += y
        ctx.kept = kept
        ctx.save_for_backward(delta, At, Bm, C, x, dx)
        return torch.stack(ys).transpose(0, 1)

    @staticmethod
    def backward(ctx, gy):
        delta, At, Bm, C, x, dx = ctx.saved_tensors
        reverse, reverse_first = FusedScan.kernels[2:]
        gy, T = gy.transpose(0, 1).contiguous(), x.shape[0]
        g, gA = x.new_zeros(x.shape[1], At.shape[0], x.shape[2]), torch.zeros_like(At)
        g_delta, g_dx, g_B, g_C = (torch.empty_like(v) for v in (delta, x, Bm, C))
        for start in reversed(range(0, T, mamba.CHUNK)):
            stop = min(start + mamba.CHUNK, T)
            hs, _ = FusedScan.states(delta, At, Bm, C, dx, start, stop, ctx.kept[start // mamba.CHUNK])
            for t in reversed(range(start, stop)):
                h, h_prev = hs[t - start + 1], hs[t - start]
                if h_prev is None:
                    g_C[t], g_dx[t], g_B[t] = reverse_first(g, gy[t], C[t], h, Bm[t], dx[t])
                    g_delta[t] = 0
                else:
                    g, g_C[t], g_dx[t], g_B[t], g_delta[t], gA = reverse(
                        g, gy[t], C[t], h, h_prev, delta[t], At, Bm[t], dx[t], gA)
        g_delta += g_dx * x
        g_dx *= delta
        return g_delta.transpose(0, 1), gA.t(), g_B.transpose(0, 1), g_C.transpose(0, 1), g_dx.transpose(0, 1)


def scan_inputs(batch: int, T: int, e: int, n: int):
    g = torch.Generator().manual_seed(0)
    delta = F.softplus(torch.randn(batch, T, e, generator=g) - 3)
    A = -torch.arange(1.0, n + 1).repeat(e, 1)
    Bm, C, x, gy = (torch.randn(batch, T, k, generator=g) for k in (n, n, e, e))
    return (delta, A, Bm, C, x), gy


def scan_step(fn, inputs, gy):
    def step():
        leaves = [v.detach().requires_grad_() for v in inputs]
        (fn(*leaves) * gy).sum().backward()
        return leaves
    return step


def cpu_ms(steps: dict, rounds: int, repeat: int) -> dict:
    """Median CPU-ms per call of each step after one warm-up call (which also compiles)."""
    for step in steps.values():
        step()
    cpu, _ = timed_rounds(steps, rounds, repeat, torch.device("cpu"))
    return {name: statistics.median(t) for name, t in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fused", action="store_true", help="skip the torch.compile experiment")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"nproc {os.cpu_count()}, threads {args.threads}, T {args.seq_len}, batch {args.batch}, "
          f"load {os.getloadavg()[0]:.2f}")

    shipped = mamba.selective_scan
    step = model_step(args.batch, args.seq_len)

    def with_stand_in():
        mamba.selective_scan = stand_in_scan
        try:
            step()
        finally:
            mamba.selective_scan = shipped
    whole = cpu_ms({"step": step, "step, scan replaced by a stand-in": with_stand_in}, args.rounds, 3)
    scans = whole["step"] - whole["step, scan replaced by a stand-in"]
    print("\n| one training step of mamba (parameter-matched) | CPU-ms |\n|---|---:|")
    for name, ms in whole.items():
        print(f"| {name} | {ms:.1f} |")
    print(f"| the scans (difference) | {scans:.1f} |")

    cfg = build_model(SPECS["mamba"], VOCAB, args.seq_len + 1).cfg
    inputs, gy = scan_inputs(args.batch, args.seq_len, cfg.d_inner, cfg.d_state)
    steps = {"eager (shipped)": scan_step(shipped, inputs, gy)}
    if not args.no_fused:
        FusedScan.compile()
        steps["one fused kernel per position (torch.compile)"] = scan_step(FusedScan.apply, inputs, gy)
        grads = [step_() for step_ in steps.values()]
        err = max(((a.grad - b.grad).abs().max() / b.grad.abs().max()).item() for a, b in zip(*grads[::-1]))
        print(f"\nfused against eager: largest gradient difference {err:.1e} of the gradient's largest entry")
    times = cpu_ms(steps, args.rounds, 3)
    print(f"\n| one layer's scan, forward + backward (batch {args.batch}, T {args.seq_len}, d_inner {cfg.d_inner}, "
          f"d_state {cfg.d_state}) | CPU-ms |\n|---|---:|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
