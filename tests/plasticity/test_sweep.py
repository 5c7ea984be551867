"""`plasticity sweep`: grids and random search, local and submitit executors, skipping finished trials,
failures recorded in the index, the wandb export, config mistakes before any work, deterministic names."""

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import yaml

from plasticity.cli import main
from plasticity.run.config import ConfigError, load_config
from plasticity.sweep.plan import plan, run_name
from plasticity.sweep.resources import minutes, submitit_parameters
from plasticity.sweep.spec import WANDB_KEYS, format_override, load_sweep
from tests.plasticity.processes import children

TINY = ["stream.phases.0.steps=20", "stream.phases.1.steps=10", "eval.every=10", "plots=false"]
BOOM = '''
import os
from plasticity.strategies.base import Strategy


class Boom(Strategy):
    """Fails at the start of the online phase while the flag file exists: a real run-time failure that
    passes validation."""
    name = "boom"

    def on_phase_start(self, module, phase):
        if os.path.exists(os.environ["BOOM_FLAG"]):
            raise RuntimeError("boom: injected failure in on_phase_start")
'''


def write_sweep(path: Path, parameters: dict, method: str = "grid", **extra) -> Path:
    spec = {"command": ["plasticity", "run", "smoke", *TINY, "${args_no_hyphens}"], "method": method,
            "metric": {"name": "final_kl_bits", "goal": "minimize"}, "parameters": parameters, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        yield mp


@pytest.fixture(scope="module")
def grid(tmp_path_factory, env):
    """A 2x2 grid (seed x online lr) with 2 local workers."""
    root = tmp_path_factory.mktemp("grid")
    sweep = write_sweep(root / "grid.yaml", {"seed": {"values": [0, 1]}, "optim.online_lr": {"values": [1e-3, 3e-3]}})
    out = root / "out"
    code = main(["sweep", str(sweep), "--out", str(out), "--workers", "2"])
    return code, sweep, out


def test_grid_sweep_runs_every_trial(grid):
    code, sweep, out = grid
    assert code == 0
    index = json.loads((out / "sweep_index.json").read_text())
    assert index["counts"]["done"] == 4 and index["counts"]["failed"] == 0
    combos = {(t["overrides"]["seed"], t["overrides"]["optim.online_lr"]) for t in index["trials"]}
    assert combos == {(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)}
    for t in index["trials"]:
        assert t["status"] == "done" and t["error"] is None and t["seconds"] > 0
        run_dir = Path(t["run_dir"])
        assert run_dir.parent == out.resolve() and run_dir.name == t["name"]
        assert (run_dir / "summary.json").is_file() and Path(t["log"]).is_file()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == t["overrides"]["seed"]
        assert config["optim"]["online_lr"] == t["overrides"]["optim.online_lr"]
        assert config["trainer"]["threads"] == 1
        assert t["name"] == run_name(config)  # the name is the hash of the config the run recorded


def test_trials_match_a_fresh_run_whatever_their_worker_ran_before(grid, tmp_path):
    """Each of the 2 workers ran 2 trials; every result equals the same config run here, bit for bit."""
    from plasticity.entry import run

    code, sweep, out = grid
    for t in json.loads((out / "sweep_index.json").read_text())["trials"]:
        overrides = [format_override(k, v) for k, v in t["overrides"].items()]
        cfg = load_config("smoke", [*TINY, *overrides, "progress=false", "trainer.threads=1"])
        here = run(cfg, tmp_path / t["name"])
        there = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        for arm in ("frozen", "naive"):
            assert here["arms"][arm]["R_kl_bits"] == there["arms"][arm]["R_kl_bits"], (t["name"], arm)


def test_report_of_the_grid_matches_the_summaries(grid, capsys):
    code, sweep, out = grid
    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    index = json.loads((out / "sweep_index.json").read_text())
    summaries = {}
    for t in index["trials"]:
        summaries.setdefault(t["overrides"]["optim.online_lr"], []).append(
            json.loads((Path(t["run_dir"]) / "summary.json").read_text()))
    rows = {(r["setting"], r["arm"]): r for r in __import__("csv").DictReader((out / "report.csv").open())}
    assert len(rows) == 4  # 2 settings x 2 arms, the seeds pooled
    for lr, runs in summaries.items():
        for arm in ("frozen", "naive"):
            final = [s["arms"][arm]["final_kl_bits"] for s in runs]
            bwt = [s["arms"][arm]["bwt_bits"] for s in runs]
            mean, std = sum(final) / 2, (sum((x - sum(final) / 2) ** 2 for x in final) / 1) ** 0.5
            row = rows[(f"optim.online_lr={lr}", arm)]
            assert row["n"] == "2"
            assert float(row["final_kl_bits_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row["final_kl_bits_std"]) == pytest.approx(std, rel=1e-12, abs=1e-15)
            assert float(row["bwt_bits_mean"]) == pytest.approx(statistics.fmean(bwt), rel=1e-12, abs=1e-15)
            assert f"{mean:.4f} ± {12.706204736174698 * std / 2**0.5:.4f}" in printed  # t_{0.975, 1} s / sqrt(2)
    assert (out / "report.md").is_file()
    assert "optim.online_lr=0.003" in (out / "report.md").read_text()


def test_rerun_skips_finished_trials(grid):
    code, sweep, out = grid
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    dirs = sorted(p.name for p in out.iterdir())
    t0 = time.perf_counter()
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 0
    assert time.perf_counter() - t0 < 20  # validation only: no trial starts
    assert sorted(p.name for p in out.iterdir()) == dirs
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == before
    assert json.loads((out / "sweep_index.json").read_text())["counts"]["done"] == 4


@pytest.mark.parametrize("record", ["running", "none"])
def test_interrupted_trial_resumes_from_its_run_directory(grid, record):
    """A sweep killed mid-trial leaves it `running` in the index; a partial run directory the index has no
    entry for (index lost, or the directory moved in from another sweep's folder) is not known to have
    failed either: the re-run continues both with --resume instead of deleting them."""
    code, sweep, out = grid
    path = out / "sweep_index.json"
    index = json.loads(path.read_text())
    victim = index["trials"][0]
    others = {t["name"]: (Path(t["run_dir"]) / "summary.json").stat().st_mtime_ns for t in index["trials"][1:]}
    summary = Path(victim["run_dir"]) / "summary.json"
    before = json.loads(summary.read_text())
    summary.unlink()
    if record == "running":
        victim["status"] = "running"
    else:
        index["trials"].remove(victim)
    path.write_text(json.dumps(index))
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 0
    after = json.loads(path.read_text())
    assert after["counts"]["done"] == 4
    assert next(t for t in after["trials"] if t["name"] == victim["name"])["resumed"] is True
    assert Path(victim["log"]).read_text().startswith(f"$ plasticity run --resume {victim['run_dir']}")
    assert json.loads(summary.read_text())["arms"] == before["arms"]
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in others} == others


def test_failed_trial_is_recorded_others_finish_and_rerun_retries_only_it(tmp_path, env, capsys):
    """Through submitit's local executor (the Slurm code path: map_array, job polling), then a re-run with
    the local executor once the cause is gone."""
    (tmp_path / "boom_strategy.py").write_text(BOOM)
    flag = tmp_path / "boom.flag"
    flag.write_text("fail")
    env.setenv("BOOM_FLAG", str(flag))
    env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    env.syspath_prepend(str(tmp_path))  # validation imports the strategy in this process too
    sweep = write_sweep(tmp_path / "fail.yaml",
                        {"arms": {"values": [["naive"], {"boom": {"strategy": "boom_strategy:Boom"}}]}})
    out = tmp_path / "out"
    code = main(["sweep", str(sweep), "--out", str(out), "--executor", "slurm", "--cluster", "local",
                 "--workers", "2", "--time", "10"])
    assert code == 1
    assert "RuntimeError: boom" in capsys.readouterr().out
    assert any((out / "submitit").rglob("*_submitted.pkl"))  # the jobs went through submitit
    index = json.loads((out / "sweep_index.json").read_text())
    by_status = {t["status"]: t for t in index["trials"]}
    assert set(by_status) == {"done", "failed"}
    ok, bad = by_status["done"], by_status["failed"]
    assert ok["overrides"] == {"arms": ["naive"]} and (Path(ok["run_dir"]) / "summary.json").is_file()
    assert bad["error"]["type"] == "RuntimeError"
    assert bad["error"]["message"] == "boom: injected failure in on_phase_start"
    assert bad["error"]["log_tail"][-1] == "RuntimeError: boom: injected failure in on_phase_start"
    assert not (Path(bad["run_dir"]) / "summary.json").exists()

    capsys.readouterr()
    assert main(["report", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert f"failed trial {bad['name']}" in printed and "boom: injected failure" in printed
    assert bad["name"] in (out / "report.md").read_text()

    ok_mtime = (Path(ok["run_dir"]) / "summary.json").stat().st_mtime_ns
    ok_log = Path(ok["log"]).stat().st_mtime_ns
    flag.unlink()  # the cause is fixed: the re-run retries the failed trial only
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 0
    index = json.loads((out / "sweep_index.json").read_text())
    assert index["counts"] == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    assert (Path(ok["run_dir"]) / "summary.json").stat().st_mtime_ns == ok_mtime
    assert Path(ok["log"]).stat().st_mtime_ns == ok_log
    assert (Path(bad["run_dir"]) / "summary.json").is_file()


def test_emitted_wandb_sweep_parses_and_wandb_args_resolve_to_the_same_runs(tmp_path, capsys):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"seed": {"values": [0, 1]}, "optim.online_lr": {"values": [1e-5, 3e-3]},
              "arms": {"values": [["frozen"], ["naive"]]}, "eval.every": {"value": 10}}
    src = write_sweep(tmp_path / "grid.yaml", params, slurm={"partition": "cpu"})
    assert main(["sweep", str(src), "--emit-wandb", str(tmp_path / "wb")]) == 0
    emitted = yaml.safe_load((tmp_path / "wb" / "grid.yaml").read_text())
    assert set(emitted) <= set(WANDB_KEYS)  # wandb's schema has additionalProperties: false
    assert emitted["method"] == "grid" and emitted["metric"] == {"name": "final_kl_bits", "goal": "minimize"}
    assert emitted["parameters"] == params
    command = emitted["command"]
    assert command[:3] == ["plasticity", "run", "smoke"] and command[-1] == "${args_no_hyphens}"
    assert "run.root=runs/sweeps/grid" in command
    readme = (tmp_path / "wb" / "README.md").read_text()
    assert "wandb sweep" in readme and "wandb agent" in readme
    # What a wandb agent would run for each grid point names the same config as our own trial.
    spec = load_sweep(src)
    trials, _ = plan(spec, tmp_path / "runs")
    for trial in trials:
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in trial.params.items()}})
        cfg = load_config("smoke", [*spec.base_overrides, *args["args_no_hyphens"]])
        assert run_name(cfg) == trial.name


