"""`plasticity run|list`: the command line over plasticity.experiment.run.

A configuration mistake prints one line (`error: <key>: <what is allowed>`) and exits with status 2
before any training or file writes.
"""

from __future__ import annotations

import argparse
import sys

from plasticity.config import GROUPS, ConfigError, group_options, load_config

EXIT_CONFIG = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a scheduler expects from a job it asked to stop


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    phases = summary["phases"]
    title = f"KL to the exact posterior (bits per scored token) at the end of the stream — {summary['name']}"
    table = Table(title=title)
    table.add_column("arm")
    for p in phases:
        table.add_column(p, justify="right")
    table.add_column("mean", justify="right")
    table.add_column("forgetting", justify="right")
    table.add_column("BWT (+ = worse)", justify="right")
    arms = {a: r for a, r in summary["arms"].items() if "R_kl_bits" in r}
    for arm, res in arms.items():
        if res.get("diverged"):
            table.add_row(arm, *("diverged" if j == 0 else "-" for j in range(len(phases) + 3)))
            continue
        last = res["R_kl_bits"][-1]
        forgetting = res["forgetting_bits"]
        table.add_row(
            arm, *(f"{v:.4f}" for v in last), f"{res['final_kl_bits']:.4f}",
            f"{max(forgetting):.4f}" if forgetting else "-", f"{res['bwt_bits']:+.4f}",
        )
    console.print(table)
    for arm, res in summary["arms"].items():
        if res.get("diverged"):
            console.print(f"arm {arm} diverged: {res['diverged']}", markup=False)
    arms = {a: r for a, r in arms.items() if not r.get("diverged")}
    if len(arms) > 1:
        for j, p in enumerate(phases):
            best = min(arms, key=lambda a: arms[a]["R_kl_bits"][-1][j])
            console.print(f"phase {j} ({p}): closest to the posterior at the end: [bold]{best}[/bold] "
                          f"({arms[best]['R_kl_bits'][-1][j]:.4f} bits)")
    t = summary["timing"]
    tps = t["train_tokens_per_second"]
    speed = f", training {tps:,.0f} tokens/s, evaluation {100 * t['eval_fraction']:.1f}% of wall time" if tps else ""
    console.print(f"wall {t['wall_seconds']:.1f} s{speed}")
    console.print(f"run directory: {summary['run_dir']}")


def cmd_run(args: argparse.Namespace) -> int:
    from plasticity.checkpointing import Preempted

    try:
        summary = _resume(args) if args.resume else _run(args)
    except Preempted as e:
        print(f"{e}; continue with: plasticity run --resume {args.resume or '<run dir>'}", file=sys.stderr)
        return EXIT_PREEMPTED
    _print_table(summary)
    return 0


def _resume(args: argparse.Namespace) -> dict:
    if args.experiment or args.overrides:
        raise ConfigError("--resume takes a run directory only: the run continues with the config it started with")
    from plasticity.experiment import resume

    return resume(args.resume)


def _run(args: argparse.Namespace) -> dict:
    experiment, overrides = args.experiment, list(args.overrides)
    if experiment is not None and "=" in experiment:
        overrides.insert(0, experiment)
        experiment = None
    from plasticity.config import validate

    cfg = load_config(experiment, overrides)
    validate(cfg)
    from plasticity.experiment import run

    return run(cfg)


def cmd_list(args: argparse.Namespace) -> int:
    import streams
    from plasticity.models import MODELS
    from plasticity.strategies import STRATEGIES

    for group in GROUPS:
        print(f"{group}: {', '.join(group_options(group)) or '-'}")
    print(f"models: {', '.join(sorted(MODELS))}")
    print(f"strategies: {', '.join(sorted(STRATEGIES))}")
    print("families:")
    for info in streams.families():
        params = ", ".join(f"{k}={v}" for k, v in info.params.items())
        print(f"  {info.name}({params}): {info.description}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from plasticity.sweep.spec import load_sweep

    if args.emit_wandb:
        from plasticity.sweep.emit import emit_wandb

        path, readme = emit_wandb(load_sweep(args.sweep), args.emit_wandb, args.seed)
        print(f"wrote {path} and {readme}")
        print(f"create the sweep: wandb sweep {path}; then on each machine: wandb agent ENTITY/PROJECT/SWEEP_ID")
        return 0
    from plasticity.sweep.runner import dry_run, run_sweep

    if args.dry_run:
        print("\n".join(dry_run(args.sweep, args.out, args.seed)))
        return 0
    resources = {"partition": args.partition, "time": args.time, "cpus_per_task": args.cpus_per_task,
                 "mem_gb": args.mem_gb, "gpus_per_node": args.gpus_per_node}
    try:
        index = run_sweep(args.sweep, args.out, args.workers, args.executor, args.seed, resources, args.cluster)
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to resume it", file=sys.stderr)
        return 130
    return 1 if index["counts"]["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from plasticity.report import report

    return report(args.dirs, args.out, plots=not args.no_plots)


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes too are one line and exit status 2 (argparse would print its usage first)."""

    def error(self, message: str):
        self.exit(EXIT_CONFIG, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="plasticity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (default: the default experiment)")
    run.add_argument("experiment", nargs="?", help="a name under configs/experiment or a YAML file")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=mlp trainer.threads=1")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="list experiments, streams, models, strategies and task families")
    lst.set_defaults(func=cmd_list)
    sw = sub.add_parser("sweep", help="run a sweep file (wandb sweep format) locally or on Slurm; see docs/sweeps.md")
    sw.add_argument("sweep", help="a sweep YAML, e.g. configs/sweep/smoke.yaml")
    sw.add_argument("--out", help="where the runs and sweep_index.json go (default runs/sweeps/<file stem>)")
    sw.add_argument("--workers", type=int,
                    help="trials at a time (default: CPUs, at most 8; Slurm: array parallelism, default all)")
    sw.add_argument("--executor", choices=("local", "slurm"), default="local")
    sw.add_argument("--emit-wandb", metavar="DIR", help="write the sweep for `wandb sweep` + `wandb agent` and exit")
    sw.add_argument("--seed", type=int, default=0, help="seed of the random search's draws")
    sw.add_argument("--dry-run", action="store_true", help="validate and list the trials; run nothing")
    sw.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                    help="submitit backend of --executor slurm (local: same job array on this machine)")
    for flag, kind in (("--partition", str), ("--time", str), ("--cpus-per-task", int), ("--mem-gb", int),
                       ("--gpus-per-node", int)):
        sw.add_argument(flag, type=kind, help="Slurm resource per trial (overrides the sweep file's slurm: block)")
    sw.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("report", help="a table across runs and sweeps (mean ± std over seeds)")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, sweep --out folders or folders of runs")
    rep.add_argument("--out", help="where report.md and report.csv go (default: the first DIR)")
    rep.add_argument("--no-plots", action="store_true", help="skip the figures")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:
        from plasticity.module import DivergenceError  # loaded already by any run that can raise it

        if not isinstance(e, DivergenceError):  # pretraining diverged: no arm can fork from it
            raise
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 1


def one_line(text: str) -> str:
    """Line breaks and control characters (from a user's key or value) escaped: the message stays one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


if __name__ == "__main__":
    sys.exit(main())
