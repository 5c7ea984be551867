"""Calibration at every step: the prequential KL of every training batch, before its update, equals the
evaluator's KL of the same batch with the pre-update weights; a frozen arm's equals a direct forward pass;
the regret is the sum of the per-step values times their scored tokens; the derived figures (adaptation
time, shift cost) of a hand-made curve are the ones computed by hand."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from plasticity.entry import run
from plasticity.eval.calibration import calibration, step_calibration
from plasticity.eval.evaluator import evaluate_bank
from plasticity.eval.prequential import Prequential, phase_figures
from plasticity.models import build_model
from plasticity.run.config import load_config
from plasticity.run.steplog import Blocks, StepLog, read_steps
from plasticity.strategies import build_strategy
from plasticity.train.data import stream_loader
from plasticity.train.lightning_module import WindTunnelModule
from plasticity.train.optim import OptimConfig
from tests.plasticity.test_strategies import tiny_stream

LN2 = math.log(2.0)
TINY = ["progress=false", "plots=false", "trainer.threads=1", "eval.every=10", "model.d_model=16", "model.d_ff=32",
        "model.n_heads=2", "stream.phases.0.steps=40", "stream.phases.1.steps=30"]


class PreUpdate(pl.Callback):
    """At every step, the evaluator's KL of the stream batch with the weights before the update."""

    def __init__(self):
        self.kl: dict[int, float] = {}
        self._model = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._model = copy.deepcopy(pl_module.model)
        self._step = pl_module.stream_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.kl[self._step] = evaluate_bank(self._model, batch, 256, torch.device("cpu"))["kl_bits"]


@pytest.mark.parametrize("strategy", ["naive", "replay"])  # replay trains on more than the stream's batch
def test_the_step_kl_is_the_evaluators_kl_of_the_batch_before_the_update(strategy):
    stream = tiny_stream(steps=(6, 8))
    torch.manual_seed(0)
    model = build_model({"name": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32},
                        stream.vocab_size, stream.max_seq_len)
    arm = build_strategy("a", {"strategy": strategy, **({"buffer_size": 8} if strategy == "replay" else {})})
    start, end = stream.phases[1].start, stream.phases[1].end
    module = WindTunnelModule(model, OptimConfig(lr=1e-2, warmup_steps=0), "sampled", stream, start, end - start,
                              lr=1e-2, schedule="constant", warmup_steps=0, strategy=arm)
    arm.attach(module, stream, {k: v.clone() for k, v in model.state_dict().items()})
    records: dict[int, torch.Tensor] = {}
    reference = PreUpdate()
    trainer = pl.Trainer(max_steps=end - start, max_epochs=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[reference, Prequential(stream, lambda s, p, v: records.__setitem__(s, v)), arm])
    trainer.fit(module, stream_loader(stream, start, end))
    assert sorted(records) == list(range(start, end))
    for step, sums in records.items():
        kl, nll, bayes, n, general = sums.tolist()
        assert math.isnan(general)  # no task pool: no second yardstick
        assert n == stream.batch(step).scored.sum()  # the stream's own sequences, not the replayed ones
        assert kl / n / LN2 == pytest.approx(reference.kl[step], abs=1e-9, rel=0)
    if strategy == "replay":  # the trained batch was larger: the figures are not of it
        assert len(arm.buffer) > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("prequential")
    summary = run(load_config("smoke", [*TINY, "arms=[frozen,naive]", "fresh=true"]), path)
    return summary, path


