"""`plasticity sweep`: validate every trial, skip the finished ones, run the rest, keep the index current.

Layout of `<out>` (default `runs/sweeps/<sweep file stem>`): one run directory per trial, named by its
config hash; `logs/<name>.log` (the trial's stdout and stderr); `sweep_index.json`; `sweep.yaml` (a copy
of the sweep file); `submitit/` (Slurm job files). Re-running the same command skips trials whose
`summary.json` exists; an interrupted trial (Ctrl-C, pre-emption: status running/pending in the index; or
its worker process killed; or no index entry says how it ended) continues with `plasticity run --resume`, a
failed one starts over (its partial run directory removed). A run in which an arm diverged is done: its
summary records the divergence, the index entry lists it under `diverged`.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from plasticity.results.runs import INDEX_NAME, load
from plasticity.run.config import ConfigError
from plasticity.sweep.executors import LocalExecutor, SubmititExecutor
from plasticity.sweep.index import SweepIndex
from plasticity.sweep.plan import Trial, plan
from plasticity.sweep.resources import submitit_parameters
from plasticity.sweep.spec import SweepSpec, load_sweep

EXECUTORS = ("local", "slurm")
MAX_DEFAULT_WORKERS = 8


def default_out(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.stem


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


class SweepProgress:
    """A Rich bar with done/failed/running counts; silent when stdout is not a terminal."""

    def __init__(self, name: str, total: int, enabled: bool):
        self.name, self.total = name, total
        self.enabled = enabled and total > 0 and sys.stdout.isatty()
        self.bar = self.task = None

    @contextmanager
    def show(self):
        if not self.enabled:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]sweep {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[counts]}"))
        with self.bar:
            self.task = self.bar.add_task(self.name, total=self.total, counts="")
            yield self
        self.bar = self.task = None

    def update(self, counts: dict[str, int], finished: int) -> None:
        if self.bar is not None:
            text = (f"done {counts['done']}  failed {counts['failed']}  running {counts['running']}  "
                    f"pending {counts['pending']}")
            self.bar.update(self.task, completed=finished, counts=text)


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (kill, a scheduler) stops the sweep like Ctrl-C: running trials checkpoint and stay resumable."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _locked(out: Path):
    """One sweep process per --out: a second would take the first's running trials for interrupted ones."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard
        yield
        return
    with open(out / ".sweep.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another `plasticity sweep` is running there; wait for it or use --out") from None
        yield


def interrupted(trial: Trial, old: dict) -> bool:
    """An earlier attempt was stopped rather than failed (Ctrl-C, Slurm pre-emption, a sweep that died), or
    nothing says how it ended (no index entry: the index was lost, or the run directory was moved here from
    another sweep's folder; its name is its config's hash): its run directory continues with `plasticity run
    --resume`. A run that failed starts over."""
    if not (trial.run_dir / "config.yaml").is_file():
        return False
    if not old or old.get("status") in ("running", "pending"):
        return True
    error = old.get("error") or {}
    # WorkerDied: the process was killed (SIGKILL, the OOM killer); its checkpoints are written atomically
    return error.get("type") in ("KeyboardInterrupt", "WorkerDied") or "(preempted)" in str(error.get("message"))


def _job(trial: Trial, spec: SweepSpec, out: Path, threads: int, resume: bool) -> dict[str, Any]:
    logs = out.resolve() / "logs"
    return {
        "name": trial.name,
        "args": ["--resume", str(trial.run_dir)] if resume else trial.args(spec.experiment),
        "run_dir": str(trial.run_dir),
        "log": str(logs / f"{trial.name}.log"),
        "threads": threads,
    }


