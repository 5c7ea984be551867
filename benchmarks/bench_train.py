"""Training throughput of the Lightning path against a bare PyTorch loop, and the cost of evaluation.

    python benchmarks/bench_train.py                     # 2 threads, CPU
    python benchmarks/bench_train.py --threads 1
    python benchmarks/bench_train.py --device cuda
    python benchmarks/bench_train.py --skip-eval --rounds 5 --steps 500

Three ways to train the same model on the same data, in interleaved rounds (the order rotates each
round, so that load from other processes hits all of them alike):
- `lightning`: WindTunnelModule + the pl.Trainer of plasticity.train.trainer.make_trainer, fit on
  stream_loader, with the per-step callbacks of a run (an Evaluator with no eval steps, the progress
  callback, a Checkpointer that never saves) — how a run trains, minus the evaluations themselves.
- `bare`: a plain PyTorch loop over the same stream_loader: forward, sequence_loss, backward,
  clip_grad_norm_, AdamW step (same parameter groups), the same LambdaLR schedule.
- `bare+module`: the bare loop, but calling WindTunnelModule.compute_loss and
  on_before_optimizer_step itself (its divergence check, and clipping that keeps the gradient-norm probe), so the
  gap between it and `lightning` is Lightning's own cost.
Every run starts from the same initialization (built.new_model(seed)); steady-state throughput is
timed from step `--warmup` to the last step. `end-to-end` also counts building the Trainer (or the
optimizer) and fit's setup and teardown; `startup` is the time from building the model to the start of
the first batch. After each round the three models' weights are compared:
identical data and optimizer make them agree (bit for bit on CPU). Besides wall time, the process CPU
time per step is reported: with 1 thread it is much less sensitive to other processes sharing the cores.

Then one plasticity.entry.run on configs/experiment/smoke.yaml with the default transformer, the
bijection stream (configs/stream/bijection.yaml, default eval bank), eval.every=100 and the default eval
batch size, once with wandb as the config resolves it and once with logger.wandb.mode=disabled;
summary.json's timing.eval_fraction is the share of wall time spent evaluating.
Peak memory: resource.getrusage maxrss (the whole process), and torch.cuda.max_memory_allocated.

Tokens/s of every architecture at matched parameter counts, and what dominates each one's step:
benchmarks/bench_architectures.py (this script trains the model its --override selects, the transformer
by default).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from plasticity.entry import run
from plasticity.models import count_parameters
from plasticity.run import distributed
from plasticity.run.build import build
from plasticity.run.config import load_config
from plasticity.train.data import stream_loader
from plasticity.train.lightning_module import WindTunnelModule
from plasticity.train.loss import sequence_loss
from plasticity.train.optim import lr_lambda
from plasticity.train.trainer import make_trainer

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 0.95
EVAL_FRACTION_TARGET = 0.10

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*IterableDataset.*__len__.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


def config(args, threads: int, steps: int, extra: tuple[str, ...] = ()):
    overrides = [
        "stream=bijection", "model=transformer", f"stream.phases.0.steps={steps}",
        f"trainer.threads={threads}", f"trainer.accelerator={args.device}", "eval.every=100",
        "eval.batch_size=256", "progress=false", *args.override, *extra,
    ]
    return load_config(str(ROOT / "configs" / "experiment" / "smoke.yaml"), overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


class Timer(pl.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int, last: int, device: torch.device):
        self.warmup, self.last, self.device = warmup, last, device
        self.t0 = self.t1 = self.c0 = self.c1 = self.first = 0.0
        self.threads = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first = time.perf_counter()
        if batch_idx == self.warmup:
            sync(self.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.threads = torch.get_num_threads()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            sync(self.device)
            self.t1, self.c1 = time.perf_counter(), time.process_time()


def optimizer_and_schedule(model, cfg, total: int):
    o = cfg.optim
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(o.beta1, o.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, o.warmup_steps, total, o.min_lr_ratio))
    return opt, sched


def train_bare(parts, cfg, total: int, warmup: int, with_module: bool):
    """The bare loop; with_module: the module's compute_loss and clipping hook inside it."""
    t_start = time.perf_counter()
    device = parts.device
    model = parts.new_model(cfg.seed).to(device)
    module = WindTunnelModule(model, cfg.optim, cfg.loss, parts.stream, 0, total) if with_module else None
    opt, sched = optimizer_and_schedule(model, cfg, total)
    # The module clips the model's parameters in model order; the same order here makes the summed norm
    # round identically, so the weights stay bit-for-bit comparable.
    params = list(model.parameters())
    t0 = c0 = first = 0.0
    for i, batch in enumerate(stream_loader(parts.stream, 0, total)):
        if i == 0:
            first = time.perf_counter()
        if i == warmup:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        batch = batch.to(device)
        if module is not None:
            module.on_train_batch_start(batch, i)
            loss = module.compute_loss(batch)
        else:
            loss = sequence_loss(model(batch.tokens), batch, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if module is not None:
            module.on_before_optimizer_step(opt)  # clips (and keeps the norm for the probe)
        else:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
    sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    return model, t1 - t0, c1 - c0, t1 - t_start, first - t_start


def train_lightning(parts, cfg, total: int, warmup: int, prequential: bool = False):
    t_start = time.perf_counter()
    model = parts.new_model(cfg.seed).to(parts.device)
    module = WindTunnelModule(model, cfg.optim, cfg.loss, parts.stream, 0, total,
                              lr=cfg.optim.lr, schedule=cfg.optim.schedule, warmup_steps=cfg.optim.warmup_steps)
    timer = Timer(warmup, total - 1, parts.device)
    callbacks = run_callbacks(parts, cfg, total)
    if prequential:  # the per-step record of a run: the KL of every batch before its update, to a CSV
        callbacks.insert(0, prequential_callback(parts))
    make_trainer(parts.device, total, [timer, *callbacks], cfg.trainer.deterministic,
                 distributed.world_size(cfg), distributed.trainer_strategy(cfg, parts.device.type)).fit(
        module, stream_loader(parts.stream, 0, total))
    sync(parts.device)
    t_end = time.perf_counter()
    if timer.threads and parts.device.type == "cpu" and timer.threads != torch.get_num_threads():
        print(f"# note: torch threads inside fit were {timer.threads}")
    return model, timer.t1 - timer.t0, timer.c1 - timer.c0, t_end - t_start, timer.first - t_start


def run_callbacks(parts, cfg, total: int) -> list[pl.Callback]:
    """The per-step callbacks of a unit's fit (plasticity.run.work_units), minus the work they do only now
    and then: an Evaluator with no eval steps, the step counter and a Checkpointer that never saves. Their
    hooks still run on every step, as in a run. (Best effort: if their signatures change, the Trainer runs
    without them.)"""
    try:
        from plasticity.eval.evaluator import Evaluator
        from plasticity.run.work_units import StepCounter, UnitEvents
        from plasticity.train.checkpointing import Checkpointer
        from plasticity.train.stopping import StopFlag

        evaluator = Evaluator("bench", parts.stream, {}, set(), cfg.eval.batch_size, cfg.eval.probes, cfg.eval.tau,
                              None, "init", lambda rows: None)
        progress = StepCounter(UnitEvents(), "bench")
        tmp = Path(tempfile.gettempdir()) / f"bench_train_{os.getpid()}.pt"
        return [evaluator, progress, Checkpointer(tmp, 0, total, evaluator, None, StopFlag())]
    except Exception as e:  # noqa: BLE001
        print(f"# note: running without the run's callbacks ({type(e).__name__}: {e})")
        return []


PREQUENTIAL_SECONDS: list[float] = []  # the record's own time in every step of the runs with it


def prequential_callback(parts) -> pl.Callback:
    from plasticity.eval.prequential import Prequential
    from plasticity.run.steplog import StepLog

    class Timed(Prequential):  # its own time, step by step: far less noisy than a throughput difference
        def on_train_batch_end(self, *args) -> None:
            t0 = time.process_time()
            super().on_train_batch_end(*args)
            PREQUENTIAL_SECONDS.append(time.process_time() - t0)

    log = StepLog(Path(tempfile.mkdtemp(prefix="bench_steps_")) / "unit.csv")
    return Timed(parts.stream, lambda *r: log.add(r))


def bench_frozen(parts, steps: int) -> float:
    """Seconds per step of a frozen arm's record: a forward pass of every stream batch, forward only."""
    from plasticity.eval.prequential import record_frozen

    model = parts.new_model(0).to(parts.device)
    records = []
    t0 = time.perf_counter()
    record_frozen(model, parts.stream, 0, steps, lambda *r: records.append(r[2].tolist()), parts.device)
    return (time.perf_counter() - t0) / steps


@torch.no_grad()
def max_weight_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def bench_throughput(args, threads: int) -> list[str]:
    torch.set_num_threads(threads)
    total = args.warmup + args.steps
    cfg = config(args, threads, total)
    parts = build(cfg)
    # Lightning's deterministic=True (CPU) switches torch to deterministic algorithms for the rest of the
    # process; set it up front so that every arm runs under the same setting.
    torch.use_deterministic_algorithms(bool(cfg.trainer.deterministic and parts.device.type == "cpu"))
    stream = parts.stream
    tokens_per_step = stream.batch_size * stream.seq_len
    arms = {
        "bare": lambda: train_bare(parts, cfg, total, args.warmup, with_module=False),
        "bare+module": lambda: train_bare(parts, cfg, total, args.warmup, with_module=True),
        "lightning": lambda: train_lightning(parts, cfg, total, args.warmup),
        "lightning+prequential": lambda: train_lightning(parts, cfg, total, args.warmup, prequential=True),
    }
    steady: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    startup: dict[str, list[float]] = {k: [] for k in arms}
    whole: dict[str, list[float]] = {k: [] for k in arms}
    peak: dict[str, float | None] = {}
    gaps: list[float] = []
    names = list(arms)
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        models = {}
        for name in order:
            reset_peak(parts.device)
            models[name], s, c, w, first = arms[name]()
            startup[name].append(first)
            peak[name] = cuda_peak_mib(parts.device)
            steady[name].append(args.steps * tokens_per_step / s)
            cpu[name].append(1e3 * c / args.steps)
            whole[name].append(total * tokens_per_step / w)
        gap = {k: max_weight_gap(models["bare"], models[k]) for k in names if k != "bare"}
        gaps.append(max(gap.values()))
        print(f"# round {r}: " + ", ".join(f"{k} {steady[k][-1] / 1e3:.1f}k tok/s ({cpu[k][-1]:.2f} CPU-ms/step)"
                                           for k in order)
              + "; max |weight - bare's| " + ", ".join(f"{k} {v:.1e}" for k, v in gap.items()), flush=True)
    load1 = os.getloadavg()[0]

    n_params = count_parameters(models["bare"])
    bare = statistics.median(steady["bare"])
    rows = []
    for name in names:
        med = statistics.median(steady[name])
        ratio = med / bare
        per_round = [steady[name][i] / steady["bare"][i] for i in range(args.rounds)]
        mark = "" if name == "bare" else (" (≥0.95: yes)" if ratio >= RATIO_TARGET else " (≥0.95: **no**)")
        ms = 1e3 * tokens_per_step / med
        cuda = f" | {peak[name]:.0f}" if parts.device.type == "cuda" else ""
        cpu_ms = statistics.median(cpu[name])
        cpu_ratio = statistics.median(cpu["bare"]) / cpu_ms
        cpu_mark = "" if name == "bare" else (" (yes)" if cpu_ratio >= RATIO_TARGET else " (**no**)")
        rows.append(
            f"| {name} | {threads} | {ms:.2f} | {med / 1e3:.1f} | {ratio:.3f}{mark} | "
            f"{cpu_ms:.2f} | {cpu_ratio:.3f}{cpu_mark} | "
            f"{min(per_round):.3f}–{max(per_round):.3f} | {statistics.median(whole[name]) / 1e3:.1f} | "
            f"{statistics.median(whole[name]) / statistics.median(whole['bare']):.3f} | "
            f"{1e3 * statistics.median(startup[name]):.0f}{cuda} |"
        )
    overrides = f" ({' '.join(args.override)})" if args.override else ""
    print(f"\nThroughput: {n_params} parameters{overrides}, bijection 8 keys, batch {stream.batch_size} x T "
          f"{stream.seq_len} ({tokens_per_step} tokens/step), {args.steps} timed steps after {args.warmup} "
          f"warm-up, {args.rounds} interleaved rounds, device {args.device}, threads {threads}; "
          f"load average {load0:.2f} -> {load1:.2f}; max |weight gap| vs bare {max(gaps):.1e}\n")
    cuda_head = " | CUDA peak MiB" if parts.device.type == "cuda" else ""
    print(f"| path | threads | ms/step | k tokens/s | ratio to bare (median) | CPU-ms/step | CPU ratio | "
          f"per-round ratio | end-to-end k tokens/s | end-to-end ratio | startup ms{cuda_head} |")
    print("|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|" + ("---:|" if cuda_head else ""))
    for row in rows:
        print(row)
    with_record, without = statistics.median(steady["lightning+prequential"]), statistics.median(steady["lightning"])
    cpu_with, cpu_without = statistics.median(cpu["lightning+prequential"]), statistics.median(cpu["lightning"])
    frozen = bench_frozen(parts, args.steps)
    own = statistics.median(PREQUENTIAL_SECONDS) * 1e3
    own_mean = statistics.fmean(PREQUENTIAL_SECONDS) * 1e3  # with the steps that append to the file
    per_round = [a / b - 1 for a, b in zip(cpu["lightning+prequential"], cpu["lightning"])]
    paired = statistics.median(per_round)
    step = cpu_without  # a training step's CPU-ms without the record
    print(f"\nPrequential record, its own CPU time: median {own:.3f} ms/step = {100 * own / step:.1f}% of a "
          f"training step (target <= 3%); mean {own_mean:.3f} ms/step = {100 * own_mean / step:.1f}% (file "
          "appends included).")
    print(f"As a throughput difference (noisier): lightning+prequential / lightning = {with_record / without:.3f}, "
          f"CPU {100 * (cpu_with / step - 1):+.1f}%; the rounds' paired differences: median "
          f"{100 * paired:+.1f}%, from {min(per_round):+.1%} to {max(per_round):+.1%}.")
    print(f"A frozen arm's record (forward only): {1e3 * frozen:.2f} ms/step = {frozen / (1e-3 * step):.2f} x a "
          "training step's CPU time.", flush=True)
    return rows


def bench_eval(args, threads: int) -> None:
    """One experiment run per wandb setting: as the config resolves it (offline here, without an API
    key) and with logger.wandb.mode=disabled."""
    device = torch.device(args.device)
    rows = []
    for label, extra in (("default", ()), ("disabled", ("logger.wandb.mode=disabled",))):
        try:
            cfg = config(args, threads, args.eval_run_steps, extra)
        except Exception as e:  # noqa: BLE001  (a config key this checkout does not have)
            print(f"# skipped wandb={label}: {e}")
            continue
        mode = label
        try:
            from plasticity.sinks.wandb import resolve_mode

            mode = resolve_mode(cfg.logger.wandb.mode)
        except Exception:  # noqa: BLE001, S110
            pass
        reset_peak(device)
        load0 = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            summary = run(cfg, Path(tmp) / "run")
        load1 = os.getloadavg()[0]
        t = summary["timing"]
        steps = args.eval_run_steps
        n_evals = steps // cfg.eval.every + 1 + (steps % cfg.eval.every != 0)
        mark = "yes" if t["eval_fraction"] <= EVAL_FRACTION_TARGET else "**no**"
        cuda = cuda_peak_mib(device)
        rows.append(
            f"| {threads} | {mode} | {steps} | {n_evals} | {t['wall_seconds']:.1f} | {t['train_seconds']:.1f} | "
            f"{t['eval_seconds']:.2f} | {1e3 * t['eval_seconds'] / n_evals:.0f} | {100 * t['eval_fraction']:.1f}% "
            f"({mark}) | {t['train_tokens_per_second'] / 1e3:.1f} | {maxrss_mib():.0f}"
            + (f" | {cuda:.0f} |" if cuda is not None else " |") + f" {load0:.2f} → {load1:.2f} |"
        )
    print(f"\nEvaluation cost: plasticity.entry.run, smoke.yaml + stream=bijection + model=transformer, "
          f"{args.eval_run_steps} steps, eval.every={cfg.eval.every}, eval bank {cfg.stream.eval_size} "
          f"sequences, eval.batch_size={cfg.eval.batch_size}, probes={cfg.eval.probes}, device {args.device}, "
          f"threads {threads}\n")
    cuda_head = " | CUDA peak MiB" if device.type == "cuda" else ""
    print(f"| threads | wandb | steps | evals | wall s | train s | eval s | ms/eval | eval_fraction (≤10%) | "
          f"train k tokens/s | maxrss MiB{cuda_head} | load average |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|" + ("---:|" if cuda_head else "") + "---|")
    for row in rows:
        print(row)
    print(flush=True)


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch CPU threads (e.g. 2 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=300, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps before them")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eval-run-steps", type=int, default=600, help="steps of the eval-fraction run")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides, e.g. a tiny model to expose the fixed per-step overhead: "
                        "model.n_layers=1 model.d_model=8 model.n_heads=1 model.d_ff=8")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    t0 = time.perf_counter()
    load = os.getloadavg()
    print(f"# bench_train: torch {torch.__version__}, pytorch_lightning {pl.__version__}, {os.cpu_count()} CPUs, "
          f"device {args.device}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n", flush=True)
    if max(args.threads) > 1 and load[0] > (os.cpu_count() or 1) and "OMP_WAIT_POLICY" not in os.environ:
        print(f"# warning: load average {load[0]:.1f} > {os.cpu_count()} CPUs. With more than one thread, OpenMP's "
              "spin-waiting makes each parallel op wait on a descheduled thread: expect steps many times slower "
              "and very noisy (OMP_WAIT_POLICY=PASSIVE or --threads 1 avoid it).\n", flush=True)
    for threads in args.threads:
        if not args.skip_throughput:
            bench_throughput(args, threads)
        if not args.skip_eval:
            bench_eval(args, threads)
    load = os.getloadavg()
    print(f"# peak RSS {maxrss_mib():.0f} MiB; done in {time.perf_counter() - t0:.0f} s; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
