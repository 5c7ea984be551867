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
import torch

from tests.plasticity.processes import children

OVERRIDES = ["stream.phases.0.steps=300", "stream.phases.1.steps=200", "run.checkpoint_every=25",
             "eval.every=20", "arms=[frozen,naive]", "progress=false", "trainer.threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "plasticity.cli", "run", *args]


def _metrics(path) -> list[str]:
    return (path / "metrics.jsonl").read_text().splitlines()


def _steps(path) -> dict[str, str]:
    """The per-step records of every unit: one line per step, none missing, none twice."""
    return {p.name: p.read_text() for p in sorted((path / "steps").glob("*.csv"))}


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
    assert _steps(reference) == _steps(tmp_path) and set(_steps(tmp_path)) == {"pretrained.csv", "frozen.csv",
                                                                               "naive.csv"}
    steps = [int(line.split(",")[0]) for line in _steps(tmp_path)["naive.csv"].splitlines()[1:]]
    assert steps == list(range(300, 500))  # the arm's every step, once


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


def test_sigterm_right_after_the_steps_stop_check_still_checkpoints_at_the_next_step(tmp_path, monkeypatch):
    """The signal lands after the Checkpointer has read the stop flag for this step: the stop belongs to the
    next step. (Lightning's own SIGTERM handler, left installed, raised its SIGTERMException, a SystemExit, at
    the end of this step instead: no checkpoint, and a pool worker died without reporting its unit.)"""
    import plasticity.run.work_units as work_units
    from plasticity.run.build import build
    from plasticity.run.config import load_config
    from plasticity.run.experiment import Experiment
    from plasticity.train.checkpointing import Checkpointer
    from plasticity.train.stopping import Preempted

    class SignalAfterTheCheck(Checkpointer):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            if pl_module.stream_step == 7:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(work_units, "Checkpointer", SignalAfterTheCheck)
    cfg = load_config("smoke", ["progress=false", "plots=false", "trainer.threads=1", "arms=[naive]", "fresh=false",
                                "model.d_model=16", "model.d_ff=32", "model.n_heads=2", "stream.phases.0.steps=20",
                                "stream.phases.1.steps=10", "run.checkpoint_every=0"])
    with pytest.raises(Preempted, match="SIGTERM at step 8"):
        Experiment(build(cfg), tmp_path).run()
    assert torch.load(tmp_path / "checkpoints" / "pretrained-last.pt", weights_only=True)["stream_step"] == 8


def test_resume_tolerates_a_truncated_last_metrics_line(tmp_path):
    from plasticity.run.rundir import RunDir

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


# ---------------------------------------------------------------- every strategy, interrupted in process
# A three-phase stream, so that what a phase end leaves behind (EWC's Fisher, SI's Ω, LwF's teacher) is
# used after the interruption. Arm steps: phase 1 is [40, 100), phase 2 [100, 160). Each arm is stopped
# once, after its mechanism has acted: in the middle of phase 2 between checkpoints, or (one SI arm) after
# phase 1's last step, before its consolidation. The stop writes a checkpoint and raises Preempted, like
# SIGTERM; the run is resumed until every arm has been stopped and resumed once.
def _phase(name: str, n_symbols: int, alpha: float, steps: int) -> dict:
    return {"name": name, "family": "dirichlet", "params": {"n_symbols": n_symbols, "alpha": alpha, "length": 16},
            "steps": steps}


STREAM = {"batch_size": 32, "eval_size": 128,
          "phases": [_phase("pretrain", 4, 1.0, 40), _phase("new_symbols", 8, 1.0, 60), _phase("third", 6, 0.5, 60)]}
ARMS = {  # parameters that make each mechanism act within these few steps
    "replay": {"strategy": "replay", "buffer_size": 64},
    "ewc": {"strategy": "ewc", "fisher_batches": 2, "lam": 1000.0},
    "si": {"strategy": "si", "c": 10.0},
    "si_at_phase_end": {"strategy": "si", "c": 10.0},  # stopped at 100: ω (the path) is consolidated after
    "lwf": {"strategy": "lwf"},
    "l2_init": {"strategy": "l2_init", "lam": 0.01, "target": "start"},
    "shrink_perturb": {"strategy": "shrink_perturb", "every": 7, "shrink": 0.9},
    "cbp": {"strategy": "cbp", "maturity_threshold": 5, "replacement_rate": 0.05, "decay_rate": 0.9},
    "redo": {"strategy": "redo", "every": 5, "tau": 0.5},
    "reset": {"strategy": "reset"},
}
STOP_AT = {arm: 130 for arm in ARMS} | {"si_at_phase_end": 100}  # 100: the last step of phase 1


def test_every_strategy_except_naive_and_frozen_is_covered():
    from plasticity.strategies import STRATEGIES

    assert {e["strategy"] for e in ARMS.values()} == set(STRATEGIES.names()) - {"naive", "frozen"}


def _config():
    from plasticity.run.config import load_config

    return load_config("smoke", ["progress=false", "trainer.threads=1", "eval.every=20", "run.checkpoint_every=20",
                                 f"stream={json.dumps(STREAM)}", f"arms={json.dumps(ARMS)}"])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """(reference Experiment, its dir, {arm: the Experiment that resumed it}, its dir,
    {arm: its strategy's state_dict at the stop}, in stop order)."""
    import plasticity.run.work_units as work_units
    from plasticity.run.build import build
    from plasticity.run.config import load_run_config
    from plasticity.run.experiment import Experiment
    from plasticity.train.checkpointing import Checkpointer
    from plasticity.train.stopping import Preempted

    reference_dir = tmp_path_factory.mktemp("uninterrupted")
    reference = Experiment(build(_config()), reference_dir)
    reference.run()

    stopped: dict[str, dict] = {}  # arm -> its strategy's state when it was stopped

    class StopAt(Checkpointer):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            arm = self.path.name.removesuffix("-last.pt")
            if pl_module.stream_step == STOP_AT.get(arm):
                self.stop.requested = True
                stopped[arm] = self.strategy.state_dict()
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    path = tmp_path_factory.mktemp("interrupted")
    resumed_by: dict[str, Experiment] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(work_units, "Checkpointer", StopAt)
        exp = Experiment(build(_config()), path)
        for _ in range(len(ARMS) + 1):
            try:
                exp.run()
                break
            except Preempted:
                assert not (path / "summary.json").exists()
                exp = Experiment(build(load_run_config(path)), path, resume=True)
                resumed_by[list(stopped)[-1]] = exp
    return reference, reference_dir, resumed_by, path, stopped


@pytest.mark.slow
def test_every_strategy_resumes_bit_identical(interrupted):
    reference, reference_dir, resumed_by, path, stopped = interrupted
    assert list(stopped) == list(ARMS)  # each arm was interrupted exactly once, at its step
    a = json.loads((reference_dir / "summary.json").read_text())["arms"]
    b = json.loads((path / "summary.json").read_text())["arms"]
    rows_a, rows_b = _metrics(reference_dir), _metrics(path)
    differ = [arm for arm in ARMS if a[arm] != b[arm]
              or [r for r in rows_a if f'"arm": "{arm}"' in r] != [r for r in rows_b if f'"arm": "{arm}"' in r]]
    assert differ == [], f"resume changed the results of {differ}"
    assert rows_a == rows_b


@pytest.mark.slow
def test_the_mechanisms_acted_before_the_interruption_and_were_carried_over(interrupted):
    reference, _, resumed_by, _, at_stop = interrupted
    assert at_stop["cbp"]["replaced"] > 0 and at_stop["redo"]["replaced"] > 0
    assert at_stop["shrink_perturb"]["applied"] == (130 - 40) // 7  # arm steps done / every
    assert any(t.abs().sum() > 0 for t in at_stop["si_at_phase_end"]["path"].values())
    assert any(t.abs().sum() > 0 for t in at_stop["si"]["omega"].values())
    assert at_stop["lwf"]["teacher"] is not None
    ref, res = reference.built.strategies, {arm: exp.built.strategies[arm] for arm, exp in resumed_by.items()}
    for arm, counter in (("cbp", "replaced"), ("redo", "replaced"), ("shrink_perturb", "applied"),
                         ("replay", "seen")):
        assert getattr(res[arm], counter) == getattr(ref[arm], counter) > 0, (arm, counter)
    for arm, attr in (("ewc", "fisher"), ("si", "omega"), ("si_at_phase_end", "omega")):
        for name, t in getattr(ref[arm], attr).items():
            assert torch.equal(t, getattr(res[arm], attr)[name]), (arm, attr, name)


def test_a_strategy_with_tensor_state_but_no_state_dict_warns_on_resume(capsys):
    from plasticity.strategies.base import Strategy

    class Forgetful(Strategy):
        name = "forgetful"

    class Careful(Forgetful):
        def state_dict(self):
            return {"memory": self.memory}

        def load_state_dict(self, state):
            self.memory = state["memory"]

    for cls in (Forgetful, Careful):
        s = cls()
        s.memory = {"w": torch.zeros(3)}
        s.load_state_dict(s.state_dict())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "'forgetful'" in err[0] and "memory" in err[0]
    Forgetful().load_state_dict({})  # no tensors: nothing to lose, no warning
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- submitit: pre-empted job requeues itself
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_submitit_job_preempted_mid_run_requeues_and_resumes_bit_identical(reference, tmp_path):
    """Submitit's pre-emption signal (USR2) reaches the trial's process in the middle of the run: the run
    checkpoints, the job requeues itself (submitit's local executor restarts it as Slurm would), resumes
    and finishes with the uninterrupted run's summary and metrics."""
    submitit = pytest.importorskip("submitit")
    from plasticity.sweep.trial import TrialJob

    run_dir, log = tmp_path / "run", tmp_path / "trial.log"
    job = {"name": "t", "args": ["smoke", *OVERRIDES, f"run.dir={run_dir}"], "run_dir": str(run_dir),
           "log": str(log), "threads": 1}
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=30)
    sjob = executor.submit(TrialJob(), job)
    deadline = time.time() + 240
    while time.time() < deadline and sjob.state == "RUNNING":
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    assert sjob.state == "RUNNING", "the job finished before it could be pre-empted"
    (task,) = children(sjob._process.pid)
    os.kill(task, signal.SIGUSR2)
    result = sjob.result()
    assert result["status"] == "done", result
    text = log.read_text()  # both attempts, in order
    assert "stopped by SIGUSR2" in text and f"$ plasticity run --resume {run_dir}" in text
    assert text.index("stopped by SIGUSR2") < text.index("$ plasticity run --resume")
    assert "Requeued job" in sjob.stdout()
    assert json.loads((reference / "summary.json").read_text())["arms"] == \
        json.loads((run_dir / "summary.json").read_text())["arms"]
    assert _metrics(reference) == _metrics(run_dir)
