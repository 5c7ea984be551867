"""Units of work in a pool of worker processes (`trainer.workers`), for one run or several (seeds).

The parent schedules, the workers compute. Each worker (`spawn`: a fresh interpreter, no state shared
with the parent) builds the runs it is handed from their resolved configs, runs one unit at a time with
`trainer.threads` torch threads, appends the unit's metrics rows to the run's metrics.jsonl itself (one
locked write per evaluation, before the checkpoint that follows it) and leaves `checkpoints/<unit>.pt`;
over a pipe it reports what the sinks and the progress display need, and how each unit ended. A unit is
deterministic in (config, unit), so results are bit-identical to running the units one after another.

Scheduling: a unit is ready when what it needs is done (an arm needs its run's pretraining); ready units
go to idle workers longest first (by training steps). A unit that fails or diverges stops alone and is
reported; the others go on. SIGTERM to the parent is passed to the workers, whose running units
checkpoint at the end of their step; a worker whose parent dies, however it dies, gets SIGTERM too
(PR_SET_PDEATHSIG) and does the same, so nothing is left running and `--resume` continues every unit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from plasticity.eval.rows import PRETRAIN_UNIT
from plasticity.run.work_units import UnitEvents, WorkUnit

POLL_SECONDS = 0.5


@dataclass
class Job:
    """One unit of one run: `run` indexes the runs the pool was given."""

    run: int
    unit: WorkUnit
    steps: int  # training steps: the scheduling weight


@dataclass
class RunJobs:
    """A run as the workers need it: its resolved config and directory, and whether it resumes."""

    config: dict
    run_dir: str
    resume: bool
    events: UnitEvents  # where its workers' reports go, in the parent


class UnitFailed(RuntimeError):
    """Units of the run failed (not a divergence, which is a result): their messages, after the others ended."""


# ------------------------------------------------------------------------------------------- the parent
class Pool:
    def __init__(self, workers: int, threads: int):
        self.n, self.threads = workers, threads

    def run(self, runs: list[RunJobs], jobs: list[Job], stop, done: set[tuple[int, str]] = frozenset()
            ) -> dict[tuple[int, str], str]:
        """Run every job (`done`: units finished before, which others may need); returns {(run, unit):
        "done" | "preempted" | failure message}."""
        ctx = mp.get_context("spawn")
        conns, procs = [], []
        for i in range(min(self.n, len(jobs))):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, self.threads, os.getpid()),
                               name=f"plasticity-worker-{i}", daemon=False)
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
        outcome: dict[tuple[int, str], str] = dict.fromkeys(done, "done")
        busy: dict[int, Job] = {}  # worker -> its job
        closed: set[int] = set()  # workers whose pipe was read to its end
        pending = sorted(jobs, key=lambda j: -j.steps)
        stopping = False
        try:
            while pending or busy:
                if stop.requested and not stopping:  # pass the stop on: running units checkpoint and stop
                    stopping = True
                    pending = []
                    for proc in procs:
                        if proc.is_alive():
                            os.kill(proc.pid, signal.SIGTERM)
                if not stopping:
                    for w in range(len(procs)):
                        if w in busy or not procs[w].is_alive():
                            continue
                        job = self._next(pending, outcome)
                        if job is None:
                            break
                        busy[w] = job
                        r = runs[job.run]
                        conns[w].send(("run", job.run, r.config, r.run_dir, r.resume, job.unit))
                    if not busy and pending:  # nothing can start: no worker left, or what they need failed
                        why = ("not run: the pretraining of its run failed" if any(p.is_alive() for p in procs)
                               else "not run: no worker process left")
                        for job in pending:
                            outcome[(job.run, job.unit.name)] = why
                        pending = []
                        break
                live = [c for w, c in enumerate(conns) if w not in closed]  # a pipe at its end stays "ready"
                ready = wait([*live, *(p.sentinel for w, p in enumerate(procs) if w in busy)], POLL_SECONDS)
                for w, (conn, proc) in enumerate(zip(conns, procs)):
                    while conn in ready and w not in closed and _readable(conn):
                        try:
                            message = conn.recv()
                        except (EOFError, OSError):
                            closed.add(w)
                            break
                        self._handle(message, w, busy, runs, outcome)
                    if w in busy and not proc.is_alive() and (w in closed or not _readable(conn)):
                        # its worker ended without reporting the unit: stopped before it began it, or killed
                        job = busy.pop(w)
                        outcome[(job.run, job.unit.name)] = ("preempted" if stopping else
                                                             f"its worker process ended with status "
                                                             f"{proc.exitcode} (killed: out of memory?)")
            return outcome
        finally:
            for conn in conns:
                try:
                    conn.send(None)  # no more work
                except (OSError, ValueError):
                    pass
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()

    @staticmethod
    def _next(pending: list[Job], outcome: dict) -> Job | None:
        """The longest ready job (an arm waits for its run's pretraining to be done)."""
        for i, job in enumerate(pending):
            if not job.unit.needs_pretrained or outcome.get((job.run, PRETRAIN_UNIT)) == "done":
                return pending.pop(i)
        return None

    @staticmethod
    def _handle(message: tuple, worker: int, busy: dict, runs: list[RunJobs], outcome: dict) -> None:
        kind, run, *rest = message
        events = runs[run].events
        if kind == "ended":
            name, how = rest
            outcome[(run, name)] = how
            busy.pop(worker, None)
        else:
            getattr(events, kind)(*rest)  # rows, phase_end, steps, evaluated, advanced


def _readable(conn) -> bool:
    try:
        return conn.poll()
    except (OSError, EOFError):
        return False


# ------------------------------------------------------------------------------------------- a worker
class _PipeEvents(UnitEvents):
    """A unit's reports, sent to the parent; a parent that is gone is not an error here (the run
    directory has everything, and SIGTERM is on its way)."""

    def __init__(self, conn, run: int):
        self.conn, self.run = conn, run

    def _send(self, *message) -> None:
        try:
            self.conn.send((message[0], self.run, *message[1:]))
        except (OSError, ValueError):
            pass

    def rows(self, rows):
        self._send("rows", rows)

    def phase_end(self, arm, phase, R_rows):
        self._send("phase_end", arm, phase, R_rows)

    def steps(self, arm, records):
        self._send("steps", arm, records)

    def evaluated(self, unit, step, kl_bits):
        self._send("evaluated", unit, step, kl_bits)

    def advanced(self, unit, steps):
        self._send("advanced", unit, steps)


def worker_main(conn, threads: int, parent_pid: int) -> None:
    """A worker's life: build each run it is handed once, run its units one at a time, report."""
    from plasticity.run.processes import die_with_parent

    die_with_parent(signal.SIGTERM)  # the parent's death stops the unit at the end of its step
    import torch

    from plasticity.run.build import build
    from plasticity.run.config import from_container
    from plasticity.run.rundir import RunDir
    from plasticity.run.work_units import UnitRunner
    from plasticity.train.stopping import DivergenceError, Preempted, StopFlag

    if threads > 0:
        torch.set_num_threads(threads)
    stop = StopFlag()
    stop.install()
    runners: dict[str, UnitRunner] = {}
    while True:
        try:
            if not conn.poll(POLL_SECONDS):
                if stop.requested or os.getppid() != parent_pid:
                    return
                continue
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        _, run, config, run_dir, resume, unit = task
        events = _PipeEvents(conn, run)
        try:
            if run_dir not in runners:
                runners[run_dir] = UnitRunner(build(from_container(config)), RunDir(Path(run_dir)), events, stop,
                                              resume)
            runner = runners[run_dir]
            runner.events = events
            runner.run(unit)
            how = "done"
        except Preempted:
            how = "preempted"
        except DivergenceError as e:
            how = f"DivergenceError: {e}"
        except Exception as e:  # noqa: BLE001 - the unit's failure is its result; the traceback is on stderr
            traceback.print_exc(file=sys.stderr)
            how = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        events._send("ended", unit.name, how)
        if how == "preempted" or stop.requested:  # reported; this worker's units stop here
            return
