"""`plasticity run|list|sweep|report`: the command line.

A configuration mistake prints one line (`error: <key>: <what is allowed>`) and exits with status 2
before any training or file writes. `run` is plasticity.entry's command, shared with the sweep trials.
"""

from __future__ import annotations

import argparse
import sys

from plasticity.entry import EXIT_CONFIG, CommandParser, add_run_arguments, one_line
from plasticity.run.config import GROUPS, ConfigError, group_options
from plasticity.run.pool import UnitFailed
from plasticity.train.stopping import DivergenceError


def cmd_list(args: argparse.Namespace) -> int:
    import streams
    from plasticity.models import MODELS
    from plasticity.strategies import STRATEGIES
    from streams.registry import field_defaults

    def defaults(config_class) -> str:
        return ", ".join(f"{k}={v}" for k, v in field_defaults(config_class).items())

    for group in GROUPS:
        print(f"{group}: {', '.join(group_options(group)) or '-'}")
    print("models:")
    for name in MODELS.names():
        cls = MODELS.classes[name]
        print(f"  {name}({defaults(cls.Config)}): {cls.description}")
    print("strategies:")
    for name in STRATEGIES.names():
        cls = STRATEGIES.classes[name]
        print(f"  {name}({defaults(cls.Params)}): {cls.description}")
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
    from plasticity.results.report import report

    return report(args.dirs, args.out, plots=not args.no_plots)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="plasticity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub.add_parser("run", help="run an experiment (default: the default experiment)"))
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
    except (DivergenceError, UnitFailed) as e:  # pretraining diverged (no arm can fork from it), or units failed
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
