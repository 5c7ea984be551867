"""Length generalisation: KL to the posterior within the training length and beyond it, per architecture and task.

    python scripts/length_generalisation.py [runs/sweeps/lengths ...] [--out DIR]

Reads every finished run under the given folders (configs/sweep/lengths.yaml: trained at one length, the eval
bank longer). From each run's last evaluation it takes the KL by position: position t scores the prediction
of token t + 1 from tokens 0..t, so positions t <= T_train - 2 were trained and t >= T_train - 1 never were.
Per (task, model): the mean KL over the scored positions within and beyond, mean ± 95% Student-t interval
over seeds (and each seed's, in seed order). Writes length_generalisation.md / .csv and
plots/length_generalisation.png (mean over seeds by position, the training length marked) into --out
(default: the first folder). A finished run whose stream cannot be rebuilt here (a family this install
does not know) is left out with a line on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from plasticity.files import atomic_write_csv, atomic_write_text
from plasticity.results.runs import differing_keys, find, load
from plasticity.results.stats import mean_ci, mean_ci_text
from plasticity.run.config import ConfigError
from streams.stream import Stream


def _label(model: dict) -> str:
    return model["name"] + (" (rotary)" if model.get("rotary") else "")


def collect(folders: list[Path]) -> tuple[dict, list[str]]:
    """{(task, model): {"trained": T_train, "evaluated": T_eval, "seeds": [...], "curves": [...]}}, seed order,
    and a line for each finished run left out because its stream cannot be rebuilt here. Runs of one (task,
    model) that differ in another key are an error (ConfigError naming the keys), not seeds to pool."""
    runs: dict = defaultdict(list)
    configs: dict = defaultdict(list)
    lengths: dict = {}
    skipped = []
    for run in map(load, find(folders)[0]):
        if run.summary is None:
            continue  # not finished
        cfg = run.config
        try:
            task = Stream.from_spec(cfg["stream"], seed=cfg["seed"]).tasks[0]
        except (ValueError, KeyError, TypeError, ImportError) as e:  # e.g. a user's family not importable here
            skipped.append(f"{run.path}: its stream cannot be rebuilt: {e}")
            continue
        curve = run.final_kl_by_position()
        if curve is None or task.eval_family.seq_len <= task.family.seq_len:
            continue  # not evaluated beyond its training length
        key = (task.family.name, _label(cfg["model"]))
        runs[key].append((cfg["seed"], curve))
        configs[key].append(cfg)
        lengths[key] = (task.family.seq_len, task.eval_family.seq_len)
    found = {}
    for key, seeded in runs.items():
        if differ := differing_keys(configs[key]):
            raise ConfigError(f"the runs of task {key[0]}, model {key[1]} differ in {', '.join(differ)}: "
                              "pass folders in which they are seeds of one setting")
        seeds, curves = zip(*sorted(seeded, key=lambda sc: sc[0]))
        found[key] = {"trained": lengths[key][0], "evaluated": lengths[key][1], "seeds": seeds, "curves": curves}
    return found, skipped


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def summarise(found: dict) -> list[dict]:
    rows = []
    for (task, model), e in sorted(found.items()):
        cut = e["trained"] - 1  # the first position never trained
        within = mean_ci([_mean(c[:cut]) for c in e["curves"]])
        beyond = mean_ci([_mean(c[cut:]) for c in e["curves"]])
        rows.append({"task": task, "model": model, "trained_length": e["trained"], "eval_length": e["evaluated"],
                     "seeds": len(e["curves"]), "kl_within": within["mean"], "kl_within_ci95": within["ci95"],
                     "kl_beyond": beyond["mean"], "kl_beyond_ci95": beyond["ci95"],
                     "per_seed_within": [round(v, 4) for v in within["values"]],
                     "per_seed_beyond": [round(v, 4) for v in beyond["values"]]})
    return rows


def _pm(mean, ci) -> str:
    return mean_ci_text({"mean": mean, "ci95": ci})


def markdown(rows: list[dict]) -> str:
    lines = ["| task | model | trained T → eval T | seeds | KL within (bits) | KL beyond (bits) "
             "| within, beyond per seed |", "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r['trained_length']} → {r['eval_length']} | {r['seeds']} | "
                     f"{_pm(r['kl_within'], r['kl_within_ci95'])} | {_pm(r['kl_beyond'], r['kl_beyond_ci95'])} | "
                     f"{r['per_seed_within']}, {r['per_seed_beyond']} |")
    return "\n".join(lines) + "\n"


def plot(found: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for task, _ in found})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, model), e in sorted(found.items()):
            if t != task:
                continue
            by_pos = [_mean([c[i] for c in e["curves"]]) for i in range(len(e["curves"][0]))]
            xs = [i for i, v in enumerate(by_pos) if v is not None]
            ax.plot(xs, [max(by_pos[i], 1e-5) for i in xs], label=f"{model} ({len(e['curves'])} seeds)")
            ax.axvline(e["trained"] - 1.5, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{task}: trained length marked")
        ax.set_xlabel("position t (predicting token t + 1)")
        ax.set_ylabel("KL to the posterior (bits)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[Path("runs/sweeps/lengths")])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or args.folders[0]
    try:
        found, skipped = collect(args.folders)
    except ConfigError as e:  # a folder that is not there; runs of one task and model that are not seeds
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not found:
        print(f"error: no finished run evaluated beyond its training length under "
              f"{', '.join(map(str, args.folders))}", file=sys.stderr)
        raise SystemExit(2)
    rows = summarise(found)
    table = markdown(rows)
    print(table, end="")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "length_generalisation.md", table)
    atomic_write_csv(out / "length_generalisation.csv", rows)
    plot(found, out / "plots" / "length_generalisation.png")
    print(f"wrote {out / 'length_generalisation.md'}, .csv and plots/length_generalisation.png")


if __name__ == "__main__":
    main()