def test_step_calibration_equals_the_accumulator_on_hard_inputs():
    """The per-step sums (no log-softmax materialised) against CalibrationAccumulator's float64 log-softmax:
    logits spread over ±60, posteriors with exact zeros, a general posterior, half the positions scored."""
    g = torch.Generator().manual_seed(3)
    B, T, V = 7, 9, 11
    logits = (torch.randn(B, T, V, generator=g) * 20).clamp(-60, 60)
    posterior = torch.rand(B, T, V, generator=g, dtype=torch.float64) * (torch.rand(B, T, V, generator=g) > 0.4)
    posterior[..., 0] += 1e-3  # every row has mass
    posterior /= posterior.sum(-1, keepdim=True)
    general = torch.softmax(torch.randn(B, T, V, generator=g, dtype=torch.float64), -1)
    scored = torch.rand(B, T, generator=g) < 0.5
    scored[:, -1] = False
    # next tokens drawn from the posterior, so the Bayes NLL is finite
    tokens = torch.zeros(B, T, dtype=torch.long)
    tokens[:, 1:] = torch.multinomial(posterior[:, :-1].reshape(-1, V), 1, generator=g).reshape(B, T - 1)
    kl, nll, bayes, n, kl_general = step_calibration(logits, posterior, scored, tokens, general).tolist()
    ref = calibration(logits, posterior, scored, tokens, general)
    assert n == ref["n_scored"] == int(scored.sum())
    assert kl / n / LN2 == pytest.approx(ref["kl_bits"], abs=1e-12, rel=0)
    assert kl_general / n / LN2 == pytest.approx(ref["kl_bits_general"], abs=1e-12, rel=0)
    assert nll / n / LN2 == pytest.approx(ref["nll_bits"], abs=1e-12, rel=0)
    assert bayes / n / LN2 == pytest.approx(ref["bayes_nll_bits"], abs=1e-12, rel=0)
    assert math.isnan(step_calibration(logits, posterior, scored, tokens)[4])


def test_every_unit_has_one_record_per_step(tiny_run):
    _, path = tiny_run
    expected = {"pretrained": range(0, 40), "naive": range(40, 70), "frozen": range(40, 70), "fresh@1": range(40, 70)}
    for unit, steps in expected.items():
        records = read_steps(path / "steps" / f"{unit}.csv")
        assert [r["step"] for r in records] == list(steps), unit
        assert all(r["phase"] == (0 if r["step"] < 40 else 1) for r in records)


def test_the_frozen_arms_record_is_a_forward_pass_of_the_pretrained_weights(tiny_run):
    _, path = tiny_run
    from plasticity.run.build import build

    built = build(load_config("smoke", [*TINY, "arms=[frozen,naive]", "fresh=true"]))
    model = built.new_model(0)
    model.load_state_dict(torch.load(path / "checkpoints" / "pretrained.pt", weights_only=True)["model"])
    model.eval()
    records = {r["step"]: r for r in read_steps(path / "steps" / "frozen.csv")}
    for step in (40, 55, 69):
        batch = built.stream.batch(step)
        with torch.no_grad():
            direct = calibration(model(batch.tokens), batch.posterior, batch.scored, batch.tokens)
        assert records[step]["kl_bits"] == pytest.approx(direct["kl_bits"], abs=1e-9, rel=0)
        assert records[step]["nll_bits"] == pytest.approx(direct["nll_bits"], abs=1e-9, rel=0)
        assert records[step]["bayes_nll_bits"] == pytest.approx(direct["bayes_nll_bits"], abs=1e-9, rel=0)


def test_the_regret_is_the_sum_of_the_step_kls_times_their_tokens(tiny_run):
    summary, path = tiny_run
    for arm, unit in (("naive", "naive"), ("frozen", "frozen")):
        records = read_steps(path / "steps" / f"{unit}.csv")
        by_hand = sum(r["kl_bits"] * r["n_scored"] for r in records)
        res = summary["arms"][arm]
        assert res["regret_bits"][1] == pytest.approx(by_hand, rel=1e-12)
        assert res["regret_bits_online"] == pytest.approx(by_hand, rel=1e-12)
        assert res["regret_bits_per_token"][1] == pytest.approx(by_hand / sum(r["n_scored"] for r in records))
        pre = sum(r["kl_bits"] * r["n_scored"] for r in read_steps(path / "steps" / "pretrained.csv"))
        assert res["regret_bits"][0] == pytest.approx(pre, rel=1e-12)  # phase 0: the shared pretraining's
    fresh = summary["arms"]["fresh"]
    naive = summary["arms"]["naive"]
    assert naive["warm_start_regret_bits"][1] == pytest.approx(naive["regret_bits"][1] - fresh["regret_bits"][1])
    on_disk = json.loads((path / "summary.json").read_text())
    assert on_disk["arms"]["naive"]["regret_bits"] == naive["regret_bits"]


