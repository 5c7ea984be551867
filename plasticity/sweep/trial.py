"""One trial, run in the current process with its output in the trial's log; and the local worker loop.

`run_trial(job)` runs exactly what `plasticity run ARGS...` runs (the same parser and command, so the
same sinks as a `wandb agent` run), with file descriptors 1 and 2 redirected to `job["log"]` (C-level
output included), and returns `{status: done|failed, error: {type, message, log_tail} | null, seconds}`;
a trial's own failure never raises. Submitit runs it inside each array job through `TrialJob`, which
makes a pre-empted or timed-out job requeue itself and resume; the local executor calls it in long-lived
worker processes (`python -m plasticity.sweep.trial --worker`), which pay the torch and
Lightning imports once rather than once per trial. Every run reseeds all generators at its start, so a
trial's results do not depend on what its worker ran before (tests/plasticity/test_sweep.py checks this).

This module imports no torch at import time: submitit unpickles `run_trial` in every job.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

LOG_TAIL_LINES = 20
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


@contextmanager
def redirected(path: Path, append: bool = False):
    """fd 1 and 2 (and so sys.stdout, sys.stderr and C-level output) into `path`, then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _message(e: BaseException) -> str:
    lines = (str(e).strip() or repr(e)).splitlines()
    return lines[0][:500] + (" ..." if len(lines) > 1 or len(lines[0]) > 500 else "")


def _run_cli(args: list[str]) -> dict:
    try:
        from plasticity.entry import CommandParser, add_run_arguments, cmd_run

        try:
            parsed = add_run_arguments(CommandParser(prog="plasticity run")).parse_args(args)
        except SystemExit as e:  # argparse's; any other SystemExit (submitit requeueing the job) goes through
            message = f"plasticity run exited with {e.code}"
            return {"status": "failed", "error": {"type": "SystemExit", "message": message}}
        code = cmd_run(parsed)
    except Exception as e:  # noqa: BLE001 - the trial's failure is its result
        traceback.print_exc()
        return {"status": "failed", "error": {"type": type(e).__name__, "message": _message(e)}}
    if code != 0:
        why = "preempted" if code == 143 else "see the log"
        message = f"plasticity run returned {code} ({why})"
        return {"status": "failed", "error": {"type": "ExitStatus", "message": message}}
    return {"status": "done", "error": None}


def run_trial(job: dict) -> dict:
    """Run one trial here; job = {name, args (after `plasticity run`), run_dir, log, threads}."""
    t0 = time.time()
    for var in THREAD_VARS:  # effective when torch is not imported yet (a fresh submitit job)
        os.environ.setdefault(var, str(job.get("threads", 1)))
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with redirected(log, append=job.get("requeued", False)):
        print(f"$ plasticity run {' '.join(job['args'])}", flush=True)
        result = _run_cli(job["args"])
    if result["status"] == "done" and not (Path(job["run_dir"]) / "summary.json").is_file():
        result = {"status": "failed", "error": {"type": "MissingSummary", "message": "no summary.json was written"}}
    if result["error"]:
        result["error"]["log_tail"] = log_tail(log)
    result["seconds"] = round(time.time() - t0, 2)
    return result


def preempted(result: dict) -> bool:
    return result["status"] == "failed" and "(preempted)" in str(result["error"]["message"])


class TrialJob:
    """What submitit runs in each array job: `run_trial`, plus submitit's checkpoint protocol.

    A stop signal (Slurm's `--signal` USR2 ahead of a time limit or a pre-emption, or SIGTERM) makes the
    run checkpoint at the end of its step and return "preempted"; then submitit's own handler for its
    signal is called, which asks `checkpoint` for the resubmission, requeues the job (`scontrol requeue`;
    the local executor restarts it) and exits. The requeued job resumes the run directory, so the sweep
    sees one job that finishes with the complete run. Submitit keeps its rules: a job that timed out more
    than `max_num_timeout` times is not requeued and fails with its reason.
    """

    def __call__(self, job: dict) -> dict:
        import signal

        from plasticity.train.stopping import stop_signals  # torch-free: torch is imported by the run

        submitit_signal = stop_signals()[-1]
        submitit_handler = signal.getsignal(submitit_signal)  # installed by submitit before it called us
        result = run_trial(job)
        if preempted(result) and os.environ.get("SUBMITIT_FOLDER") and callable(submitit_handler):
            print(f"trial {job['name']} stopped by a signal with its checkpoint; requeueing", flush=True)
            submitit_handler(submitit_signal, None)  # calls self.checkpoint, requeues, exits
        return result

    def checkpoint(self, job: dict):
        """The resubmission: the same trial, resuming its run directory once the run has started."""
        from submitit.helpers import DelayedSubmission

        resumed = dict(job, requeued=True)
        if (Path(job["run_dir"]) / "config.yaml").is_file():
            resumed["args"] = ["--resume", str(job["run_dir"])]
        return DelayedSubmission(self, resumed)


def worker() -> int:
    """Read jobs (JSON lines) on stdin, answer each with a result line on the original stdout."""
    import signal

    from plasticity.run.processes import die_with_parent

    # SIGTERM when the sweep process dies, however it dies: a running trial then checkpoints and stops,
    # so the next sweep resumes it instead of racing an orphan.
    die_with_parent(signal.SIGTERM)
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray output between trials must not corrupt the channel
    os.close(devnull)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = run_trial(job)
        except KeyboardInterrupt:
            result = {"status": "failed", "seconds": None, "error": {
                "type": "KeyboardInterrupt", "message": "interrupted", "log_tail": log_tail(job["log"])}}
        try:
            channel.write(json.dumps(result) + "\n")
        except BrokenPipeError:  # the sweep is gone; the run directory has what was done
            return 1
        if result["error"] and result["error"]["type"] == "KeyboardInterrupt":
            return 130
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        sys.exit("usage: python -m plasticity.sweep.trial --worker  (jobs as JSON lines on stdin)")
    sys.exit(worker())
