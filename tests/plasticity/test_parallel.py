"""Units of work in parallel (trainer.workers) and seeds as an axis: results bit-identical to running the
units one after another, a failing or diverging unit stops alone, a killed parent leaves no worker behind
and --resume finishes the run identically, and the seeds' aggregate is the mean and Student-t interval of
their summaries."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasticity.cli import main
from plasticity.entry import run
from plasticity.run.config import load_config
from tests.plasticity.processes import alive, children

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _phase(name: str, n_symbols: int, steps: int) -> dict:
    return {"name": name, "family": "dirichlet", "params": {"n_symbols": n_symbols, "alpha": 1.0, "length": 12},
            "steps": steps}


STREAM = {"batch_size": 16, "eval_size": 64,
          "phases": [_phase("pretrain", 4, 40), _phase("second", 6, 30), _phase("third", 5, 30)]}
ARMS = {"naive": {"strategy": "naive"}, "replay": {"strategy": "replay", "buffer_size": 64},
        "frozen": {"strategy": "frozen"}, "l2_init": {"strategy": "l2_init"}}
TINY = ["progress=false", "plots=false", "trainer.threads=1", "eval.every=10", "fresh=true",
        "model.d_model=16", "model.d_ff=32", "model.n_heads=2", f"stream={json.dumps(STREAM)}"]


def _rows(path: Path) -> list[str]:
    return sorted((path / "metrics.jsonl").read_text().splitlines())


def _summary(path: Path) -> dict:
    s = json.loads((path / "summary.json").read_text())
    s.pop("timing")
    return s


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sequential")
    run(load_config("smoke", [*TINY, f"arms={json.dumps(ARMS)}", "trainer.workers=1"]), path)
    return path


def test_two_workers_give_the_sequential_run_bit_for_bit(sequential, tmp_path):
    summary = run(load_config("smoke", [*TINY, f"arms={json.dumps(ARMS)}", "trainer.workers=2"]), tmp_path)
    assert summary["timing"]["workers"] == 2
    assert _summary(tmp_path) == _summary(sequential)
    assert _rows(tmp_path) == _rows(sequential)  # every row whole: each parses, none torn or interleaved
    assert all(json.loads(line)["arm"] for line in _rows(tmp_path))
    for unit in ("pretrained", "naive", "replay", "frozen", "l2_init", "fresh@1", "fresh@2"):
        assert (tmp_path / "checkpoints" / f"{unit}.pt").is_file()


def test_auto_uses_the_cores_this_process_may_use(monkeypatch):
    from plasticity.run.build import build
    from plasticity.run.experiment import parallel_width, resolve_workers

    cfg = load_config("smoke", [*TINY, f"arms={json.dumps(ARMS)}", "trainer.workers=auto"])
    built = build(cfg)
    assert parallel_width(built) == 3 + 2  # naive, replay, l2_init (frozen only evaluates) + 2 fresh learners
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert resolve_workers(cfg, 5) == 5 and resolve_workers(cfg, 20) == 8
    cfg.trainer.threads = 2
    assert resolve_workers(cfg, 20) == 4
    cfg.trainer.workers = 3
    assert resolve_workers(cfg, 20) == 3 and resolve_workers(cfg, 2) == 2


def test_a_diverging_a_crashing_and_a_killed_unit_stop_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(HERE))  # the workers import the strategies by path, as a user's own
    arms = {"naive": {"strategy": "naive"}, "explode": {"strategy": "helpers_diverge:Explode", "at": 55},
            "crash": {"strategy": "helpers_diverge:Crash", "at": 60},
            "vanish": {"strategy": "helpers_diverge:Vanish", "at": 50}}  # its worker dies without a word
    code = main(["run", "smoke", *TINY, f"arms={json.dumps(arms)}", "trainer.workers=2", f"run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1
    assert ("2 units failed (crash: RuntimeError: crash at step 60; vanish: its worker process ended with status 9 "
            "(killed: out of memory?))") in err.splitlines()[-1]
    assert "RuntimeError: crash at step 60" in err  # its traceback, from the worker
    for unit in ("pretrained", "naive", "explode", "fresh@1", "fresh@2"):  # the others finished
        assert (tmp_path / "checkpoints" / f"{unit}.pt").is_file(), unit
    assert not (tmp_path / "summary.json").exists()  # the run is not complete
    # The divergence is a result; the crash is rerun by --resume (and crashes again, alone).
    assert main(["run", "--resume", str(tmp_path)]) == 1
    assert "crash at step 60" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_a_killed_parent_leaves_no_worker_and_resume_finishes_identically(sequential, tmp_path, sig):
    path = tmp_path / "run"
    args = [sys.executable, "-m", "plasticity.cli", "run", "smoke", *TINY, f"arms={json.dumps(ARMS)}",
            "trainer.workers=2", f"run.dir={path}", "run.checkpoint_every=10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    # stderr to a file, not a pipe: the workers share it, and a pipe nobody reads until the end blocks every
    # writer once 64 KiB of warnings fill it, which hangs the parent the test is waiting for
    with open(tmp_path / "stderr.txt", "w+") as err:
        parent = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.time() + 120
        workers: set[int] = set()
        arms = [f"{arm}-last.pt" for arm in ARMS]
        while time.time() < deadline:  # until an arm has checkpointed in the middle of its phases
            workers |= children(parent.pid)
            if any((path / "checkpoints" / name).exists() for name in arms):
                break
            time.sleep(0.05)
        workers |= children(parent.pid)
        assert len(workers) >= 2, "the workers never started"
        parent.send_signal(sig)
        parent.wait(timeout=120)  # the parent joins each stopped worker for up to 30 s before killing it
        if sig == signal.SIGTERM:
            err.seek(0)
            assert parent.returncode == 143, err.read()[-2000:]
    gone = time.time() + 60
    while any(alive(w) for w in workers) and time.time() < gone:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a worker outlived its parent"
    assert not (path / "summary.json").exists()
    done = subprocess.run([sys.executable, "-m", "plasticity.cli", "run", "--resume", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _summary(path) == _summary(sequential)
    assert _rows(path) == _rows(sequential)


def test_seeds_run_in_one_parent_directory_with_an_aggregate(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("seeds")
    agg = run(load_config("smoke", [*TINY, "arms=[frozen,naive]", "seeds=[0,1]", "trainer.workers=2",
                                    "fresh=false"]), tmp_path)
    summaries = {s: json.loads((tmp_path / f"seed_{s}" / "summary.json").read_text()) for s in (0, 1)}
    assert agg["seeds"] == [0, 1] and json.loads((tmp_path / "aggregate.json").read_text())["seeds"] == [0, 1]
    t = 12.706204736174698  # t_{0.975, 1}
    for arm in ("frozen", "naive"):
        for key in ("final_kl_bits", "bwt_bits"):
            a, b = (summaries[s]["arms"][arm][key] for s in (0, 1))
            stats = agg["arms"][arm][key]
            assert stats["mean"] == pytest.approx((a + b) / 2, rel=1e-12)
            assert stats["ci95"] == pytest.approx(t * abs(a - b) / math.sqrt(2) / math.sqrt(2), rel=1e-9)
            assert stats["n"] == 2 and stats["values"] == [a, b]
        R = [summaries[s]["arms"][arm]["R_kl_bits"] for s in (0, 1)]
        cell = agg["arms"][arm]["R_kl_bits"][2][1]
        assert cell["mean"] == pytest.approx((R[0][2][1] + R[1][2][1]) / 2, rel=1e-12)
    # each seed's run is the single run at that seed
    single = tmp_path_factory.mktemp("single")
    run(load_config("smoke", [*TINY, "arms=[frozen,naive]", "seed=1", "trainer.workers=1", "fresh=false"]), single)
    assert _summary(single) == _summary(tmp_path / "seed_1") and _rows(single) == _rows(tmp_path / "seed_1")
    # the report pools the seeds as one setting
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    rows = (tmp_path / "report.csv").read_text().splitlines()
    assert any(",naive,2," in r for r in rows) and not any(",naive,1," in r for r in rows)
