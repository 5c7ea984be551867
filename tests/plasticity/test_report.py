"""`plasticity report`: rows (experiment, setting, arm) with mean ± 95% CI over seeds, from run directories
alone — synthetic ones here (no training), with failures, crashes and truncated files."""

import csv
import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from plasticity.cli import main
from plasticity.results.report import arm_metrics


def make_run(path: Path, seed: int, lr: float, arms: dict[str, list[list[float]]], summary: bool = True,
             name: str = "exp", fresh_gap: dict | None = None) -> Path:
    path.mkdir(parents=True)
    config = {"name": name, "description": "synthetic", "seed": seed, "optim": {"online_lr": lr, "lr": 0.01},
              "arms": {arm: {"strategy": arm} for arm in arms}, "run": {"dir": str(path)},
              "trainer": {"threads": 1}, "git_commit": f"commit{seed}"}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.jsonl").write_text('{"arm": "pretrain", "step": 0, "kl_bits": 1.0}\n{"arm": "pre')  # torn
    if not summary:
        return path
    result = {}
    for arm, R in arms.items():
        last = len(R) - 1
        result[arm] = {
            "strategy": arm, "R_kl_bits": R, "final_kl_bits": sum(R[-1]) / len(R[-1]),
            "forgetting_bits": [R[last][j] - min(R[i][j] for i in range(j, last + 1)) for j in range(last + 1)],
            "bwt_bits": sum(R[last][j] - R[j][j] for j in range(last)) / last,
            "auc_kl": [0.5, R[1][1] + 0.1, R[2][2] + 0.2],
        }
        if fresh_gap is not None:
            result[arm]["plasticity_gap_bits"] = [None, *fresh_gap[arm]]
    if fresh_gap is not None:
        result["fresh"] = {"strategy": "fresh", "R_kl_diag_bits": {"1": 0.1}}
    (path / "summary.json").write_text(json.dumps({"name": name, "phases": ["a", "b", "c"], "arms": result}))
    return path


def R(x: float) -> list[list[float]]:
    return [[0.1, 2.0, 3.0], [0.1 + x, 0.2, 3.0], [0.2 + x, 0.3 + x, 0.05 + x / 10]]


@pytest.fixture
def runs(tmp_path):
    """Sweep-like folder: lr 0.001 x seeds 0,1,2 and lr 0.003 x seed 0; a crashed run; a failed trial."""
    root = tmp_path / "sweep"
    xs = {(0.001, 0): 0.5, (0.001, 1): 0.7, (0.001, 2): 0.9, (0.003, 0): 0.2}
    for (lr, seed), x in xs.items():
        make_run(root / f"run-{lr}-{seed}", seed, lr, {"frozen": R(0.0), "naive": R(x)},
                 fresh_gap={"frozen": [0.3, 0.4], "naive": [x, 2 * x]})
    make_run(root / "crashed", 5, 0.001, {"naive": R(0.1)}, summary=False)
    (root / "failed-run").mkdir()  # the failed trial's partial run directory
    (root / "failed-run" / "config.yaml").write_text(yaml.safe_dump({"name": "exp", "seed": 9}))
    index = {"trials": [
        {"name": "failed-run", "overrides": {"seed": 9}, "status": "failed", "run_dir": str(root / "failed-run"),
         "log": str(root / "logs" / "failed-run.log"),
         "error": {"type": "RuntimeError", "message": "boom at phase 1", "log_tail": ["RuntimeError: boom"]}},
        {"name": "ok", "overrides": {"seed": 0}, "status": "done", "run_dir": str(root / "run-0.001-0"), "error": None},
    ]}
    (root / "sweep_index.json").write_text(json.dumps(index))
    return root, xs


