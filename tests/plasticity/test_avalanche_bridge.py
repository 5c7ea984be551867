"""The Avalanche bridge: Avalanche strategies as arms, on our stream, scored by our evaluator.

The first two tests run everywhere (the core never imports avalanche; a missing extra is one clear
error). The rest need the `avalanche` extra and skip without it. They use one tiny experiment (three
Dirichlet phases in disjoint token ranges, a one-layer transformer, a few dozen steps) with the native
naive arm next to Avalanche's Naive, EWC, LwF, Replay, SI, A-GEM and GEM.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from plasticity.eval.evaluator import Evaluator, eval_schedule
from plasticity.run.build import build
from plasticity.run.config import ConfigError, load_config
from plasticity.run.experiment import Experiment
from plasticity.strategies import STRATEGIES, ArmLoop, build_strategy
from plasticity.strategies.lwf import distill_kl
from plasticity.train.loss import sequence_loss

ROOT = Path(__file__).resolve().parents[2]
EXTRA_MESSAGE = ("strategy 'avalanche.EWC' needs the avalanche extra: "
                 "pip install -e '.[avalanche]' -c constraints.txt")
# Avalanche's Naive and native naive see the same weights, batches, optimizer and clipping; only float
# reduction order differs (CrossEntropyLoss on [B, V, L] vs log_softmax + nll_loss), ~1e-9 bits measured.
NAIVE_TOLERANCE_BITS = 1e-4
WIDTH = 4  # each phase's token range: BOS + 3 symbols

AVALANCHE_ARMS = {
    "av_naive": {"strategy": "avalanche.Naive"},
    "av_ewc": {"strategy": "avalanche.EWC", "kwargs": {"ewc_lambda": 1000.0}},
    "av_lwf": {"strategy": "avalanche.LwF", "kwargs": {"alpha": 0.5, "temperature": 2.0}},
    "av_replay": {"strategy": "avalanche.Replay", "kwargs": {"mem_size": 40}, "phase0_batches": 6},
    "av_replay_reservoir": {"strategy": "avalanche.Naive", "phase0_batches": 30, "plugins": {
        "ReplayPlugin": {"mem_size": 40, "storage_policy": {"ReservoirSamplingBuffer": {"max_size": 40}}}}},
    "av_si": {"strategy": "avalanche.SynapticIntelligence", "kwargs": {"si_lambda": 1.0e4}},
    "av_agem": {"strategy": "avalanche.AGEM", "kwargs": {"patterns_per_exp": 16, "sample_size": 8}},
    "av_gem": {"strategy": "avalanche.GEM", "kwargs": {"patterns_per_exp": 16, "memory_strength": 0.5}},
}


def tiny_experiment(tmp_path: Path, arms: dict, steps=(30, 12, 12)) -> Path:
    phases = [{"name": f"p{i}", "family": "dirichlet", "params": {"n_symbols": WIDTH - 1, "length": 8},
               "steps": s, "offset": WIDTH * i} for i, s in enumerate(steps)]
    cfg = {
        "seed": 0,
        "stream": {"batch_size": 8, "eval_size": 32, "phases": phases},
        "model": {"name": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32},
        "arms": arms,
        "optim": {"lr": 1.0e-2, "warmup_steps": 5, "online_lr": 3.0e-3},
        "eval": {"every": 5, "batch_size": 32},
        "trainer": {"threads": 1, "workers": 1},  # the tests read the strategies' in-process state
        "progress": False,
        "plots": False,
        "logger": {"wandb": {"mode": "disabled"}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------- without avalanche
def test_importing_the_core_leaves_avalanche_out():
    code = (
        "import sys\n"
        "import plasticity, streams, plasticity.cli, plasticity.run.experiment, plasticity.strategies\n"
        "from plasticity.run.build import build\nfrom plasticity.run.config import load_config\n"
        "build(load_config('smoke', ['progress=false']))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'avalanche'"
        " or m.startswith('plasticity.avalanche_bridge'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def without_avalanche(monkeypatch):
    """As if avalanche-lib were not installed (an import of it raises ModuleNotFoundError)."""
    for name in list(sys.modules):
        if name.split(".")[0] == "avalanche" or name.startswith("plasticity.avalanche_bridge"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "avalanche", None)


def test_a_missing_extra_is_one_clear_error(without_avalanche):
    with pytest.raises(ValueError) as e:
        STRATEGIES.get("avalanche.EWC")
    assert str(e.value) == EXTRA_MESSAGE
    with pytest.raises(ValueError, match=re.escape(EXTRA_MESSAGE)):
        build_strategy("av_ewc", {"strategy": "avalanche.EWC", "kwargs": {"ewc_lambda": 1.0}})
    with pytest.raises(ConfigError, match=re.escape("needs the avalanche extra")):  # exit 2 at the CLI
        build(load_config("smoke", ["arms=[avalanche.Naive]", "progress=false"]))
    with pytest.raises(ModuleNotFoundError, match="needs the avalanche extra"):
        importlib.import_module("plasticity.avalanche_bridge")
    assert STRATEGIES.get("naive").name == "naive"  # native strategies are untouched


# ---------------------------------------------------------------------------------- with avalanche
@pytest.fixture(scope="module")
def bridge():
    pytest.importorskip("avalanche")
    return importlib.import_module("plasticity.avalanche_bridge")


@pytest.fixture(scope="module")
def tiny_run(bridge, tmp_path_factory):
    """One experiment: native naive and the Avalanche arms, forked from the same pretrained weights."""
    tmp = tmp_path_factory.mktemp("avalanche")
    cfg = load_config(str(tiny_experiment(tmp, {"naive": {"strategy": "naive"}, **AVALANCHE_ARMS})))
    exp = Experiment(build(cfg), tmp / "run")
    summary = exp.run()
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return exp, summary, rows, tmp / "run"


def test_avalanche_naive_ends_within_tolerance_of_native_naive(tiny_run):
    exp, summary, rows, _ = tiny_run
    native, avl = summary["arms"]["naive"], summary["arms"]["av_naive"]
    assert avl["strategy"] == "avalanche.Naive"
    assert avl["R_kl_bits"][0] == native["R_kl_bits"][0]  # the shared pretraining row
    for row_n, row_a in zip(native["R_kl_bits"], avl["R_kl_bits"], strict=True):
        for a, b in zip(row_n, row_a, strict=True):
            assert abs(a - b) <= NAIVE_TOLERANCE_BITS
    assert abs(native["final_kl_bits"] - avl["final_kl_bits"]) <= NAIVE_TOLERANCE_BITS
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ("naive", "av_naive")}
    # the same metrics rows: same steps, phases and fields, the same gradient-norm probe
    assert [(r["step"], r["eval_phase"]) for r in by_arm["naive"]] == [(r["step"], r["eval_phase"])
                                                                     for r in by_arm["av_naive"]]
    for rn, ra in zip(by_arm["naive"], by_arm["av_naive"]):
        assert set(rn) == set(ra) and rn["phase"] == ra["phase"]
        assert abs(rn["kl_bits"] - ra["kl_bits"]) <= NAIVE_TOLERANCE_BITS
        assert rn["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-3)


def test_naive_ewc_lwf_replay_si_agem_gem_run_through_the_bridge(tiny_run):
    exp, summary, rows, path = tiny_run
    n_phases = len(exp.stream.phases)
    steps = {r["step"] for r in rows if r["arm"] == "naive"}
    naive_final = summary["arms"]["naive"]["R_kl_bits"][-1]
    for arm, entry in AVALANCHE_ARMS.items():
        res = summary["arms"][arm]
        assert res["strategy"] == entry["strategy"] and "diverged" not in res
        R = res["R_kl_bits"]
        assert len(R) == n_phases and all(len(r) == n_phases and all(math.isfinite(v) for v in r) for r in R)
        for key in ("final_kl_bits", "forgetting_bits", "bwt_bits", "auc_kl"):
            assert key in res
        assert {r["step"] for r in rows if r["arm"] == arm} == steps
        assert (path / "checkpoints" / f"{arm}.pt").is_file()
        if arm != "av_naive":  # the strategy's plugin did something
            assert max(abs(a - b) for a, b in zip(R[-1], naive_final)) > 1e-5, arm


def test_the_cpu_fix_for_synaptic_intelligence_is_scoped_to_the_arm(tiny_run):
    # Avalanche 0.6.0's SI aliases the live weights on the CPU (fixes.py) and would train like Naive:
    # the run above saw it differ from naive; outside an arm Avalanche is as shipped.
    from avalanche.training.plugins import SynapticIntelligencePlugin

    from plasticity.avalanche_bridge.fixes import _extract_weights_copy

    assert SynapticIntelligencePlugin.extract_weights is not _extract_weights_copy


def test_the_avalanche_plugin_metric_gives_the_evaluators_R(tiny_run):
    exp, summary, _, _ = tiny_run
    for arm in AVALANCHE_ARMS:
        strategy = exp.built.strategies[arm]
        R = summary["arms"][arm]["R_kl_bits"]
        assert sorted(strategy.avalanche_R) == list(range(1, len(R)))  # a row after each trained phase
        for i, row in strategy.avalanche_R.items():
            assert row == pytest.approx(R[i], abs=1e-9)


def bare_experiment(tmp_path: Path, arm_entry: dict) -> tuple[ArmLoop, object, list[dict]]:
    """What the experiment hands an external-loop strategy, without a run directory (the model is a
    fresh one: the bridge does not care whether it was pretrained)."""
    cfg = load_config(str(tiny_experiment(tmp_path, {"arm": arm_entry})))
    built = build(cfg)
    stream = built.stream
    model = built.new_model(0)
    start, end = stream.phases[1].start, stream.total_steps
    rows: list[dict] = []
    banks = stream.eval_banks()
    phase_ends = [p.end for p in stream.phases]
    evaluator = Evaluator("arm", stream, banks, eval_schedule(cfg.eval.every, start, end, phase_ends),
                          cfg.eval.batch_size, False, 0.1, None, "pretrained", rows.extend)
    loop = ArmLoop("arm", model, stream, start, end, evaluator, built.device, cfg.optim, cfg.loss, cfg.eval.batch_size)
    return loop, built.strategies["arm"], rows


def recorder_plugin():
    from avalanche.training.plugins import SupervisedPlugin

    class Recorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

        def before_forward(self, strategy, **kwargs):
            exp = strategy.experience.current_experience
            self.seen.setdefault(exp, []).append((strategy.mb_x.clone(), strategy.mb_y.clone()))

    return Recorder()


@pytest.mark.parametrize("entry", [{"strategy": "avalanche.Naive"},
                                   {"strategy": "avalanche.Replay", "kwargs": {"mem_size": 40}, "phase0_batches": 6}],
                         ids=["naive", "replay"])
def test_every_iteration_trains_on_the_stream_batch_of_its_step(bridge, tmp_path, entry):
    from plasticity.avalanche_bridge.benchmark import next_token_targets

    loop, arm, _ = bare_experiment(tmp_path, entry)
    recorder = recorder_plugin()
    assert arm.run_arm(loop, plugins=[recorder]) is None
    stream, B = loop.stream, loop.stream.batch_size
    replay = entry["strategy"] == "avalanche.Replay"
    offset = 1 if entry.get("phase0_batches", 32) > 0 else 0  # exp 0: the phase-0 consolidation sample
    assert sorted(recorder.seen) == [offset + p - 1 for p in range(1, len(stream.phases))]  # exp 0 untrained
    for p in stream.phases[1:]:
        batches = recorder.seen[offset + p.index - 1]
        assert len(batches) == p.steps  # one epoch, one iteration per stream step
        for k, (x, y) in enumerate(batches):
            want = stream.batch(p.start + k)
            assert torch.equal(x[:B], want.tokens) and torch.equal(y[:B], next_token_targets(want))
            if replay:  # then the memory: a batch of earlier phases' sequences
                assert len(x) == 2 * B and int(x[B:].max()) < WIDTH * p.index
            else:
                assert len(x) == B


def test_a_non_finite_loss_stops_the_arm_with_a_message(bridge, tmp_path):
    from avalanche.training.plugins import SupervisedPlugin

    class Poison(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            if strategy.clock.train_exp_iterations == 3:
                strategy.loss = strategy.loss * float("nan")

    loop, arm, _ = bare_experiment(tmp_path, {"strategy": "avalanche.Naive"})
    message = arm.run_arm(loop, plugins=[Poison()])
    assert message is not None and "non-finite loss at step" in message
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())  # the bad update never happened


def test_logit_layout_and_criterion_match_the_native_loss(bridge):
    from plasticity.avalanche_bridge.benchmark import next_token_targets
    from streams import Stream

    stream = Stream.from_spec({"batch_size": 4, "phases": [{"family": "dirichlet", "params": {"length": 6},
                                                             "steps": 1}]}, seed=0)
    batch = stream.batch(0)
    torch.manual_seed(0)
    logits = torch.randn(*batch.tokens.shape, stream.vocab_size)
    model = bridge.SequenceLogits(torch.nn.Identity())
    out = model(logits)
    assert out.shape == (4, stream.vocab_size, batch.tokens.shape[1])  # [B, V, L]
    ce = bridge.sequence_criterion()(out, next_token_targets(batch))
    assert float(ce) == pytest.approx(float(sequence_loss(logits, batch, "sampled")), rel=1e-6)


def test_lwf_distils_over_the_vocabulary_with_the_documented_scaling(bridge):
    from avalanche.training import LearningWithoutForgetting

    torch.manual_seed(0)
    B, L, V, T, lam = 3, 7, 5, 2.0, 1.5
    teacher, student = torch.randn(B, L, V), torch.randn(B, L, V)
    native = lam * T * T * distill_kl(teacher, student, torch.ones(B, L, dtype=torch.bool), T)
    lwf = LearningWithoutForgetting(alpha=lam * T * T / L, temperature=T)  # alpha = lam·T²/positions
    avl = lwf.alpha * lwf._distillation_loss(student.transpose(1, 2), teacher.transpose(1, 2), set(range(V)))
    assert float(avl) == pytest.approx(float(native), rel=1e-5)


def test_sample_labels_are_the_phase_tokens(bridge):
    from streams import Stream

    steps = (6, 4)
    phases = [{"family": "dirichlet", "params": {"n_symbols": WIDTH - 1, "length": 8}, "steps": s,
               "offset": WIDTH * i} for i, s in enumerate(steps)]
    stream = Stream.from_spec({"batch_size": 8, "eval_size": 16, "phases": phases}, seed=0)
    bm = bridge.stream_benchmark(stream, first_phase=1, phase0_batches=3)
    assert bm.consolidation and bm.train_phases == [0, 1]
    for exp, p in zip(bm.train_stream, bm.train_phases):
        labels = exp.dataset.targets.uniques
        assert labels and all(WIDTH * p < t < WIDTH * (p + 1) for t in labels)  # symbols, not BOS
    assert len(bm.train_stream[1].dataset) == steps[1] * 8
    assert len(bm.test_stream) == len(steps)


def test_config_mistakes_name_the_key(bridge):
    cases = [
        ({"strategy": "avalanche.EWCC"}, "unknown Avalanche strategy 'avalanche.EWCC'.*Did you mean 'EWC'"),
        ({"strategy": "avalanche.EWC"}, "EWC needs ewc_lambda"),
        ({"strategy": "avalanche.EWC", "kwargs": {"ewc_lamda": 1.0}}, "kwargs.ewc_lamda.*Did you mean 'ewc_lambda'"),
        ({"strategy": "avalanche.Naive", "kwargs": {"train_mb_size": 4}}, "train_mb_size: set by the bridge"),
        ({"strategy": "avalanche.Naive", "plugins": {"FooPlugin": {}}}, "plugins.FooPlugin: not an Avalanche plugin"),
        ({"strategy": "avalanche.Naive", "ewc_lambda": 1.0}, "unknown parameter 'ewc_lambda'"),
        ({"strategy": "avalanche.Naive", "plugins": {"ReplayPlugin": {"storage_policy": {
            "ReservoirSamplingBuffer": {"maxsize": 40}}}}},
         "plugins.ReplayPlugin.storage_policy.ReservoirSamplingBuffer.maxsize.*Did you mean 'max_size'"),
        ({"strategy": "avalanche.Naive", "phase0_batches": -1}, "phase0_batches"),
    ]
    for entry, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            build_strategy("arm", entry)
    arm = build_strategy("arm", {"strategy": "avalanche.Naive", "plugins": {"RWalkPlugin": {}}})
    assert arm.external_loop and arm.name == "avalanche.Naive"


@pytest.mark.parametrize("name", ["avalanche_vs_native", "avalanche_frozen_vs_online"])
def test_the_shipped_comparison_configs_validate(bridge, name):
    cfg = load_config(name)
    build(cfg)
    strategies = {entry["strategy"] for entry in cfg.arms.values()}
    assert {"naive", "replay", "ewc", "lwf", "si", "avalanche.Naive", "avalanche.Replay", "avalanche.EWC",
            "avalanche.LwF", "avalanche.SynapticIntelligence"} <= strategies


def test_posterior_loss_with_an_avalanche_arm_is_refused_before_any_write(bridge, tmp_path, capsys):
    from plasticity.cli import main

    code = main(["run", "smoke", "arms=[naive,avalanche.Naive]", "loss=posterior", f"run.dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: loss=posterior: arm 'avalanche.Naive' (strategy 'avalanche.Naive') trains only with "
                   "loss=sampled"]
    assert not (tmp_path / "run").exists()
