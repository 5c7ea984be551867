"""Files: whole files written atomically, metrics.jsonl appended and flushed at every evaluation, a truncated
last line (power loss) tolerated by report, plots and resume, checkpoints that load with weights_only=True."""

import json
import os

import pytest
import torch

import plasticity.entry as entry
import plasticity.run.work_units as work_units
from plasticity.cli import main
from plasticity.files import atomic_torch_save, atomic_write_csv, atomic_write_text
from plasticity.run.build import build
from plasticity.run.config import load_config
from plasticity.run.experiment import Experiment
from plasticity.run.sinks import RunSink
from plasticity.train.checkpointing import Checkpointer
from plasticity.train.stopping import Preempted

TINY = ["stream.phases.0.steps=40", "stream.phases.1.steps=20", "eval.every=10", "run.checkpoint_every=10",
        "progress=false", "trainer.threads=1", "plots=false"]


def _crash(*args, **kwargs):
    raise OSError("power loss (simulated)")


@pytest.mark.parametrize("write", ["text", "torch"])
def test_a_write_that_dies_midway_leaves_the_old_file_and_no_debris(write, tmp_path, monkeypatch):
    path = tmp_path / ("summary.json" if write == "text" else "naive.pt")
    save = (lambda v: atomic_write_text(path, v)) if write == "text" else (lambda v: atomic_torch_save({"v": v}, path))
    save("old")
    monkeypatch.setattr(os, "fsync", _crash)  # data partly written to the temp file, not yet renamed
    with pytest.raises(OSError, match="power loss"):
        save("new" * 10_000)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    old = path.read_text() if write == "text" else torch.load(path, weights_only=True)["v"]
    assert old == "old"


def test_a_csv_has_the_first_rows_keys_as_its_header_and_a_line_per_row(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_csv(path, [{"model": "lstm", "kl": 0.5, "seeds": [1, 2]}, {"model": "a, b", "kl": None, "seeds": []}])
    assert path.read_text() == 'model,kl,seeds\nlstm,0.5,"[1, 2]"\n"a, b",,[]\n'
    assert list(tmp_path.iterdir()) == [path]


class DiskWatcher(RunSink):
    """At every evaluation (sinks are called after the run directory is written): what is on disk."""

    def __init__(self):
        self.snapshots: list[tuple[list[dict], str]] = []
        self.run_dir = None

    def on_start(self, config, run_dir):
        self.run_dir = run_dir

    def on_rows(self, rows):
        self.snapshots.append((rows, open(os.path.join(self.run_dir, "metrics.jsonl")).read()))


def test_metrics_are_appended_and_on_disk_at_every_evaluation(tmp_path):
    watcher = DiskWatcher()
    entry.run(load_config("smoke", TINY), tmp_path, sinks=[watcher])
    final = (tmp_path / "metrics.jsonl").read_text()
    assert len(watcher.snapshots) == 5 + 2 + 2  # pretraining at 0, 10, ..., 40; each arm at 50 and 60
    for rows, on_disk in watcher.snapshots:
        assert final.startswith(on_disk)  # append-only: what was there stays there
        last = [json.loads(line) for line in on_disk.splitlines()[-len(rows):]]
        assert [(r["arm"], r["step"], r["eval_phase"]) for r in last] == \
            [(r["arm"], r["step"], r["eval_phase"]) for r in rows]  # this evaluation is already on disk


def _stopped_run(path, stop_at: int):
    """A run stopped (as by SIGTERM) at stream step `stop_at`, leaving its checkpoint."""

    class StopAt(Checkpointer):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.stream_step == stop_at:
                self.stop.requested = True
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(work_units, "Checkpointer", StopAt)
        with pytest.raises(Preempted):
            Experiment(build(load_config("smoke", TINY)), path).run()


def test_checkpoints_load_with_weights_only(tmp_path):
    _stopped_run(tmp_path, 50)  # in the naive arm, after pretraining and the frozen arm finished
    last = torch.load(tmp_path / "checkpoints" / "naive-last.pt", weights_only=True)
    assert set(last) == {"stream_step", "model", "optimizer", "scheduler", "module", "strategy", "evaluator", "rng"}
    assert last["stream_step"] == 50 and set(last["rng"]) >= {"torch", "numpy", "python"}
    for unit in ("pretrained", "frozen"):
        assert "model" in torch.load(tmp_path / "checkpoints" / f"{unit}.pt", weights_only=True)


def test_a_truncated_last_metrics_line_is_tolerated_by_report_plots_and_resume(tmp_path, capsys):
    reference = tmp_path / "reference"
    entry.run(load_config("smoke", TINY), reference)
    path = tmp_path / "cut"
    _stopped_run(path, 50)
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"arm": "naive", "step": 60, "phase": 1, "kl_')  # power loss in the middle of a row
    from plasticity.results.plots import make_plots

    assert make_plots(path)  # figures from the rows that are whole
    assert main(["report", str(path), "--no-plots", "--out", str(tmp_path / "report")]) == 0
    assert "incomplete run" in capsys.readouterr().out
    entry.resume(path)
    assert json.loads((path / "summary.json").read_text())["arms"] == \
        json.loads((reference / "summary.json").read_text())["arms"]
    assert (path / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
