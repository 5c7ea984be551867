"""The wandb sink: mode resolution, offline files under the run directory, no network, never failing the run.

wandb runs offline (or disabled) into temporary directories; the one online attempt points at a closed local
port, so nothing here leaves the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plasticity.run.config import load_config
from plasticity.run.sinks import BackgroundSink
from plasticity.sinks.wandb import WandbSink, default_sinks, resolve_mode

PHASES = ["pretrain", "drift"]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: a connection is refused at once, locally


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb's own files in tmp, no credentials, no mode from the environment, no reachable server."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", CLOSED_PORT)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    return tmp_path


def fake_rows(arm: str, step: int, phase: int, kls: list[float], names: list[str] = PHASES) -> list[dict]:
    ref = "distance_from_init" if arm == "pretrain" else "distance_from_pretrained"
    return [{"arm": arm, "step": step, "phase": phase, "eval_phase": j, "eval_phase_name": names[j],
             "kl_bits": kl, "entropy_gap_bits": kl / 2, "nll_bits": 2 + kl, "bayes_nll_bits": 2.0,
             "nll_gap_se_bits": 0.01, "ece": 0.01, "kl_bits_by_position": [kl] * 4 + [None],
             "model_entropy_bits_by_position": [2.0, 1.9, 1.8, 1.7, None],
             "posterior_entropy_bits_by_position": [2.0, 1.8, 1.7, 1.6, None],
             "dormant_frac": 0.1, "effective_rank": 5.0, "weight_norm": 3.0, ref: 0.5, "grad_norm": 0.2}
            for j, kl in enumerate(kls)]


def drive(sink: WandbSink, run_dir: Path) -> None:
    """A two-phase run with one arm, hook by hook, as the experiment calls them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sink.on_start({"name": "fake", "seed": 0, "arms": {"naive": {"strategy": "naive"}}}, str(run_dir))
    sink.on_rows(fake_rows("pretrain", 0, 0, [1.0, 0.5]))
    sink.on_rows(fake_rows("pretrain", 10, 0, [0.1, 2.0]))
    sink.on_phase_end("pretrain", 0, {0: [0.1, 2.0]})
    sink.on_rows(fake_rows("naive", 15, 1, [0.4, 0.8]))
    sink.on_rows(fake_rows("naive", 20, 1, [0.6, 0.2]))
    sink.on_phase_end("naive", 1, {0: [0.1, 2.0], 1: [0.6, 0.2]})
    sink.on_summary({"name": "fake", "phases": PHASES, "timing": {"wall_seconds": 1.0},
                     "arms": {"naive": {"strategy": "naive", "R_kl_bits": [[0.1, 2.0], [0.6, 0.2]],
                                        "final_kl_bits": 0.4, "forgetting_bits": [0.5, 0.0], "bwt_bits": 0.5}}})


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/*.wandb"))


@pytest.fixture
def logged(monkeypatch):
    """Every wandb.Run.log payload, by run name (the real log still runs)."""
    from wandb.sdk.wandb_run import Run

    payloads: dict[str, list[dict]] = {}
    real = Run.log

    def spy(self, data, *args, **kwargs):
        payloads.setdefault(self.name, []).append(dict(data))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", spy)
    return payloads


# ------------------------------------------------------------------------------------------- mode
def test_mode_resolution(wandb_env, monkeypatch):
    assert resolve_mode("disabled") == "disabled"
    assert resolve_mode(None) == "offline"  # no key anywhere
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    assert resolve_mode("offline") == "offline"  # the config wins over everything
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(None) == "offline"  # the environment wins over the key
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled"


def test_netrc_entry_means_online(wandb_env, monkeypatch):
    netrc = wandb_env / "netrc"
    netrc.write_text(f"machine 127.0.0.1:9\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode(None) == "online"


def test_disabled_mode_makes_no_sink_and_no_files(wandb_env, monkeypatch):
    assert default_sinks(load_config("smoke", ["logger.wandb.mode=disabled"])) == []
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_sinks(load_config("smoke")) == []
    sink = WandbSink(mode="disabled")
    drive(sink, wandb_env / "run")
    sink.close()
    assert not (wandb_env / "run" / "wandb").exists()
    assert sink.runs == {}


def test_default_sinks_follow_the_config(wandb_env):
    (background,) = default_sinks(load_config("smoke", ["logger.wandb.project=p", "logger.wandb.tags=[a,b]"]))
    assert isinstance(background, BackgroundSink)  # in a thread of its own: training does not wait for wandb
    sink = background.sink
    assert isinstance(sink, WandbSink) and sink.mode == "offline"
    assert sink.project == "p" and sink.tags == ["a", "b"]
    background.close()


# ------------------------------------------------------------------------------------------- offline
def test_offline_sink_writes_run_files_under_the_run_dir(wandb_env, logged, capsys):
    run_dir = wandb_env / "run"
    sink = WandbSink(mode="offline", system_metrics=False)
    drive(sink, run_dir)
    naive = sink.runs["naive"]
    assert naive.summary["final_kl_bits"] == 0.4
    assert naive.summary["forgetting_bits/pretrain"] == 0.5
    assert naive.summary["final_kl_bits/drift"] == 0.2
    assert naive.config["arm"] == "naive" and naive.config["strategy"] == "naive"
    assert "git_commit" in naive.config
    sink.close()

    assert len(wandb_files(run_dir)) == 2  # the shared pretraining and the arm, one run each
    assert not list((wandb_env / "wandb_home").rglob("*.wandb"))  # nothing in wandb's default places
    err = capsys.readouterr().err
    assert err.count(f"wandb sync {run_dir / 'wandb'}") == 1

    naive_logs = logged[next(k for k in logged if k.startswith("naive@"))]
    steps = [d["stream_step"] for d in naive_logs]
    assert steps == sorted(steps) and steps[:2] == [0, 10]  # the pretraining history comes first
    assert naive_logs[0]["kl_bits/pretrain"] == 1.0 and naive_logs[0]["kl_bits/drift"] == 0.5
    assert naive_logs[3]["kl_bits/current_phase"] == 0.2
    assert naive_logs[3]["probes/distance_from_pretrained"] == 0.5
    assert "R/kl_bits_table" in naive_logs[-1] and "R/kl_bits_heatmap" in naive_logs[-1]
    assert "calibration/drift" in naive_logs[-1]


def test_an_empty_wandb_mode_in_the_environment_means_unset(wandb_env, logged, monkeypatch, capsys):
    """`export WANDB_MODE=$MODE` with MODE unset: wandb's own Settings rejected the empty value, and the run
    lost its dashboard (no files). Empty means unset, for wandb too."""
    monkeypatch.setenv("WANDB_MODE", "")
    run_dir = wandb_env / "run"
    sink = WandbSink(mode="offline", system_metrics=False)
    drive(sink, run_dir)
    sink.close()
    assert sink.failures == 0 and "warning" not in capsys.readouterr().err
    assert len(wandb_files(run_dir)) == 2
    naive_logs = logged[next(k for k in logged if k.startswith("naive@"))]
    assert [d["stream_step"] for d in naive_logs if "kl_bits/pretrain" in d] == [0, 10, 15, 20]  # the whole history


def test_a_long_stream_sends_its_images_at_about_twelve_phase_ends(wandb_env, logged):
    """Drawing the R heatmap at every phase end costs O(phases) each: 30 phases send it at phases 0, 3, ..., 27
    (every ceil(30/12) = 3rd) and at the last, 29; the scalars still come at every evaluation."""
    names = [f"p{j}" for j in range(30)]
    run_dir = wandb_env / "run"
    run_dir.mkdir()
    sink = WandbSink(mode="offline", system_metrics=False)
    sink.on_start({"name": "long", "seed": 0, "arms": {"naive": {"strategy": "naive"}}}, str(run_dir))
    for i in range(1, 30):
        sink.on_rows(fake_rows("naive", 10 * i, i, [0.5] * 30, names))
        sink.on_phase_end("naive", i, {k: [0.5] * 30 for k in range(i + 1)})
    sink.close()
    logs = logged[next(k for k in logged if k.startswith("naive@"))]
    assert sum("kl_bits/p0" in d for d in logs) == 29
    with_images = [d["stream_step"] for d in logs if "R/kl_bits_heatmap" in d]
    assert with_images == [10 * i for i in (3, 6, 9, 12, 15, 18, 21, 24, 27, 29)]


def test_several_runs_in_one_process(wandb_env):
    for k in range(2):
        sink = WandbSink(mode="offline", system_metrics=False)
        drive(sink, wandb_env / f"run{k}")
        sink.close()
        assert len(wandb_files(wandb_env / f"run{k}")) == 2


def test_online_init_failure_falls_back_to_offline(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # the server is a closed local port
    sink = WandbSink(mode="online", init_timeout=2, system_metrics=False)
    drive(sink, wandb_env / "run")
    sink.close()
    assert sink.mode == "offline"
    assert len(wandb_files(wandb_env / "run")) == 2
    assert "logging offline instead" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- through run()
def test_experiment_run_logs_offline(wandb_env):
    from plasticity.entry import run

    run_dir = wandb_env / "smoke"
    summary = run(load_config("smoke", ["progress=false", "plots=false", "logger.wandb.mode=disabled"]), run_dir,
                  sinks=[WandbSink(mode="offline", system_metrics=False)])  # this sink only, not a default one too
    assert set(summary["arms"]) == {"frozen", "naive"}
    files = wandb_files(run_dir)
    assert len(files) == 3 and all(f.stat().st_size > 0 for f in files)  # pretrain, frozen, naive


def test_a_raising_wandb_log_does_not_fail_the_run(wandb_env, monkeypatch, capsys):
    from wandb.sdk.wandb_run import Run

    from plasticity.entry import run

    def boom(self, *args, **kwargs):
        raise RuntimeError("wandb exploded")

    monkeypatch.setattr(Run, "log", boom)
    sink = WandbSink(mode="offline", system_metrics=False)
    short = ["progress=false", "plots=false", "stream.phases[0].steps=30", "stream.phases[1].steps=30", "eval.every=15",
             "logger.wandb.mode=disabled"]  # the sink below only, not a default one too
    summary = run(load_config("smoke", short), wandb_env / "smoke", sinks=[sink])
    assert summary["arms"]["naive"]["final_kl_bits"] > 0
    assert (wandb_env / "smoke" / "summary.json").exists()
    err = capsys.readouterr().err
    assert err.count("wandb exploded") == 1  # warned once, not per call
    assert "disabled for the rest of the run" not in err  # the sink handled it itself
    assert sink.failures > 1 and sink.runs == {}  # kept trying; every run finished and released


def test_importing_the_sink_module_does_not_import_wandb():
    """The experiment imports default_sinks at module level; wandb must wait until a sink starts."""
    code = "import sys, plasticity.sinks.wandb; sys.exit('wandb' in sys.modules or 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_recurring_phase_names_get_their_index():
    sink = WandbSink(mode="offline")
    data = sink._log_dict(fake_rows("naive", 5, 1, [0.1, 0.2, 0.3], names=["A", "B", "A"]))
    assert data["kl_bits/0_A"] == 0.1 and data["kl_bits/1_B"] == 0.2 and data["kl_bits/2_A"] == 0.3
    assert data["kl_bits/current_phase"] == 0.2 and data["train_phase"] == 1 and data["stream_step"] == 5


def test_token_group_kls_are_logged_per_phase_not_as_probes():
    sink = WandbSink(mode="offline")
    rows = fake_rows("naive", 5, 1, [0.1, 0.2])
    for r, (obs, do) in zip(rows, [(0.05, 0.15), (0.1, 0.3)]):
        r.update(kl_bits_obs=obs, kl_bits_do=do, kl_bits_do_by_position=[do, None])
    data = sink._log_dict(rows)
    assert data["kl_bits_obs/drift"] == 0.1 and data["kl_bits_do/pretrain"] == 0.15
    assert not any(k.startswith("probes/kl_bits") for k in data) and "kl_bits_do_by_position/pretrain" not in data
