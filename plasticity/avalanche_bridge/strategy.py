"""`AvalancheArm`: an arm trained by an Avalanche strategy, evaluated by our Evaluator.

`strategy: avalanche.<Name>` (any supervised strategy in `avalanche.training`, e.g. avalanche.EWC) with
`kwargs` (the Avalanche constructor's own arguments, e.g. `{ewc_lambda: 100}`) and optional `plugins`
(extra Avalanche plugins by class name, e.g. `{RWalkPlugin: {ewc_lambda: 0.1}}`). An argument that is
a replay buffer is written as `{ReservoirSamplingBuffer: {max_size: 2000}}` and built from config. The bridge owns the
arguments that make the arm comparable to a native one: the model (wrapped to [B, V, L] logits), the
optimizer (AdamW with the experiment's online_lr, betas and weight decay, the same parameter groups as
`WindTunnelModule`), the criterion (mean cross-entropy over scored positions), train_mb_size (the
stream's batch size), one epoch without shuffling, gradient clipping and evaluation (plugins.py).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import avalanche.training as avl_training
import avalanche.training.plugins as avl_plugins
import avalanche.training.storage_policy as avl_storage
from avalanche.core import BasePlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates.base_sgd import BaseSGDTemplate

from plasticity.avalanche_bridge.benchmark import StreamBenchmark, stream_benchmark
from plasticity.avalanche_bridge.fixes import avalanche_fixes
from plasticity.avalanche_bridge.metrics import PosteriorKL
from plasticity.avalanche_bridge.model import SequenceLogits, sequence_criterion, unwrap
from plasticity.avalanche_bridge.plugins import StepPlugin
from plasticity.strategies.base import ArmLoop, Strategy, check_param
from plasticity.train.optim import build_optimizer, build_scheduler
from plasticity.train.stopping import DivergenceError
from streams.checks import did_you_mean

PREFIX = "avalanche."
# Constructor arguments the bridge sets itself: they are what makes the arm comparable to native ones.
RESERVED = ("model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
            "plugins", "evaluator", "eval_every", "peval_mode")
R_TOLERANCE_BITS = 1e-6  # Avalanche's eval loop and our Evaluator see the same banks, model and batches


def strategy_classes() -> dict[str, type]:
    """Avalanche's supervised SGD strategies by class name (Naive, EWC, LwF, Replay, AGEM, ...)."""
    return {n: c for n in dir(avl_training) if isinstance(c := getattr(avl_training, n), type)
            and issubclass(c, BaseSGDTemplate) and not n.startswith("_") and "Template" not in n}


def plugin_classes() -> dict[str, type]:
    return {n: c for n in dir(avl_plugins) if isinstance(c := getattr(avl_plugins, n), type)
            and issubclass(c, BasePlugin) and n not in ("EvaluationPlugin", "SupervisedPlugin", "BasePlugin")}


def storage_policy_classes() -> dict[str, type]:
    """Replay buffers (ReservoirSamplingBuffer, ExperienceBalancedBuffer, ClassBalancedBuffer, ...): an
    argument written `{ReservoirSamplingBuffer: {max_size: 2000}}` is built from config."""
    base = avl_storage.ExemplarsBuffer
    return {n: c for n, c in vars(avl_storage).items() if isinstance(c, type) and issubclass(c, base)
            and not n.startswith("_") and not inspect.isabstract(c)}


def _object_spec(value: Any) -> tuple[type, dict] | None:
    """(class, arguments) when `value` is `{AvalancheClass: {argument: value}}`, else None."""
    if isinstance(value, dict) and len(value) == 1:
        (name, kw), = value.items()
        cls = storage_policy_classes().get(name)
        if cls is not None and (kw is None or isinstance(kw, dict)):
            return cls, dict(kw or {})
    return None


def _instantiate(kwargs: dict) -> dict:
    """Arguments with `{AvalancheClass: {...}}` values built into objects (fresh ones at every call)."""
    out = {}
    for key, value in kwargs.items():
        spec = _object_spec(value)
        out[key] = spec[0](**_instantiate(spec[1])) if spec is not None else value
    return out


def constructor_args(cls: type) -> tuple[list[str], list[str]]:
    """(accepted keyword arguments, required ones) of `cls(...)`, following **kwargs up the MRO."""
    accepted: list[str] = []
    required: list[str] = []
    for depth, klass in enumerate(k for k in cls.__mro__ if "__init__" in vars(k)):
        if klass is object:
            break
        params = inspect.signature(klass.__init__).parameters
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name not in accepted:
                accepted.append(name)
            if depth == 0 and p.default is inspect.Parameter.empty:
                required.append(name)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return accepted, required