def test_random_search_is_seeded_capped_and_in_range(tmp_path):
    params = {"seed": {"values": [0, 1, 2]}, "optim.online_lr": {"distribution": "log_uniform_values",
                                                                  "min": 1e-4, "max": 1e-2},
              "optim.weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
              "model.d_ff": {"distribution": "q_uniform", "min": 32, "max": 128, "q": 32}}
    spec = load_sweep(write_sweep(tmp_path / "r.yaml", params, method="random", run_cap=6))
    draws = spec.trials(seed=3)
    assert len(draws) == 6 and draws == spec.trials(seed=3) and draws != spec.trials(seed=4)
    for d in draws:
        assert 1e-4 <= d["optim.online_lr"] <= 1e-2 and 0.0 <= d["optim.weight_decay"] <= 0.1
        assert d["model.d_ff"] in (32, 64, 96, 128) and isinstance(d["model.d_ff"], int)
    trials, duplicates = plan(spec, tmp_path / "runs", seed=3)
    assert len(trials) + duplicates == 6


def test_run_names_are_deterministic():
    base = load_config("smoke", ["seed=0"])
    same = load_config("smoke", ["seed=0", "run.dir=/elsewhere", "progress=false", "trainer.threads=3",
                                 "plots=false", "logger.wandb.mode=disabled"])
    assert run_name(base) == run_name(same) == run_name(load_config("smoke", ["seed=0"]))
    assert run_name(load_config("smoke", ["seed=1"])) != run_name(base)
    assert run_name(load_config("smoke", ["optim.online_lr=0.002"])) != run_name(base)
    assert run_name(base).startswith("smoke-") and len(run_name(base)) == len("smoke-") + 10


