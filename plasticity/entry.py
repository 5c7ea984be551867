"""`plasticity run`: the command shared by the CLI and sweep trials, and `run(cfg)` / `resume(run_dir)` for
scripts and tests.

A run is built once (plasticity.run.build), executed by the experiment with the sinks its config asks for
(wandb), and its figures drawn from the run directory at the end. A configuration mistake is a
ConfigError (one line, exit status 2) raised before any training or file write.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from plasticity.files import atomic_write_text, json_safe
from plasticity.results.seeds import AGGREGATE_FILE, SEEDS_FILE, aggregate, print_aggregate, seed_dir
from plasticity.results.summary_table import print_summary
from plasticity.run.build import BuiltRun, build
from plasticity.run.config import ConfigError, from_container, load_config, load_run_config, seed_list, to_container
from plasticity.run.experiment import Experiment, default_run_dir, run_experiments
from plasticity.run.sinks import RunSink
from plasticity.sinks.wandb import default_sinks
from plasticity.train.stopping import Preempted

EXIT_CONFIG = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a scheduler expects from a job it asked to stop


def run(cfg: DictConfig, run_dir: Path | str | None = None, sinks: list[RunSink] | None = None) -> dict:
    """Run an experiment end to end; returns the summary (also written to the run directory), or with
    `seeds`, the aggregate over the seeds (written to the parent run directory)."""
    seeds = seed_list(cfg)
    if seeds is None:
        return execute(build(cfg), run_dir, sinks)
    parent = Path(run_dir) if run_dir else default_run_dir(cfg)
    builds = {s: build(seed_config(cfg, s, parent)) for s in seeds}  # every seed checked before any work
    parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parent / SEEDS_FILE, yaml.safe_dump(json_safe(to_container(cfg)), sort_keys=False))
    return execute_seeds(builds, parent, sinks)


def resume(run_dir: Path | str, sinks: list[RunSink] | None = None) -> dict:
    """Continue an interrupted run (or every seed of a parent run directory); finished units are kept,
    interrupted ones continue from their checkpoints."""
    parent = Path(run_dir)
    if (parent / SEEDS_FILE).is_file():
        cfg = from_container(yaml.safe_load((parent / SEEDS_FILE).read_text()))
        builds = {s: build(load_run_config(seed_dir(parent, s))) if (seed_dir(parent, s) / "config.yaml").is_file()
                  else build(seed_config(cfg, s, parent)) for s in seed_list(cfg)}
        return execute_seeds(builds, parent, sinks, resume=True)
    return execute(build(load_run_config(run_dir)), run_dir, sinks, resume=True)


def seed_config(cfg: DictConfig, seed: int, parent: Path) -> DictConfig:
    """One seed's config: that seed, its own directory under the parent, its wandb runs grouped under the parent."""
    one = copy.deepcopy(cfg)
    one.seed, one.seeds, one.run.dir, one.run.name = seed, None, str(seed_dir(parent, seed)), None
    if one.logger.wandb.group is None:
        one.logger.wandb.group = parent.name
    return one


def execute(built: BuiltRun, run_dir: Path | str | None = None, sinks: list[RunSink] | None = None,
            resume: bool = False) -> dict:
    exp = Experiment(built, Path(run_dir) if run_dir else None, [*(sinks or []), *default_sinks(built.cfg)], resume)
    summary = exp.run()
    summary["run_dir"] = str(exp.rundir.path)
    if built.cfg.plots:
        plot(exp.rundir.path)
    return summary


def execute_seeds(builds: dict[int, BuiltRun], parent: Path, sinks: list[RunSink] | None = None,
                  resume: bool = False) -> dict:
    """Every seed's run, their units in one pool; then the aggregate and the figures with bands."""
    exps = [Experiment(b, seed_dir(parent, s), [*(sinks or []), *default_sinks(b.cfg)],
                       resume and (seed_dir(parent, s) / "config.yaml").is_file(), label=f"seed {s} · ")
            for s, b in builds.items()]
    summaries = dict(zip(builds, run_experiments(exps)))
    agg = aggregate(summaries)
    atomic_write_text(parent / AGGREGATE_FILE, json.dumps(json_safe(agg), indent=2, allow_nan=False) + "\n")
    if next(iter(builds.values())).cfg.plots:
        for s in builds:
            plot(seed_dir(parent, s))
        try:
            from plasticity.results.sweep_plots import plot_sweep  # late: matplotlib only when plotting

            plot_sweep([seed_dir(parent, s) for s in builds], parent / "plots")
        except Exception as e:  # noqa: BLE001 - figures are a view
            print(f"warning: the seeds' figures failed ({type(e).__name__}: {e})", file=sys.stderr)
    agg["run_dir"] = str(parent)
    return agg


def plot(run_dir: Path) -> None:
    try:
        from plasticity.results.plots import make_plots  # late: matplotlib only when plotting

        make_plots(run_dir)
    except Exception as e:  # noqa: BLE001 - figures are a view; the run directory has the data
        print(f"warning: plots failed ({type(e).__name__}: {e}); redraw with "
              "plasticity.results.plots.make_plots(run_dir)", file=sys.stderr)


# ------------------------------------------------------------------------------------------- the command
class CommandParser(argparse.ArgumentParser):
    """Command-line mistakes too are one line and exit status 2 (argparse would print its usage first)."""

    def error(self, message: str):
        self.exit(EXIT_CONFIG, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """Line breaks and control characters (from a user's key or value) escaped: the message stays one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("experiment", nargs="?", help="a name under configs/experiment or a YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=mlp trainer.threads=1")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints")
    parser.set_defaults(func=cmd_run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """`plasticity run`: the table on success, 143 when a stop signal checkpointed the run."""
    try:
        summary = _resume(args) if args.resume else _run(args)
    except Preempted as e:
        print(f"{e}; continue with: plasticity run --resume {args.resume or '<run dir>'}", file=sys.stderr)
        return EXIT_PREEMPTED
    if "seeds" in summary:
        print_aggregate(summary, Path(summary["run_dir"]))
    else:
        print_summary(summary)
    return 0


def _resume(args: argparse.Namespace) -> dict:
    if args.experiment or args.overrides:
        raise ConfigError("--resume takes a run directory only: the run continues with the config it started with")
    return resume(args.resume)


def _run(args: argparse.Namespace) -> dict:
    experiment, overrides = args.experiment, list(args.overrides)
    if experiment is not None and "=" in experiment:
        overrides.insert(0, experiment)
        experiment = None
    return run(load_config(experiment, overrides))
