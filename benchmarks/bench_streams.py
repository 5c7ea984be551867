"""How fast the wind tunnels make batches, exact posterior included, against per-sequence Python.

    python benchmarks/bench_streams.py                  # threads 1 and 2, batch 256, CPU
    python benchmarks/bench_streams.py --threads 1 --min-time 0.2
    python benchmarks/bench_streams.py --device cuda    # also moves each batch to the GPU
    python benchmarks/bench_streams.py --families causal --skip-configs

For each family, "scored tokens/s" counts the positions where a posterior is given (`Batch.scored`)
per second of `family.sample(batch_size, generator)` — tokens AND the exact posterior predictive.
The reference is benchmarks/reference_streams.py: the same family written the way research code
usually is, one Python loop per sequence and per position with numpy. Before timing, the reference's
posterior function is fed the family's own sampled tokens and must agree to 1e-9, so both sides
compute the same thing; and the Bayes log-loss of sampled tokens (−log p*(next token), nats per scored
token) of `--nll-sequences` sequences from each side must agree within standard errors (σ shown), so
the reference samples the same process. The reference is single-threaded Python (torch threads 1); it is timed once
per family, taking turns with the family's thread settings in every repeat, and shared by their rows.

Then `Stream.batch(step)` is timed for every configs/stream/*.yaml, on steps spread over the stream
(so gradual streams include their mixed batches). Each time is the median of `--repeats` runs of at
least `--min-time` seconds after one warm-up call. "speedup" is wall time; the CPU column divides
process CPU time per batch, which shifts less when other processes share the cores (with 1 thread).
The targets are judged on the wall-time speedup and rate. Prints markdown tables (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_streams as ref  # noqa: E402

from streams import load_stream, make  # noqa: E402

SPEEDUP_TARGET = 20.0
RATE_TARGET = 1e6  # scored tokens/s: 10x what a ~100k-parameter transformer trains at here

# (label, family name, family params, reference sampler, reference kwargs, posterior check)
CASES = [
    ("bijection", "bijection", {"n_keys": 8}, ref.sample_bijection, {"n_keys": 8},
     lambda f: lambda tok: ref.bijection_posterior(tok, f.n_keys)),
    ("recall", "recall", {}, ref.sample_recall, {},
     lambda f: lambda tok: ref.recall_posterior(tok, f.n_keys, f.n_values)),
    ("dirichlet", "dirichlet", {}, ref.sample_dirichlet, {},
     lambda f: lambda tok: ref.dirichlet_posterior(tok, np.asarray(f.alphas))),
    ("hmm", "hmm", {"n_states": 5, "n_symbols": 5, "length": 32, "header": True}, ref.sample_hmm,
     {"n_states": 5, "n_symbols": 5, "length": 32},
     lambda f: lambda tok: ref.hmm_posterior(tok, f.n_states, f.n_symbols, round(1 / f.grid))),
    ("changepoint", "changepoint", {}, ref.sample_changepoint, {},
     lambda f: lambda tok: ref.changepoint_posterior(tok, np.full(f.n_symbols, float(f.alpha)), f.hazard)),
    ("causal (3 nodes x 3 values x 8 rows)", "causal", {"n_nodes": 3, "n_values": 3, "n_rows": 8}, ref.sample_causal,
     {"n_nodes": 3, "n_values": 3, "n_rows": 8},
     lambda f: lambda tok: ref.causal_posterior(tok, f.n_nodes, f.n_values, f.alpha)),
]


def timed(fns: list[Callable[[], int]], min_time: float, repeats: int) -> list[tuple[float, float, float]]:
    """Per function: (median wall seconds per call, median scored tokens per wall second, median process
    CPU seconds per call). Each `fn` returns the scored tokens it made. The functions take turns within
    every repeat, so that a change in the load from other processes hits all of them alike."""
    per_call: list[list[float]] = [[] for _ in fns]
    rates: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            calls = tokens = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while True:
                tokens += fn()
                calls += 1
                dt = time.perf_counter() - t0
                if dt >= min_time:
                    break
            per_call[k].append(dt / calls)
            rates[k].append(tokens / dt)
            cpu[k].append((time.process_time() - c0) / calls)
    med = statistics.median
    return [(med(c), med(r), med(u)) for c, r, u in zip(per_call, rates, cpu)]


def with_threads(threads: int, fn: Callable[[], int]) -> Callable[[], int]:
    def run() -> int:
        torch.set_num_threads(threads)
        return fn()

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_posterior(family, posterior_fn, n: int = 16, seed: int = 1) -> float:
    """Max |family posterior - reference posterior| over n sequences (tokens from the family);
    raises if the scored masks differ or the gap exceeds 1e-9."""
    batch = family.sample(n, torch.Generator().manual_seed(seed))
    worst = 0.0
    for i in range(n):
        post, scored = posterior_fn(batch.tokens[i].numpy())
        if not np.array_equal(scored, batch.scored[i].numpy()):
            raise AssertionError(f"{family}: scored positions differ from the reference on sequence {i}")
        worst = max(worst, float(np.abs(post - batch.posterior[i].numpy()).max()))
    if worst > 1e-9:
        raise AssertionError(f"{family}: posterior differs from the reference by {worst:.3g} (> 1e-9)")
    return worst


def bayes_nll(tokens: torch.Tensor, posterior: torch.Tensor, scored: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of -log p*(next token) over scored positions (nats)."""
    p = posterior[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)[scored[:, :-1]]
    nll = -p.log()
    return float(nll.mean()), float(nll.std() / nll.numel() ** 0.5)