def test_table_is_mean_and_95_percent_interval_over_seeds(runs, tmp_path, capsys):
    root, xs = runs
    assert main(["report", str(root), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    rows = {(r["setting"], r["arm"]): r for r in csv.DictReader((root / "report.csv").open())}
    assert set(rows) == {(f"optim.online_lr={lr}", arm) for lr in (0.001, 0.003) for arm in ("frozen", "naive")}
    seeds = [xs[(0.001, s)] for s in (0, 1, 2)]
    # naive, lr 0.001: R(x) by hand — final = mean of the last row, BWT = mean_j<2 (R[2][j] - R[j][j]),
    # forgetting = mean_j<2 (R[2][j] - min_i>=j R[i][j]), auc = mean of phases 1..2, gap = mean of [x, 2x]
    final = [((0.2 + x) + (0.3 + x) + (0.05 + x / 10)) / 3 for x in seeds]
    bwt = [((0.2 + x - 0.1) + (0.3 + x - 0.2)) / 2 for x in seeds]
    forgetting = [((0.2 + x) - 0.1 + (0.3 + x) - 0.2) / 2 for x in seeds]
    auc = [((0.2 + 0.1) + (0.05 + x / 10 + 0.2)) / 2 for x in seeds]
    gap = [1.5 * x for x in seeds]
    row = rows[("optim.online_lr=0.001", "naive")]
    assert row["n"] == "3"
    for metric, values in [("final_kl_bits", final), ("bwt_bits", bwt), ("forgetting_bits", forgetting),
                           ("auc_kl_bits", auc), ("plasticity_gap_bits", gap)]:
        mean = sum(values) / 3
        std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
        assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-12), metric
        assert float(row[f"{metric}_std"]) == pytest.approx(std, rel=1e-9), metric
        ci = 4.302652729749464 * std / 3**0.5  # t_{0.975, 2} (scipy.stats.t.ppf) · s / sqrt(3)
        assert float(row[f"{metric}_ci95"]) == pytest.approx(ci, rel=1e-9), metric
        assert f"{mean:.4f} ± {ci:.4f}" in printed, metric
    single = rows[("optim.online_lr=0.003", "naive")]
    assert single["n"] == "1" and single["final_kl_bits_std"] == ""  # no std from one seed
    assert ("-", "fresh") not in rows and not any(arm == "fresh" for _, arm in rows)
    md = (root / "report.md").read_text()
    assert "| exp | optim.online_lr=0.001 | naive | 3 |" in md
    assert "plasticity_gap_bits" in md


def test_failed_and_incomplete_runs_are_listed(runs, capsys):
    root, _ = runs
    assert main(["report", str(root), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "failed trial failed-run (seed=9): RuntimeError: boom at phase 1" in printed
    assert f"incomplete run {root / 'crashed'}" in printed.replace("\n", "")
    assert "incomplete run " + str(root / "failed-run") not in printed  # a failed trial is not also incomplete
    md = (root / "report.md").read_text()
    assert "## Failed trials" in md and "boom at phase 1" in md
    assert "## Incomplete runs" in md and "crashed" in md


def test_several_dirs_single_run_dir_and_out(runs, tmp_path, capsys):
    root, _ = runs
    other = make_run(tmp_path / "lone", 0, 0.01, {"naive": R(0.3)}, name="other")
    out = tmp_path / "rep"
    assert main(["report", str(other), str(root), "--out", str(out), "--no-plots"]) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert {r["experiment"] for r in rows} == {"exp", "other"}
    assert [r["setting"] for r in rows if r["experiment"] == "other"] == ["-"]  # nothing varies
    assert not (root / "report.csv").exists()


def test_missing_dir_exits_2_and_empty_dir_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no run directories" in capsys.readouterr().out


def test_plots_are_called_or_skipped_with_a_note(runs, monkeypatch, capsys):
    root, _ = runs
    calls = []
    fake = types.ModuleType("plasticity.results.plots")
    fake.make_plots = lambda run_dir: calls.append(("run", Path(run_dir).name)) or []
    fake_sweep = types.ModuleType("plasticity.results.sweep_plots")

    def plot_sweep(run_dirs, out_dir):
        calls.append(("sweep", len(run_dirs)))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "sweep_final_kl.png").write_bytes(b"png")
        return [Path(out_dir) / "sweep_final_kl.png"]

    fake_sweep.plot_sweep = plot_sweep
    monkeypatch.setitem(sys.modules, "plasticity.results.plots", fake)
    monkeypatch.setitem(sys.modules, "plasticity.results.sweep_plots", fake_sweep)
    assert main(["report", str(root)]) == 0
    assert ("sweep", 4) in calls and sum(kind == "run" for kind, _ in calls) == 4  # runs without plots/
    assert "![sweep_final_kl](plots/sweep_final_kl.png)" in (root / "report.md").read_text()
    monkeypatch.setitem(sys.modules, "plasticity.results.plots", None)  # not importable
    capsys.readouterr()
    assert main(["report", str(root)]) == 0
    assert "plots skipped" in capsys.readouterr().out


def test_arm_metrics_of_a_single_phase_run():
    m = arm_metrics({"R_kl_bits": [[0.2]], "final_kl_bits": 0.2, "bwt_bits": 0.0, "forgetting_bits": [0.0],
                     "auc_kl": [0.4]})
    assert m == {"final_kl_bits": 0.2, "bwt_bits": None, "forgetting_bits": None, "auc_kl_bits": 0.4,
                 "plasticity_gap_bits": None, "regret_bits_per_token": None, "final_kl_general_bits": None}


def test_setting_labels_name_what_differs_from_the_common_value():
    from plasticity.results.runs import flatten, setting_labels

    base = {"optim.lr": "0.001", "model.layer_norm": "true"}
    settings = [base, {**base, "optim.lr": "0.003"}, {**base, "model.layer_norm": "false"}, dict(base)]
    assert setting_labels(settings) == ["-", "optim.lr=0.003", "model.layer_norm=False", "-"]
    assert setting_labels([{"a": "1"}, {"a": "2"}]) == ["a=1", "a=2"]  # no shared value: every one named
    assert setting_labels([{"a": '"x"'}, {}]) == ["a=x", "a=unset"]
    # a grid: no value is more common than another, so every setting names its own; a block whose name
    # varies is named by it, and its other keys (which follow from the choice) are not listed
    grid = [{"model.name": f'"{m}"', "model.hidden": h, "model.match.name": f'"{m}"', "stream.phases.0.name": f'"{t}"',
             "optim.lr": "0.001"} for m, h in (("lstm", "79"), ("mlp", "90")) for t in ("recall", "hmm")]
    assert setting_labels(grid) == ["model=lstm, stream.phases.0=recall", "model=lstm, stream.phases.0=hmm",
                                    "model=mlp, stream.phases.0=recall", "model=mlp, stream.phases.0=hmm"]
    # an unfinished grid: hmm has a row less, yet recall is no baseline; every row still names its stream
    partial = grid + [{**grid[0], "model.name": '"gru"', "model.match.name": '"gru"'}]
    assert setting_labels(partial)[-1] == "model=gru, stream.phases.0=recall"
    assert setting_labels(partial)[0] == "model=lstm, stream.phases.0=recall"
    # a one-at-a-time sweep: the baseline's value is shared, every other value held once
    oat = [base, {**base, "optim.lr": "0.003"}, {**base, "optim.lr": "0.01"}, {**base, "model.layer_norm": "false"}]
    assert setting_labels(oat) == ["-", "optim.lr=0.003", "optim.lr=0.01", "model.layer_norm=False"]
    assert flatten({"stream": {"phases": [{"tasks": 4}, {"tasks": 1}]}}) == {
        "stream.phases.0.tasks": "4", "stream.phases.1.tasks": "1"}


def test_plasticity_decline_compares_the_first_and_the_last_phases_over_seeds(runs, tmp_path):
    import math
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "plasticity_decline.py"
    out = tmp_path / "decline.json"
    root = runs[0]
    done = subprocess.run([sys.executable, str(script), str(root), "--figures", "end-of-phase KL,gap to fresh",
                           "--json", str(out)], capture_output=True, text=True, check=True)
    assert "| setting | seeds | end-of-phase KL: first → last (Δ) |" in done.stdout
    rows = {tuple(r["seeds"]): r["figures"] for r in json.loads(out.read_text())}
    assert set(rows) == {("0", "1", "2"), ("0",)}  # the crashed run and the failed trial have no summary
    # three phases: the first fifth of the online phases is phase 1, the last is phase 2; by hand from R(x)
    kl = rows[("0", "1", "2")]["end-of-phase KL"]
    assert kl["first"]["mean"] == pytest.approx(0.2) and kl["last"]["mean"] == pytest.approx(0.05 + 0.07)
    assert kl["delta"]["mean"] == pytest.approx(-0.08)
    assert kl["delta"]["ci95"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)  # t(0.975, 2)
    gap = rows[("0", "1", "2")]["gap to fresh"]
    assert gap["delta"]["mean"] == pytest.approx(0.7) and gap["delta"]["std"] == pytest.approx(0.2)
    assert rows[("0",)]["end-of-phase KL"]["delta"]["ci95"] is None  # one seed: no interval
    bad = subprocess.run([sys.executable, str(script), str(root), "--fraction", "0.7"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--fraction=0.7: must be in (0, 0.5]" in bad.stderr


def test_differing_keys_are_those_that_stop_runs_being_seeds_of_one_setting():
    from plasticity.results.runs import differing_keys

    a = {"seed": 0, "model": {"name": "lstm", "hidden": 79}, "optim": {"lr": 0.001}, "run": {"dir": "x"}}
    b = {"seed": 1, "model": {"name": "mlp", "hidden": 90}, "optim": {"lr": 0.001}, "run": {"dir": "y"}}
    assert differing_keys([a, b]) == ["model.hidden", "model.name"]  # seed and paths are not a setting
    assert differing_keys([a, b], ignore=("model",)) == []
    c = {**b, "optim": {"lr": 0.003}}
    assert differing_keys([a, c], ignore=("model",)) == ["optim.lr"]
    assert differing_keys([a, c], ignore=("model", "optim.lr")) == []


def test_rows_order_numbers_as_numbers():
    from plasticity.results.report import natural_key

    labels = ["tasks=1024", "tasks=16", "-", "tasks=4", "lr=0.001", "lr=3e-4", "tasks=1"]
    assert sorted(labels, key=natural_key) == ["-", "lr=3e-4", "lr=0.001", "tasks=1", "tasks=4", "tasks=16",
                                               "tasks=1024"]