def run_sweep(
    sweep: str | Path,
    out: str | Path | None = None,
    workers: int | None = None,
    executor: str = "local",
    seed: int = 0,
    resources: dict | None = None,
    cluster: str = "slurm",
    progress: bool = True,
    echo=print,
) -> dict:
    """Run a sweep; returns the index (as written to `<out>/sweep_index.json`).

    Every trial's config is validated before anything is written; a ConfigError names the parameter."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor}: choose one of {', '.join(EXECUTORS)}")
    spec = load_sweep(sweep)
    out = Path(out) if out else default_out(spec)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: must be >= 1")
    slurm_params = None
    threads = 1
    if executor == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("--executor slurm needs submitit: pip install 'plasticity-testbed[slurm]'") from None
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: no sbatch on this machine (--cluster local runs the job array here)")
        merged = {**spec.slurm, **{k: v for k, v in (resources or {}).items() if v is not None}}
        slurm_params = submitit_parameters(merged, 1, f"sweep-{spec.stem}")
        threads = max(1, int(slurm_params.get("cpus_per_task") or 1))
    trials, duplicates = plan(spec, out, seed, threads)  # raises before anything is written
    if slurm_params is not None:  # the whole array at once unless --workers caps it
        workers = workers or max(1, len(trials))
        slurm_params["slurm_array_parallelism"] = workers
    workers = workers or default_workers()

    out.mkdir(parents=True, exist_ok=True)
    with _locked(out), _sigterm_interrupts():
        return _execute(spec, trials, duplicates, out, workers, executor, seed, threads, slurm_params, cluster,
                        progress, echo)


def _execute(spec: SweepSpec, trials: list[Trial], duplicates: int, out: Path, workers: int, executor: str,
             seed: int, threads: int, slurm_params: dict | None, cluster: str, progress: bool, echo) -> dict:
    if spec.path.resolve() != (out / "sweep.yaml").resolve():
        shutil.copyfile(spec.path, out / "sweep.yaml")  # what was asked for, next to what ran
    header = {"sweep": str(spec.path), "experiment": spec.experiment, "method": spec.method, "seed": seed,
              "out": str(out.resolve()), "executor": executor, "started": datetime.now().isoformat(timespec="seconds")}
    index = SweepIndex(out / INDEX_NAME, header)
    todo: list[Trial] = []
    resume: set[str] = set()
    for trial in trials:
        old = index.previous.get(trial.name, {})
        entry = {"name": trial.name, "overrides": trial.params, "status": "pending", "error": None,
                 "run_dir": str(trial.run_dir), "log": str(out.resolve() / "logs" / f"{trial.name}.log"),
                 "command": trial.command(spec.experiment), "seconds": None, "started": None, "finished": None}
        if (trial.run_dir / "summary.json").is_file():
            entry.update(status="done", seconds=old.get("seconds"), started=old.get("started"),
                         finished=old.get("finished"))
            if diverged := load(trial.run_dir).diverged_arms():
                entry["diverged"] = diverged
        else:
            if old.get("status") == "failed":
                entry["previous_error"] = old.get("error")
            if interrupted(trial, old):
                resume.add(trial.name)
                entry["resumed"] = True
            todo.append(trial)
        index.add(entry)
    index.save()

    skipped = len(trials) - len(todo)
    notes = [f"{duplicates} duplicate configs merged"] if duplicates else []
    if todo:
        if resume:
            notes.append(f"resuming {len(resume)} interrupted")
        echo(f"sweep {spec.stem}: {len(trials)} trials, {skipped} already done, running {len(todo)} "
             f"({executor}, {min(workers, len(todo))} at a time){'; ' + ', '.join(notes) if notes else ''}")
    for trial in todo:  # a failed attempt's partial run starts clean (its log is kept until rewritten)
        if trial.run_dir.exists() and trial.name not in resume:
            shutil.rmtree(trial.run_dir)

    bar = SweepProgress(spec.stem, len(todo), progress)
    finished = [0]

    def on_start(job: dict, _result: Any) -> None:
        index.update(job["name"], status="running", error=None, started=datetime.now().isoformat(timespec="seconds"))
        bar.update(index.counts(), finished[0])

    def on_done(job: dict, result: dict | None) -> None:
        result = result or {"status": "failed", "error": {"type": "Unknown", "message": "no result"}}
        extra = {}
        if result["status"] == "done" and (diverged := load(Path(job["run_dir"])).diverged_arms()):
            extra["diverged"] = diverged
        index.update(job["name"], drop=("previous_error",) if result["status"] == "done" else (),
                     status=result["status"], error=result.get("error"), seconds=result.get("seconds"),
                     finished=datetime.now().isoformat(timespec="seconds"), **extra)
        finished[0] += 1
        bar.update(index.counts(), finished[0])

    jobs = [_job(t, spec, out, threads, t.name in resume) for t in todo]
    if jobs:
        runner = (LocalExecutor(workers, out.resolve() / "logs", threads) if executor == "local"
                  else SubmititExecutor(out / "submitit", slurm_params, cluster))
        try:
            with bar.show():
                bar.update(index.counts(), 0)
                runner.run(jobs, on_start, on_done)
        except KeyboardInterrupt:  # what was running is interrupted, not failed: the next run resumes it
            for job in jobs:
                if index.trials[job["name"]]["status"] == "running":
                    index.update(job["name"], status="pending")
            raise
    counts = index.counts()
    echo(f"sweep {spec.stem}: {counts['done']} done ({skipped} skipped as finished), {counts['failed']} failed"
         f" — index {out / INDEX_NAME}")
    for t in index.trials.values():
        if t["status"] == "failed" and t["error"]:
            echo(f"  failed {t['name']}: {t['error']['type']}: {t['error']['message']}  (log: {t['log']})")
        for arm, message in (t.get("diverged") or {}).items():
            echo(f"  done with a diverged arm {t['name']}: arm {arm}: {message}")
    return {**index.header, "counts": counts, "trials": list(index.trials.values())}


def dry_run(sweep: str | Path, out: str | Path | None = None, seed: int = 0) -> list[str]:
    """The trials a sweep would run (validated), one line each; writes nothing."""
    spec = load_sweep(sweep)
    out = Path(out) if out else default_out(spec)
    trials, duplicates = plan(spec, out, seed)
    lines = [f"sweep {spec.stem}: {len(trials)} trials of {spec.experiment} ({spec.method}) -> {out}"
             + (f"; {duplicates} duplicate configs merged" if duplicates else "")]
    for t in trials:
        state = "done" if (t.run_dir / "summary.json").is_file() else "to run"
        lines.append(f"  {t.name}  {' '.join(t.overrides) or '(base)'}  [{state}]")
    return lines