def _check_kwargs(where: str, cls: type, kwargs: Any, reserved: tuple[str, ...] = ()) -> None:
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}={kwargs!r}: must be a mapping of keyword arguments")
    accepted, required = constructor_args(cls)
    allowed = [a for a in accepted if a not in reserved]
    for key in kwargs:
        if key in reserved:
            raise ValueError(f"{where}.{key}: set by the bridge (so that the arm compares with native ones); "
                             f"remove it")
        if key not in allowed:
            raise ValueError(f"{where}.{key}: not an argument of {cls.__name__}; allowed: {', '.join(allowed)}."
                             f"{did_you_mean(str(key), allowed)}")
    for key, value in kwargs.items():
        spec = _object_spec(value)
        if spec is not None:
            _check_kwargs(f"{where}.{key}.{spec[0].__name__}", spec[0], spec[1])
    missing = [r for r in required if r not in reserved and r not in kwargs]
    if missing:
        raise ValueError(f"{where}: {cls.__name__} needs {', '.join(missing)} (e.g. {where}.{missing[0]}=...)")


class AvalancheArm(Strategy):
    name = "avalanche"
    external_loop = True
    losses = ("sampled",)  # Avalanche's criterion takes class labels: the sampled next tokens
    avalanche_class: ClassVar[type | None] = None  # set on the per-name subclasses

    @dataclass
    class Params:
        kwargs: dict = field(default_factory=dict)  # the Avalanche strategy's own constructor arguments
        plugins: dict = field(default_factory=dict)  # extra Avalanche plugins: {ClassName: {argument: value}}
        # Phase-0 batches in the consolidation experience that precedes phase 1 (not trained on; its
        # end-of-experience hooks give EWC its phase-0 Fisher, replay buffers phase-0 data...). 0: none,
        # the Avalanche strategy starts cold at phase 1.
        phase0_batches: int = 32
        avalanche_eval: bool = True  # also run Avalanche's eval loop (PosteriorKL) after each phase

    def check(self, p: Params) -> None:
        if self.avalanche_class is None:
            raise ValueError("strategy 'avalanche': name the Avalanche strategy, e.g. strategy: avalanche.EWC")
        _check_kwargs(f"strategy '{self.name}': kwargs", self.avalanche_class, p.kwargs, RESERVED)
        if not isinstance(p.plugins, dict):
            raise ValueError(f"strategy '{self.name}': plugins={p.plugins!r}: must be a mapping "
                             "{PluginClass: {argument: value}}")
        known = plugin_classes()
        for plugin, kw in p.plugins.items():
            if plugin not in known:
                names = sorted(known)
                raise ValueError(f"strategy '{self.name}': plugins.{plugin}: not an Avalanche plugin; known: "
                                 f"{', '.join(names)}.{did_you_mean(str(plugin), names)}")
            _check_kwargs(f"strategy '{self.name}': plugins.{plugin}", known[plugin], kw or {})
        check_param(self.name, "phase0_batches", p.phase0_batches,
                    type(p.phase0_batches) is int and p.phase0_batches >= 0, "an integer >= 0")
        check_param(self.name, "avalanche_eval", p.avalanche_eval, isinstance(p.avalanche_eval, bool),
                    "true or false")

    # ------------------------------------------------------------------ the arm
    def build(self, loop: ArmLoop, plugins: Sequence = ()) -> tuple[Any, StreamBenchmark, StepPlugin]:
        """The Avalanche strategy over `loop.model`, the benchmark for stream steps [loop.start, loop.end),
        and the step plugin; nothing is trained yet. `plugins` (instances) run right after the step plugin."""
        stream, start, end = loop.stream, loop.start, loop.end
        first = stream.phase_at(start)
        if stream.phases[first].start != start or end != stream.total_steps:
            raise ValueError(f"strategy '{self.name}': an Avalanche arm trains whole phases to the end of "
                             f"the stream (got steps [{start}, {end}))")
        benchmark = stream_benchmark(stream, loop.evaluator.banks, first, self.params.phase0_batches)
        # The native online arm's optimizer, built by the same code: AdamW, decay only on matrices.
        optimizer = build_optimizer(loop.model, loop.optim, loop.optim.online_lr)
        scheduler = build_scheduler(optimizer, "constant", 0, end - start, loop.optim.min_lr_ratio)
        steps = StepPlugin(benchmark, loop, scheduler)
        self.kl_metric = PosteriorKL(benchmark.train_phases)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*No loggers specified.*")  # we log through our sinks
            evaluation = EvaluationPlugin(self.kl_metric, loggers=[])
        extra = [plugin_classes()[n](**_instantiate(kw or {})) for n, kw in self.params.plugins.items()]
        strategy = self.avalanche_class(
            model=SequenceLogits(loop.model), optimizer=optimizer, criterion=sequence_criterion(),
            train_mb_size=stream.batch_size, train_epochs=1, eval_mb_size=loop.eval_batch_size,
            device=loop.device, plugins=[steps, *plugins, *extra], evaluator=evaluation, eval_every=-1,
            **_instantiate(self.params.kwargs),
        )
        return strategy, benchmark, steps

    def run_arm(self, loop: ArmLoop, plugins: Sequence = ()) -> str | None:
        strategy, benchmark, steps = self.build(loop, plugins)
        self.avalanche_strategy, self.benchmark = strategy, benchmark
        with quiet_avalanche_deprecations(), avalanche_fixes():
            diverged = self._train(strategy, benchmark, loop.model)
        self.avalanche_R = {i: [row[j] for j in sorted(row)] for i, row in self.kl_metric.R.items()}
        self._cross_check(loop.arm, loop.evaluator)
        return diverged

    def _train(self, strategy, benchmark, model) -> str | None:
        diverged = None
        try:
            for i, exp in enumerate(benchmark.train_stream):
                if benchmark.consolidation and i == 0:
                    self._consolidate(strategy, exp)
                    continue
                strategy.train(exp, eval_streams=[], shuffle=False, num_workers=0)
                if self.params.avalanche_eval:
                    strategy.eval(benchmark.test_stream, num_workers=0)
        except DivergenceError as e:
            diverged = str(e)  # the experiment reports it, as for a native arm
        finally:
            trained = unwrap(strategy.model)  # GDumb, for one, trains a copy of the model
            if trained is not model:
                model.load_state_dict(trained.state_dict())
        return diverged

    def _consolidate(self, strategy, exp) -> None:
        """The phase-0 experience: no iteration, only the plugins' experience hooks."""
        try:
            strategy.train(exp, eval_streams=[], shuffle=False, num_workers=0)
        except (AssertionError, RuntimeError, ValueError, TypeError, ZeroDivisionError, KeyError) as e:
            raise ValueError(
                f"strategy '{self.name}': a plugin failed on the phase-0 consolidation experience, which is "
                f"not trained on ({type(e).__name__}: {e}); set phase0_batches: 0 for this arm"
            ) from e

    def _cross_check(self, arm: str, evaluator) -> None:
        """Avalanche's eval loop with PosteriorKL must give our Evaluator's R rows."""
        worst = 0.0
        for i, row in self.avalanche_R.items():
            ours = evaluator.R.get(i)
            if ours is not None:
                worst = max([worst] + [abs(a - b) for a, b in zip(row, ours) if math.isfinite(a) and math.isfinite(b)])
        if worst > R_TOLERANCE_BITS:
            warnings.warn(f"arm '{arm}': Avalanche's PosteriorKL and the Evaluator disagree on R by {worst:.2e} bits",
                          stacklevel=2)