BAD_SWEEPS = [
    # (sweep file text, words the one-line error must contain)
    ("command: [plasticity, run, smoke, '${args_no_hyphens}']\nmethod: grid\n"
     "parameters: {seed: {values: [0, 1]}, model.n_layer: {values: [1, 2]}}\n",
     ["model.n_layer", "Did you mean 'n_layers'"]),
    ("experiment: smoke\nmethod: grid\nparameters: {optim.lr: {values: [0.001, -1.0]}}\n", ["optim.lr", "> 0"]),
    ("experiment: smoke\nmethod: grid\nparameters: {seed: {values: [0, 1]}\n", ["malformed YAML"]),
    ("experiment: smoke\nmethod: grid\nparamters: {seed: {values: [0]}}\n", ["paramters", "Did you mean 'parameters'"]),
    ("experiment: smoke\nmethod: random\nparameters: {seed: {values: [0, 1]}}\n", ["run_cap"]),
    ("experiment: smoke\nmethod: grid\nparameters: {optim.lr: {distribution: log_uniform_values, min: 0.1, "
     "max: 1}}\n", ["optim.lr", "method: random"]),
    ("command: [plasticity, run, smoke]\nmethod: grid\nparameters: {seed: {values: [0]}}\n", ["args_no_hyphens"]),
    ("experiment: smok\nmethod: grid\nparameters: {seed: {values: [0]}}\n", ["smok", "Did you mean 'smoke'"]),
    ("experiment: smoke\nmethod: grid\nslurm: {partitoin: gpu}\nparameters: {seed: {values: [0]}}\n",
     ["slurm.partitoin", "partition"]),
]


