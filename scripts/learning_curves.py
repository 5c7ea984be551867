"""KL to the posterior by training step, one panel per value of one config key, one line per value of another.

    python scripts/learning_curves.py runs/sweeps/primitives [--panels stream --lines model] [--arm pretrain]
        [--phase 0] [--threshold 0.05] [--out DIR]

Reads every finished run under the given folders. A key is a dotted config key (`optim.lr`) or a block
(`model`, `stream`) that its name stands for (`model.name`, `stream.phases.0.name`). Per (panel, line): the
runs are seeds; the figure draws their mean KL on evaluation phase --phase of arm --arm at each step all of
them evaluated, with the 95% Student-t band, and the table gives the final KL (mean ± 95% CI) and, per seed,
the first evaluated step with KL ≤ --threshold ("-" when none did): when each architecture learns a task.
Writes learning_curves.md and plots/learning_curves.png into --out (default: the first folder).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from plasticity.eval.rows import PRETRAIN_ARM
from plasticity.files import atomic_write_text
from plasticity.results.figures import KL_FLOOR, STYLE, grid, save
from plasticity.results.report import natural_key
from plasticity.results.runs import differing_keys, find, flatten, load, short_value
from plasticity.results.stats import mean_ci, mean_ci_text
from plasticity.run.config import ConfigError
from streams.checks import is_number


def value_of(flat: dict[str, str], key: str) -> str | None:
    """A run's value of `key` in its flattened config, as labels show it; a block stands for its name; None
    when the run has no such key."""
    for k in (f"{key}.name", f"{key}.phases.0.name", key):
        if k in flat:
            return short_value(flat[k])
    return None


def collect(folders: list[Path], panels: str, lines: str, arm: str, phase: int) -> dict:
    """{(panel value, line value): [(seed, [(step, kl_bits)]), ...] in seed order} over the finished runs.
    The runs of one (panel, line) must be seeds of one setting: runs that differ in another key are an error
    (ConfigError naming the keys), not seeds to pool."""
    found: dict = defaultdict(list)
    configs: dict = defaultdict(list)
    for run in map(load, find(folders)[0]):
        if run.summary is None:
            continue
        curve = sorted((r["step"], r["kl_bits"]) for r in run.rows()
                       if r.get("arm") == arm and r.get("eval_phase") == phase and is_number(r.get("kl_bits")))
        flat = flatten(run.config)
        panel, line = value_of(flat, panels), value_of(flat, lines)
        if curve and panel is not None and line is not None:
            found[(panel, line)].append((run.config.get("seed"), curve))
            configs[(panel, line)].append(run.config)
    for (panel, line), peers in configs.items():
        if differ := differing_keys(peers, ignore=(panels, lines)):
            raise ConfigError(f"the runs of {panels}={panel}, {lines}={line} differ in {', '.join(differ)}: "
                              "give --panels and --lines the keys that vary, or folders of one setting each")
    return {key: sorted(v, key=lambda sc: natural_key(str(sc[0]))) for key, v in found.items()}


def band(curves: list[list[tuple[int, float]]]) -> list[tuple[int, dict]]:
    """(step, mean_ci over the seeds) at each step every seed evaluated."""
    by_step = [dict(c) for c in curves]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    return [(s, mean_ci([c[s] for c in by_step])) for s in steps]


def first_below(curve: list[tuple[int, float]], threshold: float) -> int | None:
    return next((s for s, kl in curve if kl <= threshold), None)


def table(found: dict, panels_key: str, lines_key: str, threshold: float) -> str:
    out = [f"| {panels_key} | {lines_key} | seeds | final KL (bits) | first step with KL ≤ {threshold:g}, per seed |",
           "|---|---|---:|---:|---|"]
    for (panel, line), seeded in sorted(found.items(), key=lambda kv: (natural_key(kv[0][0]), natural_key(kv[0][1]))):
        final = mean_ci_text(mean_ci([curve[-1][1] for _, curve in seeded]))
        firsts = ", ".join("-" if (s := first_below(c, threshold)) is None else str(s) for _, c in seeded)
        out.append(f"| {panel} | {line} | {len(seeded)} | {final} | {firsts} |")
    return "\n".join(out) + "\n"


def plot(found: dict, panels_key: str, lines_key: str, threshold: float, path: Path) -> None:
    import matplotlib as mpl

    panels = sorted({p for p, _ in found}, key=natural_key)
    lines = sorted({v for _, v in found}, key=natural_key)
    colors = {v: f"C{i % 10}" for i, v in enumerate(lines)}
    with mpl.rc_context(STYLE):
        fig, axes = grid(len(panels), ncols_max=5)
        handles = {}
        for ax, panel in zip(axes, panels):
            for line in lines:
                if (panel, line) not in found:
                    continue
                pts = band([c for _, c in found[(panel, line)]])
                xs = [s for s, _ in pts]
                mean = [max(st["mean"], KL_FLOOR) for _, st in pts]
                (h,) = ax.plot(xs, mean, color=colors[line], lw=1.2)
                if all(st["ci95"] is not None for _, st in pts):
                    ax.fill_between(xs, [max(st["mean"] - st["ci95"], KL_FLOOR) for _, st in pts],
                                    [st["mean"] + st["ci95"] for _, st in pts], color=colors[line], alpha=0.2, lw=0)
                handles.setdefault(f"{lines_key}={line}", h)
            ax.axhline(threshold, color="grey", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{panels_key}={panel}")
            ax.set_xlabel("training step")
            ax.set_ylabel("KL to the posterior (bits)")
        fig.suptitle(f"KL by training step: mean ± 95% CI over seeds (dotted: {threshold:g} bits)")
        labels = sorted(handles, key=natural_key)
        fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=min(len(labels), 6),
                   frameon=False)
        save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--panels", default="stream", help="config key with one panel per value (default: stream)")
    ap.add_argument("--lines", default="model", help="config key with one line per value (default: model)")
    ap.add_argument("--arm", default=PRETRAIN_ARM)
    ap.add_argument("--phase", type=int, default=0, help="the evaluation phase whose KL is drawn")
    ap.add_argument("--threshold", type=float, default=0.05, help="bits; the table's first step at or below it")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.threshold > 0:
        print(f"error: --threshold={args.threshold}: must be > 0", file=sys.stderr)
        raise SystemExit(2)
    try:
        found = collect(args.folders, args.panels, args.lines, args.arm, args.phase)
    except ConfigError as e:  # a folder that is not there; runs of one panel and line that are not seeds
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not found:
        print(f"error: no finished run under {', '.join(map(str, args.folders))} has --panels {args.panels}, "
              f"--lines {args.lines} and KL rows of arm {args.arm} on phase {args.phase}", file=sys.stderr)
        raise SystemExit(2)
    out = args.out or args.folders[0]
    text = table(found, args.panels, args.lines, args.threshold)
    print(text, end="")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "learning_curves.md", text)
    plot(found, args.panels, args.lines, args.threshold, out / "plots" / "learning_curves.png")
    print(f"wrote {out / 'learning_curves.md'} and plots/learning_curves.png")


if __name__ == "__main__":
    main()
