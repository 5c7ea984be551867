"""Training throughput of every architecture at matched parameter counts, and what dominates each one's time.

    python benchmarks/bench_architectures.py                      # 1 thread, CPU, T = 64, batch 64
    python benchmarks/bench_architectures.py --seq-len 128 --device cuda --models mamba,lstm

One training step = forward, cross-entropy over every position, backward, AdamW step, on random tokens
(vocabulary 20). The baselines are parameter-matched to the default transformer (`match_params`, as
configs/model/*.yaml do). The models are timed in interleaved rounds (the order rotates each round, so
load from other processes hits all of them alike); per model the median over rounds of CPU-ms per step
(process time: with 1 thread much less sensitive to other processes than wall time) and the wall
tokens/s. Then, per model, torch.profiler's top operators by self CPU time over a few steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from plasticity.models import build_model, count_parameters

VOCAB = 20
SPECS = {
    "transformer": {"name": "transformer"},
    "mamba": {"name": "mamba", "match_params": "transformer"},
    "lstm": {"name": "lstm", "match_params": "transformer"},
    "mlp": {"name": "mlp", "match_params": "transformer"},
}


def step_fn(model, opt, tokens):
    def step():
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(steps: dict, rounds: int, repeat: int, device: torch.device) -> tuple[dict, dict]:
    """CPU-ms and wall ms per call of each of `steps` (name -> function), `repeat` calls per round, in
    interleaved rounds whose order rotates, so that load from other processes hits all of them alike."""
    cpu_ms: dict = {n: [] for n in steps}
    wall_ms: dict = {n: [] for n in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(repeat):
                steps[name]()
            sync(device)
            cpu_ms[name].append(1e3 * (time.process_time() - c0) / repeat)
            wall_ms[name].append(1e3 * (time.perf_counter() - w0) / repeat)
    return cpu_ms, wall_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(SPECS))
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.models.split(",")
    print(f"nproc {os.cpu_count()}, threads {args.threads}, device {device}, T {args.seq_len}, batch {args.batch}, "
          f"load {os.getloadavg()[0]:.2f}")
    steps, params = {}, {}
    for name in names:
        torch.manual_seed(0)
        model = build_model(SPECS[name], VOCAB, args.seq_len + 1).to(device)
        params[name] = count_parameters(model)
        tokens = torch.randint(0, VOCAB, (args.batch, args.seq_len + 1), device=device)
        steps[name] = step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-3), tokens)
        for _ in range(3):  # warm-up
            steps[name]()
    cpu_ms, wall_ms = timed_rounds(steps, args.rounds, args.steps, device)
    tokens_per_step = args.batch * args.seq_len
    ref = statistics.median(cpu_ms["lstm"]) if "lstm" in names else None
    print("\n| model | parameters | CPU-ms/step | wall ms/step | k tokens/s (wall) | CPU time / lstm's |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        c, w = statistics.median(cpu_ms[name]), statistics.median(wall_ms[name])
        ratio = f"{c / ref:.2f}" if ref else "-"
        print(f"| {name} | {params[name]:,} | {c:.1f} | {w:.1f} | {tokens_per_step / w:.1f} | {ratio} |")
    print(f"load {os.getloadavg()[0]:.2f}")
    for name in names:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                steps[name]()
        print(f"\n{name}: top operators by self CPU time over 3 steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


if __name__ == "__main__":
    main()
