"""Where trials execute: N local worker processes, or Slurm job arrays through submitit.

Locally, each of N threads drives one worker process (`python -m plasticity.sweep.trial --worker`, torch
single-threaded), sending it one trial at a time; a worker that dies (a segfault, the OOM killer) fails
only the trial it was running and is replaced for the next one. On Slurm, `run_trial` runs inside each
job of one array (so the cluster needs the run directories' file system, as usual). Either way a trial's
stdout and stderr go to `<out>/logs/<name>.log`. A pre-empted or timed-out Slurm job checkpoints, requeues
itself and resumes (`TrialJob`). This module imports no torch.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plasticity.sweep.trial import LOG_TAIL_LINES, TrialJob, log_tail

Job = dict[str, Any]  # name, args (after `plasticity run`), run_dir, log, threads
Callback = Callable[[Job, Any], None]


def _failure(kind: str, message: str, log: str | Path) -> dict:
    return {"type": kind, "message": message, "log_tail": log_tail(log)}


class _Worker:
    """One long-lived worker process; restarted when it dies."""

    def __init__(self, threads: int, stderr_path: Path):
        self.threads, self.stderr_path = threads, stderr_path
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "a") as stderr:  # the worker's own output between trials
            return subprocess.Popen([sys.executable, "-m", "plasticity.sweep.trial", "--worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, bufsize=1)

    def run(self, job: Job) -> dict:
        t0 = time.time()
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (OSError, ValueError):  # a closed pipe
            line = ""
        if line:
            return json.loads(line)
        code = proc.wait()
        why = " (killed: out of memory?)" if code == -9 else ""
        return {"status": "failed", "seconds": round(time.time() - t0, 2), "error": _failure(
            "WorkerDied", f"the worker process running the trial ended with status {code}{why}", job["log"])}

    def close(self, kill: bool = False) -> None:
        """Close stdin (the worker exits after its trial); kill=True: SIGTERM first, so the trial checkpoints."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if kill:
                proc.terminate()
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()


class LocalExecutor:
    """`workers` trials at a time on this machine, each worker a single-threaded torch process."""

    def __init__(self, workers: int, logs: Path, threads: int = 1):
        self.workers, self.logs, self.threads = max(1, workers), Path(logs), threads

    def run(self, jobs: list[Job], on_start: Callback, on_done: Callback) -> None:
        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        workers = [_Worker(self.threads, self.logs / f"worker-{i}.log") for i in range(min(self.workers, len(jobs)))]
        stop = threading.Event()
        errors: list[BaseException] = []

        def drive(worker: _Worker) -> None:
            try:
                while not stop.is_set():
                    try:
                        job = todo.get_nowait()
                    except queue.Empty:
                        return
                    on_start(job, None)
                    result = worker.run(job)
                    if not stop.is_set():
                        on_done(job, result)
            except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
                errors.append(e)
            finally:
                worker.close()

        threads = [threading.Thread(target=drive, args=(w,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except BaseException:
            stop.set()
            for w in workers:
                w.close(kill=True)
            raise
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------------------------------------
# Slurm through submitit

class SubmititExecutor:
    """One job array (`map_array`); `cluster="local"` runs the same jobs with submitit's local executor."""

    def __init__(self, folder: Path, parameters: dict, cluster: str = "slurm", poll_s: float | None = None):
        self.folder, self.parameters, self.cluster = Path(folder), parameters, cluster
        self.poll_s = poll_s if poll_s is not None else (1.0 if cluster == "local" else 15.0)

    def run(self, jobs: list[Job], on_start: Callback, on_done: Callback) -> None:
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        executor.update_parameters(**self.parameters)
        submitted = executor.map_array(TrialJob(), jobs)
        pending = dict(zip(submitted, jobs))
        started: set = set()
        try:
            while pending:
                for sjob, job in list(pending.items()):
                    if sjob.done():
                        try:
                            result = sjob.result()
                        except Exception as e:  # noqa: BLE001 - the job itself died (timeout, node failure)
                            message = str(e).strip().splitlines()
                            result = {"status": "failed", "seconds": None, "error": _failure(
                                type(e).__name__, message[0] if message else repr(e), job["log"])}
                            if not result["error"]["log_tail"]:
                                result["error"]["log_tail"] = message[-LOG_TAIL_LINES:]
                        del pending[sjob]
                        on_done(job, result)
                    elif sjob not in started and sjob.state in ("RUNNING", "COMPLETING"):
                        started.add(sjob)
                        on_start(job, None)
                if pending:
                    time.sleep(self.poll_s)
        except BaseException:
            for sjob in pending:
                sjob.cancel(check=False)  # a half-watched array would race a re-run in the same run dirs
            raise