def bench_families(args, device: torch.device) -> list[str]:
    rows = []
    for label, name, params, ref_sample, ref_kwargs, ref_post in CASES:
        if args.families and name not in args.families:
            continue
        family = make(name, **params)
        gap = check_posterior(family, ref_post(family))
        # Same generative process: the Bayes log-loss of sampled tokens agrees within standard errors.
        nll_fam = bayes_nll(*(lambda b: (b.tokens, b.posterior, b.scored))(
            family.sample(args.nll_sequences, torch.Generator().manual_seed(2))))
        nll_ref = bayes_nll(*ref_sample(args.nll_sequences, np.random.default_rng(2), **ref_kwargs))
        z = abs(nll_fam[0] - nll_ref[0]) / max((nll_fam[1] ** 2 + nll_ref[1] ** 2) ** 0.5, 1e-12)
        nll_cell = f"{nll_fam[0]:.3f} / {nll_ref[0]:.3f} ({z:.1f}σ)"

        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)

        def run_ref(ref_sample=ref_sample, rng=rng, ref_kwargs=ref_kwargs) -> int:
            _, post, scored = ref_sample(args.batch_size, rng, **ref_kwargs)
            if device.type == "cuda":
                post.to(device)
                sync(device)
            return int(scored.sum())

        def run_family(family=family, gen=gen) -> int:
            b = family.sample(args.batch_size, gen)
            if device.type == "cuda":
                b = b.to(device)
                sync(device)
            return int(b.scored.sum())

        fns = [with_threads(1, run_ref)] + [with_threads(t, run_family) for t in args.threads]
        (ref_s, ref_rate, ref_cpu), *fam = timed(fns, args.min_time, args.repeats)
        for threads, (fam_s, fam_rate, fam_cpu) in zip(args.threads, fam):
            speedup = ref_s / fam_s
            scored = fam_rate * fam_s  # scored tokens per batch
            ok = (
                ("yes" if speedup >= SPEEDUP_TARGET else "**no**")
                + " / "
                + ("yes" if fam_rate >= RATE_TARGET else "**no**")
            )
            rows.append(
                f"| {label} | {family.seq_len} | {family.vocab_size} | {scored:.0f} | {threads} | "
                f"{fam_s * 1e3:.2f} | {fam_rate / 1e6:.2f} | {ref_s * 1e3:.1f} | {speedup:.0f}x | "
                f"{fam_cpu * 1e3:.2f} / {ref_cpu * 1e3:.1f} | {ref_cpu / fam_cpu:.0f}x | "
                f"{scored / fam_cpu / 1e6:.2f} | {gap:.1e} | {nll_cell} | {ok} |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_configs(args, device: torch.device) -> list[str]:
    rows = []
    for path in sorted((ROOT / "configs" / "stream").glob("*.yaml")):
        stream = load_stream(path, seed=0)
        steps = np.linspace(0, stream.total_steps - 1, 32).round().astype(int).tolist()
        i = 0

        def run_batch(stream=stream, steps=steps) -> int:
            nonlocal i
            b = stream.batch(steps[i % len(steps)])
            i += 1
            if device.type == "cuda":
                b = b.to(device)
                sync(device)
            return int(b.scored.sum())

        results = timed([with_threads(t, run_batch) for t in args.threads], args.min_time, args.repeats)
        families = sorted({p.family.name for p in stream.phases})
        for threads, (s, rate, _) in zip(args.threads, results):
            rows.append(
                f"| {path.stem} | {'+'.join(families)} | {len(stream.phases)} | {stream.transition} | "
                f"{stream.batch_size} | {stream.seq_len} | {stream.vocab_size} | {threads} | {s * 1e3:.2f} | "
                f"{rate / 1e6:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads to try")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timing repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: include moving each batch to the GPU (generation stays on the CPU)")
    p.add_argument("--nll-sequences", type=int, default=2048,
                   help="sequences per side for the same-process check (Bayes NLL of sampled tokens)")
    p.add_argument("--skip-configs", action="store_true", help="only the families")
    p.add_argument("--families", nargs="+", default=None, metavar="NAME", help="only these families (by name)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    print(f"# bench_streams: torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"device {args.device}, batch {args.batch_size}, load average {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}\n")
    print("Families (`family.sample(B)`, posterior included; reference = per-sequence Python + numpy):\n")
    print(
        "| family | T | V | scored/batch | threads | ms/batch | M scored tok/s | ref ms/batch | speedup | "
        "CPU-ms/batch fam / ref | CPU speedup | M scored tok/CPU-s | max \\|Δpost\\| vs ref | "
        "Bayes NLL nats fam / ref | ≥20x / ≥1M tok/s (wall) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|", flush=True)
    bench_families(args, device)
    if not args.skip_configs:
        print("\n`Stream.batch(step)` for configs/stream/*.yaml (steps spread over the whole stream):\n")
        print("| config | families | phases | transition | batch | T | V | threads | ms/batch | "
              "M scored tok/s |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|", flush=True)
        bench_configs(args, device)
    load1 = os.getloadavg()
    print(f"\n# done in {time.perf_counter() - t0:.0f} s; load average {load1[0]:.2f} {load1[1]:.2f} "
          f"{load1[2]:.2f}")


if __name__ == "__main__":
    main()