@pytest.mark.parametrize("text,words", BAD_SWEEPS, ids=[w[0] for _, w in BAD_SWEEPS])
def test_sweep_mistakes_exit_2_with_one_line_and_write_nothing(text, words, tmp_path, capsys):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def test_override_text_round_trips():
    for key, value in [("optim.lr", 1e-05), ("arms", ["frozen", "naive"]), ("name", "a b"), ("x", None),
                       ("arms", {"boom": {"strategy": "pkg.mod:Cls"}}), ("flag", True), ("s", "1e-3")]:
        text = format_override(key, value)
        assert yaml.safe_load(text.split("=", 1)[1]) == value, text
    with pytest.raises(ConfigError):
        format_override("x", object())


def test_slurm_resources_map_to_submitit():
    params = submitit_parameters({"partition": "gpu", "time": "1-02:30:00", "cpus_per_task": 4, "mem_gb": 16,
                                  "gpus_per_node": 1, "setup": ["module load cuda"]}, 8, "sweep-x")
    assert params == {"name": "sweep-x", "slurm_array_parallelism": 8, "timeout_min": 1590,
                      "slurm_partition": "gpu", "cpus_per_task": 4, "mem_gb": 16, "gpus_per_node": 1,
                      "slurm_setup": ["module load cuda"]}
    assert minutes(90) == 90 and minutes("01:30:00") == 90 and minutes("45") == 45
    with pytest.raises(ConfigError, match="mem_gb"):
        submitit_parameters({"mem_gb": "lots"}, 1, "x")


