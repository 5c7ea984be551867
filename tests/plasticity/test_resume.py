"""Resume: a run killed (SIGKILL) or stopped (SIGTERM) at a random step and resumed ends with the same
summary and metrics as an uninterrupted run, bit for bit on CPU."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

OVERRIDES = ["stream.phases.0.steps=300", "stream.phases.1.steps=200", "run.checkpoint_every=25",
             "eval.every=20", "arms=[frozen,naive]", "progress=false", "trainer.threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "plasticity.cli", "run", *args]


def _metrics(path) -> list[str]:
    return (path / "metrics.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_cli("smoke", *OVERRIDES, f"run.dir={path}"), env=ENV, check=True, capture_output=True,
                   timeout=300)
    return path


def _start_and_interrupt(path, sig: int, min_rows: int) -> subprocess.Popen:
    proc = subprocess.Popen(_cli("smoke", *OVERRIDES, f"run.dir={path}"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = path / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= min_rows:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(reference, tmp_path, seed):
    # rows: 2 per evaluation (two eval phases); pretraining has 16 evaluations, the naive arm 10
    min_rows = random.Random(seed).randrange(4, 44)
    proc = _start_and_interrupt(tmp_path, signal.SIGKILL, min_rows)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists()
    done = subprocess.run(_cli("--resume", str(tmp_path)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((tmp_path / "summary.json").read_text())
    assert a["arms"] == b["arms"]
    assert _metrics(reference) == _metrics(tmp_path)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_143(reference, tmp_path):
    proc = _start_and_interrupt(tmp_path, signal.SIGTERM, 10)
    assert proc.returncode == 143, proc.stderr.read()
    assert "--resume" in proc.stderr.read()
    assert list((tmp_path / "checkpoints").glob("*-last.pt"))
    done = subprocess.run(_cli("--resume", str(tmp_path)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((reference / "summary.json").read_text())["arms"] == \
        json.loads((tmp_path / "summary.json").read_text())["arms"]
    assert _metrics(reference) == _metrics(tmp_path)


def test_resume_tolerates_a_truncated_last_metrics_line(tmp_path):
    from plasticity.rundir import RunDir

    rd = RunDir(tmp_path)
    rd.append_metrics([{"arm": "a", "step": 1, "kl_bits": 0.5}])
    with open(rd.metrics_path, "a") as f:
        f.write('{"arm": "a", "step": 2, "kl_')  # power loss mid-write
    assert rd.metrics() == [{"arm": "a", "step": 1, "kl_bits": 0.5}]


def test_resume_rejects_overrides_and_non_run_dirs(tmp_path, capsys):
    from plasticity.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["run", "smoke", "seed=1", "--resume", str(tmp_path)]) == 2
    assert "run directory only" in capsys.readouterr().err