def test_adaptation_time_and_shift_cost_of_a_hand_made_curve():
    # Phase 1 of 100 steps from step 100: KL 1 bit for 10 steps, then 0.1; 2 scored tokens per step.
    phases = [SimpleNamespace(start=0, steps=100), SimpleNamespace(start=100, steps=100)]
    records = [{"step": 100 + k, "phase": 1, "n_scored": 2, "kl_bits": 1.0 if k < 10 else 0.1} for k in range(100)]
    f = phase_figures(records, phases, window=1, factor=1.5, tolerance=0.001, steady_fraction=0.1,
                      shift_steps=50)[1]
    assert f["steady_kl_bits"] == pytest.approx(0.1)
    assert f["adaptation_steps"] == 10  # the 11th prediction, after 10 updates, is within 1.5 x 0.1 + 0.001
    assert f["shift_cost_bits"] == pytest.approx(10 * (1.0 - 0.1) * 2)
    assert f["regret_bits"] == pytest.approx(2 * (10 * 1.0 + 90 * 0.1))
    assert f["regret_bits_per_token"] == pytest.approx((10 * 1.0 + 90 * 0.1) / 100)
    # A running mean over 4 steps reaches the bound 3 steps later: mean(1, .1, .1, .1) = 0.325 > 0.151 at 12
    slow = phase_figures(records, phases, window=4, factor=1.5, tolerance=0.001, steady_fraction=0.1,
                         shift_steps=50)[1]
    assert slow["adaptation_steps"] == 13
    # Still falling at the end: a 20-step running mean stays above the last 10 steps' mean (factor 1, no slack)
    falling = [{**r, "kl_bits": 1.0 - 0.009 * (r["step"] - 100)} for r in records]
    assert phase_figures(falling, phases, 20, 1.0, 0.0, 0.1, 50)[1]["adaptation_steps"] is None
    rising = [{**r, "kl_bits": 0.01 * (r["step"] - 99)} for r in records]  # worst at the end: always within
    assert phase_figures(rising, phases, 1, 1.5, 0.0, 0.1, 50)[1]["adaptation_steps"] == 0


def test_blocks_are_token_weighted_means_at_their_last_step():
    blocks = Blocks(4)
    records = [{"step": s, "phase": 0, "n_scored": s + 1, "kl_bits": float(s), "nll_bits": 1.0,
                "bayes_nll_bits": 0.5} for s in range(10)]
    done = blocks.add(records[:6]) + blocks.add(records[6:]) + blocks.rest()
    assert [b["step"] for b in done] == [3, 7, 9]
    w = [s + 1 for s in range(4)]
    assert done[0]["kl_bits"] == pytest.approx(sum(s * ws for s, ws in zip(range(4), w)) / sum(w))
    assert done[0]["n_scored"] == sum(w) and done[2]["nll_bits"] == pytest.approx(1.0)


def test_a_resumed_log_drops_the_steps_after_the_checkpoint_and_a_torn_line(tmp_path):
    log = StepLog(tmp_path / "u.csv")
    for s in range(10):
        log.add((s, 0, torch.tensor([float(s), 2.0, 1.0, 4.0, float("nan")], dtype=torch.float64)))
    log.flush()
    with open(tmp_path / "u.csv", "a") as f:
        f.write("10,0,4,0.12")  # cut short by a crash: no newline
    assert [r["step"] for r in read_steps(tmp_path / "u.csv")] == list(range(10))
    log.truncate(6)
    assert [r["step"] for r in read_steps(tmp_path / "u.csv")] == list(range(6))
    assert read_steps(tmp_path / "u.csv")[5]["kl_bits"] == pytest.approx(5.0 / 4 / LN2)