def test_a_run_with_a_diverged_arm_is_done_and_says_so(tmp_path, env, capsys):
    """Divergence is a result, not a crash: the trial is done, its index entry and `report` name the arm."""
    sweep = write_sweep(tmp_path / "div.yaml", {"optim.online_lr": {"values": [1e-3, 1e30]}})
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    index = json.loads((out / "sweep_index.json").read_text())
    assert index["counts"]["done"] == 2 and index["counts"]["failed"] == 0
    by_lr = {t["overrides"]["optim.online_lr"]: t for t in index["trials"]}
    assert "diverged" not in by_lr[1e-3]
    bad = by_lr[1e30]
    assert set(bad["diverged"]) == {"naive"}  # the frozen arm does not train, so cannot diverge
    assert "non-finite loss at step" in bad["diverged"]["naive"] and "phase 1" in bad["diverged"]["naive"]
    assert f"done with a diverged arm {bad['name']}: arm naive" in printed
    summary = json.loads((Path(bad["run_dir"]) / "summary.json").read_text())
    assert summary["arms"]["naive"]["final_kl_bits"] is None and summary["arms"]["frozen"]["final_kl_bits"] > 0

    assert main(["report", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "diverged arm naive in" in printed and bad["name"] in printed
    assert "## Diverged arms" in (out / "report.md").read_text()
    assert main(["sweep", str(sweep), "--out", str(out)]) == 0  # done stays done: nothing re-runs
    assert json.loads((out / "sweep_index.json").read_text())["trials"][1]["diverged"] == bad["diverged"]


@pytest.mark.slow
def test_a_killed_trial_is_recorded_failed_then_resumed_to_the_same_result(tmp_path):
    """SIGKILL to the worker process mid-trial (the OOM killer, a node going away): the index records the
    trial as failed with the reason; the re-run continues it from its last checkpoint, bit for bit."""
    import signal
    import subprocess
    import sys

    from plasticity.entry import run

    overrides = ["run.checkpoint_every=20", "eval.every=10", "plots=false"]
    spec = {"command": ["plasticity", "run", "smoke", *overrides, "${args_no_hyphens}"], "method": "grid",
            "parameters": {"seed": {"values": [0]}}}
    sweep = tmp_path / "kill.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "plasticity.cli", "sweep", str(sweep), "--out", str(out),
                             "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, victim = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and victim is None:
        ckpt = list(out.glob("*/checkpoints/pretrained-last.pt"))
        if ckpt and len((ckpt[0].parents[1] / "metrics.jsonl").read_text().splitlines()) >= 8:
            victim = ckpt[0].parents[1]
        time.sleep(0.05)
    assert victim is not None, "the trial finished (or never started) before it could be killed"
    (worker,) = children(proc.pid)
    os.kill(worker, signal.SIGKILL)
    printed = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, printed
    trial = json.loads((out / "sweep_index.json").read_text())["trials"][0]
    assert trial["status"] == "failed" and trial["error"]["type"] == "WorkerDied"
    assert "status -9" in trial["error"]["message"]
    assert not (victim / "summary.json").exists()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        assert main(["sweep", str(sweep), "--out", str(out), "--workers", "1"]) == 0
    trial = json.loads((out / "sweep_index.json").read_text())["trials"][0]
    assert trial["status"] == "done" and trial["resumed"] is True and "previous_error" not in trial
    assert Path(trial["log"]).read_text().startswith(f"$ plasticity run --resume {victim}")
    reference = run(load_config("smoke", [*overrides, "seed=0", "progress=false", "trainer.threads=1"]),
                    tmp_path / "reference")
    assert json.loads((victim / "summary.json").read_text())["arms"] == reference["arms"]
    assert (victim / "metrics.jsonl").read_text() == (tmp_path / "reference" / "metrics.jsonl").read_text()


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "configs" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_sweep_validates_every_trial(path, tmp_path, capsys):
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed and all("[to run]" in line for line in listed)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
