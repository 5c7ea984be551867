"""Weights & Biases as a RunSink: one wandb run per arm, all arms of an experiment in one group.

The run directory stays the source of truth; wandb is a view of it. Nothing here may fail or stall the
run: every hook catches its own errors (warning once), init has a short timeout, an online init that
fails falls back to offline files under <run_dir>/wandb, and `wandb` is imported only when a sink starts
(so `import plasticity.experiment` never pays for it). See docs/wandb.md for the layout of the runs.
"""

from __future__ import annotations

import functools
import io
import math
import netrc
import os
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from plasticity.eval.rows import FRESH_ARM as FRESH
from plasticity.eval.rows import PRETRAIN_ARM as PRETRAIN
from plasticity.eval.rows import ROW_KEYS, ROW_METRICS, is_group_metric
from plasticity.run.rundir import git_commit
from plasticity.run.sinks import BackgroundSink, RunSink
from streams.checks import is_number

STEP = "stream_step"
MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}
DEFAULT_HOST = "https://api.wandb.ai"


# ------------------------------------------------------------------------------------------- mode
def api_key_configured() -> bool:
    """Whether wandb would find credentials without prompting (env or netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL")
    try:  # wandb's own lookup knows its current default host and the upstream it aliases
        import wandb
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=base_url or wandb.Settings().base_url))
    except Exception:  # noqa: BLE001 - private API or a malformed netrc: fall back to reading it ourselves
        pass
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    hosts = {urlsplit(base_url or DEFAULT_HOST).netloc}
    try:
        entries = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return False
    return any((entry := entries.authenticators(h)) and entry[2] for h in hosts)


def resolve_mode(mode: str | None = None) -> str:
    """logger.wandb.mode if set; else $WANDB_MODE (or $WANDB_DISABLED); else online with an API key, else
    offline (files kept for `wandb sync`)."""
    if mode:
        return _MODE_ALIASES.get(mode, mode)
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        env = _MODE_ALIASES.get(env, env)
        if env in MODES:
            return env
        _warn(f"WANDB_MODE={env!r} is not one of {', '.join(MODES)}; using offline")
        return "offline"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if api_key_configured() else "offline"


def _unset_empty_variables() -> None:
    """wandb validates every WANDB_* variable it reads, and an empty one (what `export WANDB_MODE=$MODE`
    leaves when MODE is unset) fails its Settings: it means unset, as in resolve_mode, so it goes before
    wandb reads it."""
    for key in [k for k, v in os.environ.items() if k.startswith("WANDB_") and not v.strip()]:
        del os.environ[key]


def default_sinks(cfg: Any) -> list[RunSink]:
    """The sinks a config asks for: a WandbSink unless the wandb mode resolves to disabled, in a thread of
    its own (its inits and phase-end images would otherwise hold up training)."""
    w = cfg.logger.wandb
    mode = resolve_mode(w.mode)
    if mode == "disabled":
        return []
    return [BackgroundSink(WandbSink(mode=mode, project=w.project, entity=w.entity, group=w.group,
                                     tags=list(w.tags or [])))]


def _warn(msg: str) -> None:
    print(f"warning: wandb: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- the sink
def _guarded(hook):
    """A wandb error inside a hook is reported once and swallowed: the run goes on, and so do later hooks
    (a transient failure loses one point, not the dashboard)."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        if self.mode == "disabled" or self._dead:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a dashboard must never take the run down
            self._failed(hook.__name__, e)
            return None

    return wrapper


