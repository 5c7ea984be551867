"""The sinks' dispatch: a sink in a thread of its own gets every hook, in order, off the run's thread."""

from __future__ import annotations

import threading
import time

from plasticity import entry
from plasticity.run.config import load_config
from plasticity.run.sinks import BackgroundSink, RunSink, Sinks


class Recorder(RunSink):
    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.threads: set[str] = set()
        self.delay, self.fail_on = delay, fail_on

    def _note(self, hook: str, *args) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if hook == self.fail_on:
            raise RuntimeError(f"{hook} broke")
        self.calls.append((hook, *args))

    def on_start(self, config, run_dir):
        self._note("on_start", run_dir)

    def on_rows(self, rows):
        self._note("on_rows", [(r["arm"], r["step"], r["eval_phase"]) for r in rows])

    def on_phase_end(self, arm, phase, R_rows):
        self._note("on_phase_end", arm, phase)

    def on_steps(self, arm, records):
        self._note("on_steps", arm, len(records))

    def on_summary(self, summary):
        self._note("on_summary", sorted(summary["arms"]))

    def close(self):
        self._note("close")


TINY = ["progress=false", "plots=false", "logger.wandb.mode=disabled", "stream.phases.0.steps=40",
        "stream.phases.1.steps=20", "eval.every=10"]


def test_a_background_sink_gets_every_hook_in_order_off_the_runs_thread(tmp_path):
    direct, slow = Recorder(), Recorder(delay=0.01)
    entry.run(load_config("smoke", TINY), tmp_path / "a", sinks=[direct])
    entry.run(load_config("smoke", TINY), tmp_path / "b", sinks=[BackgroundSink(slow)])
    strip = lambda calls: [c if c[0] != "on_start" else c[:1] for c in calls]  # noqa: E731 (run dirs differ)
    assert strip(slow.calls) == strip(direct.calls)  # the same hooks, the same order, all delivered by close
    assert slow.calls[-1] == ("close",) and len(slow.calls) > 10
    assert direct.threads == {"MainThread"} and slow.threads == {"sink-Recorder"}


def test_a_background_sink_that_raises_is_reported_once_and_dropped(capsys):
    sink = Recorder(fail_on="on_rows")
    background = BackgroundSink(sink)
    sinks = Sinks([background])
    sinks.call("on_start", {}, "dir")
    for step in range(3):
        sinks.call("on_rows", [{"arm": "a", "step": step, "eval_phase": 0}])
    sinks.call("close")
    assert sink.calls == [("on_start", "dir")]  # nothing after the failure, close included
    err = capsys.readouterr().err
    assert err.count("Recorder.on_rows failed (RuntimeError: on_rows broke)") == 1
    sinks.call("close")  # a second close (the run's error path) is harmless