@contextmanager
def quiet_avalanche_deprecations():
    """Hide the DeprecationWarnings raised inside Avalanche's own code (0.6 calls its own deprecated
    `storage_policy.update`, numpy 2 deprecates what SI's update does): they are not the user's to fix.
    Avalanche's `@deprecated` resets the filters (`simplefilter("once")`) at every call, so filtering
    cannot hide them; the display hook can, restored on exit like the filters."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def quiet(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DeprecationWarning) and f"{os.sep}avalanche{os.sep}" in str(filename):
                return
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = quiet
        yield


_CLASSES: dict[str, type[AvalancheArm]] = {}


def avalanche_strategy_class(name: str) -> type[AvalancheArm]:
    """The arm class for `avalanche.<Name>`; ValueError for an unknown Avalanche strategy."""
    short = name[len(PREFIX):] if name.startswith(PREFIX) else name
    known = strategy_classes()
    if short not in known:
        names = sorted(known)
        raise ValueError(f"unknown Avalanche strategy '{name}'; known: {', '.join(PREFIX + n for n in names)}."
                         f"{did_you_mean(short, names)}")
    full = PREFIX + short
    if full not in _CLASSES:
        _CLASSES[full] = type(f"Avalanche{short}", (AvalancheArm,),
                              {"name": full, "avalanche_class": known[short], "__module__": __name__,
                               "__doc__": f"Avalanche's {short} as an arm (see AvalancheArm)."})
    return _CLASSES[full]


__all__ = ["PREFIX", "RESERVED", "AvalancheArm", "avalanche_strategy_class", "constructor_args",
           "plugin_classes", "strategy_classes"]