class WandbSink(RunSink):
    """Streams a run to wandb: one wandb run per arm (job_type = arm) in one group per experiment.

    Arms forked from the shared pretraining get the pretraining evaluations replayed first, so each arm's
    curves cover the whole stream; the pretraining itself is also a run of its own, logged live.
    """

    def __init__(self, mode: str = "offline", project: str = "plasticity", entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, init_timeout: float = 20.0,
                 finish_timeout: float = 120.0, system_metrics: bool = True):
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in MODES:
            raise ValueError(f"wandb mode {mode!r}: must be one of {', '.join(MODES)}")
        self.mode, self.project, self.entity, self.group = mode, project, entity, group
        self.tags = list(tags or [])
        self.init_timeout, self.finish_timeout, self.system_metrics = init_timeout, finish_timeout, system_metrics
        self.failures = 0
        self.runs: dict[str, Any] = {}  # arm -> wandb Run
        self._dead = False
        self._announced = False
        self._wandb = None
        self._config: dict = {}
        self._run_dir: Path | None = None
        self._raw_names: dict[int, str] = {}  # eval phase index -> phase name
        self._names: dict[int, str] = {}  # eval phase index -> metric suffix
        self._pretrain_logs: list[dict] = []  # replayed into every forked arm's run
        self._last: dict[str, tuple[int, list[dict]]] = {}  # arm -> (step, rows) of its latest evaluation

    # -------------------------------------------------------------------------------------- hooks
    @_guarded
    def on_start(self, config: dict, run_dir: str) -> None:
        _unset_empty_variables()
        import wandb  # late: only a run that logs to wandb pays for the import

        self._wandb = wandb
        self._run_dir = Path(run_dir)
        self._config = dict(config)
        self._config.setdefault("git_commit", _git_commit(self._run_dir))
        self._config["run_dir"] = str(self._run_dir.resolve())

    @_guarded
    def on_rows(self, rows: list[dict]) -> None:
        by_arm: dict[str, list[dict]] = {}
        for r in rows:
            by_arm.setdefault(r["arm"], []).append(r)
        for arm, arm_rows in by_arm.items():
            data = self._log_dict(arm_rows)
            self._last[arm] = (data[STEP], arm_rows)
            if arm == PRETRAIN:
                self._pretrain_logs.append(data)
            run = self._run(arm)
            if run is not None:
                run.log(data)

    @_guarded
    def on_steps(self, arm: str, records: list[dict]) -> None:
        """The prequential figures, as the run sends them: means over blocks of steps (at most
        logger.wandb.max_step_points per arm), each at the block's last stream step."""
        for r in records:
            data = {STEP: r["step"], "prequential/kl_bits": r["kl_bits"], "prequential/nll_bits": r["nll_bits"],
                    "prequential/bayes_nll_bits": r["bayes_nll_bits"]}
            if arm == PRETRAIN:
                self._pretrain_logs.append(data)
            run = self._run(arm)
            if run is not None:
                run.log(data)

    @_guarded
    def on_phase_end(self, arm: str, phase: int, R_rows: dict[int, list[float]]) -> None:
        from plasticity.results.figures import MANY_PHASES  # late: matplotlib
        from plasticity.results.plots import calibration_figure, r_matrix_figure

        run = self._run(arm)
        if run is None:
            return
        wandb = self._wandb
        names = [self._phase_name(j) for j in range(max(len(r) for r in R_rows.values()))]
        n = len(names)
        if n > MANY_PHASES and phase != n - 1 and phase % math.ceil(n / MANY_PHASES):
            return  # a long stream's images at about MANY_PHASES phase ends, not at each (their cost is O(n))
        step, rows = self._last.get(arm, (None, []))
        data: dict[str, Any] = {STEP: step} if step is not None else {}
        if all(len(r) == len(names) for r in R_rows.values()):  # the fresh arm only sees its own phase
            table = wandb.Table(columns=["end of phase", *names],
                                data=[[self._phase_name(i), *R_rows[i]] for i in sorted(R_rows)])
            data["R/kl_bits_table"] = table
            data["R/kl_bits_heatmap"] = _image(wandb, r_matrix_figure(
                R_rows, names, f"{arm}: KL (bits) at the end of phase {phase} ({self._phase_name(phase)})"))
        current = [r for r in rows if r["eval_phase"] == phase]
        if current and (fig := calibration_figure({arm: current[0]}, names)) is not None:
            data[f"calibration/{self._phase_name(phase)}"] = _image(wandb, fig)
        run.log(data)

    @_guarded
    def on_summary(self, summary: dict) -> None:
        phases = summary.get("phases") or []
        for arm, run in self.runs.items():
            res = summary.get("arms", {}).get(arm)
            flat: dict[str, Any] = {}
            if isinstance(res, dict):
                flat.update(_flat_arm_summary(res, phases))
            for section in ("timing", "model"):
                for k, v in (summary.get(section) or {}).items():
                    if is_number(v):
                        flat[f"{section}/{k}"] = v
            try:  # one arm's failure does not cost the others their summary
                run.summary.update(flat)
            except Exception as e:  # noqa: BLE001
                self._failed("on_summary", e)

    def close(self) -> None:
        runs, self.runs = self.runs, {}
        for arm, run in runs.items():
            try:
                _call_with_timeout(run.finish, self.finish_timeout if self.mode == "online" else None)
            except Exception as e:  # noqa: BLE001
                _warn(f"finish of the {arm} run failed ({type(e).__name__}: {e}); its local files stay in "
                      f"{self._wandb_dir()}")
        if self.failures > 1:
            _warn(f"{self.failures} wandb calls failed during the run; the run directory has everything")

    # -------------------------------------------------------------------------------------- pieces
    def _failed(self, where: str, e: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            _warn(f"{where} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  "going on without it — the run directory has everything")

    def _wandb_dir(self) -> Path:
        return (self._run_dir or Path(".")) / "wandb"

    def _phase_name(self, j: int) -> str:
        return self._names.get(j, str(j))

    def _metric_names(self, rows: list[dict]) -> None:
        """Phase names as metric suffixes, prefixed by the index when names repeat (recurring phases)."""
        for r in rows:
            self._raw_names.setdefault(r["eval_phase"], str(r.get("eval_phase_name", r["eval_phase"])))
        unique = len(set(self._raw_names.values())) == len(self._raw_names)
        self._names = {j: n if unique else f"{j}_{n}" for j, n in self._raw_names.items()}

    def _log_dict(self, rows: list[dict]) -> dict[str, Any]:
        """One evaluation (one arm, one step, every eval phase) as one wandb.log payload."""
        if any(r["eval_phase"] not in self._names for r in rows):
            self._metric_names(rows)
        first = rows[0]
        data: dict[str, Any] = {STEP: first["step"], "train_phase": first["phase"]}
        kls = []
        for r in rows:
            name = self._phase_name(r["eval_phase"])
            for key in [*ROW_METRICS, *filter(is_group_metric, r)]:
                if is_number(r.get(key)):
                    data[f"{key}/{name}"] = r[key]
            if is_number(r.get("kl_bits")):
                kls.append(r["kl_bits"])
                if r["eval_phase"] == r["phase"]:
                    data["kl_bits/current_phase"] = r["kl_bits"]
        if kls and first["arm"] != FRESH:
            data["kl_bits/mean_over_phases"] = sum(kls) / len(kls)
        current = next((r for r in rows if r["eval_phase"] == r["phase"]), first)  # it alone has the geometry
        for key, value in current.items():  # probes: one value per evaluation
            probe = (key not in ROW_KEYS and key not in ROW_METRICS and not is_group_metric(key)
                     and not key.endswith("_by_position"))
            if probe and is_number(value):
                data[f"probes/{key}"] = value
        return data

    def _run(self, arm: str):
        if arm not in self.runs:
            run = self._init(arm)
            if run is None:
                return None
            self.runs[arm] = run
            if arm not in (PRETRAIN, FRESH):
                for data in self._pretrain_logs:  # the shared history this arm forked from
                    run.log(data)
        return self.runs[arm]

    def _init(self, arm: str):
        wandb = self._wandb
        if wandb is None or self._run_dir is None:
            return None
        self._run_dir.mkdir(parents=True, exist_ok=True)
        name = self._config.get("name", "run")
        entry = (self._config.get("arms") or {}).get(arm) or {}
        config = {"arm": arm, "strategy": entry.get("strategy", arm) if isinstance(entry, dict) else arm,
                  "experiment": name, **self._config}
        kwargs = dict(project=self.project, entity=self.entity, group=self.group or self._run_dir.name,
                      job_type=arm, name=f"{arm}@{self._run_dir.name}", tags=[*self.tags, name, arm],
                      config=config, dir=str(self._run_dir), reinit="create_new")
        try:
            try:
                run = wandb.init(mode=self.mode, settings=self._settings(), **kwargs)
            except Exception as e:  # noqa: BLE001
                if self.mode != "online":
                    raise
                _warn(f"online init failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      "logging offline instead")
                self.mode = "offline"
                run = wandb.init(mode="offline", settings=self._settings(), **kwargs)
        except Exception:
            self._dead = True  # no second wait on a wandb that cannot start
            raise
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)  # every metric on the stream step: phase changes drop nothing
        if self.mode == "offline" and not self._announced:
            self._announced = True
            d = self._wandb_dir()
            print(f"wandb: offline; run files in {d} (one run per arm). Upload with:\n  wandb sync {d}",
                  file=sys.stderr, flush=True)
        return run

    def _settings(self):
        Settings = self._wandb.Settings
        try:
            return Settings(init_timeout=self.init_timeout, silent=True, console="off",
                            x_disable_stats=not self.system_metrics)
        except Exception:  # noqa: BLE001 - a wandb version without one of these fields
            return Settings(init_timeout=self.init_timeout, silent=True)


# ------------------------------------------------------------------------------------------- helpers
def _flat_arm_summary(res: dict, phases: list[str]) -> dict[str, Any]:
    """An arm's summary.json entry as flat wandb summary keys: scalars as they are, per-phase lists as
    `<key>/<phase>`, plus forgetting_bits/mean over the phases before the last."""
    name = lambda j: phases[int(j)] if int(j) < len(phases) else str(j)  # noqa: E731
    out: dict[str, Any] = {}
    for key, value in res.items():
        if key == "R_kl_bits" and value:
            for j, v in enumerate(value[-1]):
                if is_number(v):
                    out[f"final_kl_bits/{name(j)}"] = v
        elif isinstance(value, str) or is_number(value):
            out[key] = value
        elif isinstance(value, list) and all(v is None or is_number(v) for v in value):
            out.update({f"{key}/{name(j)}": v for j, v in enumerate(value) if is_number(v)})
        elif isinstance(value, dict):
            out.update({f"{key}/{name(j)}": v for j, v in value.items() if is_number(v)})
    forgetting = [v for v in (res.get("forgetting_bits") or [])[:-1] if is_number(v)]
    if forgetting:
        out["forgetting_bits/mean"] = sum(forgetting) / len(forgetting)
    return out


def _image(wandb, fig):
    """A matplotlib Figure as a wandb.Image (PNG bytes through PIL: no pyplot state involved)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    buf.seek(0)
    return wandb.Image(Image.open(buf))


def _git_commit(run_dir: Path) -> str | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if config.get("git_commit"):
            return config["git_commit"]
    except (OSError, yaml.YAMLError):
        pass
    return git_commit()


def _call_with_timeout(fn, timeout: float | None) -> None:
    """Online finish() uploads what is left; with the network gone it could wait for minutes. Give it a
    bounded time in a daemon thread; the local .wandb file keeps everything for `wandb sync` anyway."""
    if timeout is None:
        fn()
        return
    error: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            error.append(e)

    t = threading.Thread(target=target, daemon=True, name="wandb-finish")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"wandb finish still uploading after {timeout:.0f} s; left it in the background")
    if error:
        raise error[0]
