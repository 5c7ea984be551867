"""Continual strategies: each does what its paper says, on a tiny transformer over a tiny stream.

The stream has three Dirichlet phases in disjoint token ranges (offsets 0, 4, 8), so a token tells which
phase a sequence came from. Arms run through a real pl.Trainer like the experiment does; probes are
test subclasses that record state around the strategy's own hooks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from plasticity.models import build_model
from plasticity.models.units import ActivityCapture
from plasticity.run.build import build
from plasticity.run.config import load_config, to_container
from plasticity.strategies import STRATEGIES, build_strategy
from plasticity.strategies.base import strategy_generator, strategy_seed
from plasticity.strategies.cbp import CBP
from plasticity.strategies.ewc import EWC, fisher_diagonal, fisher_targets
from plasticity.strategies.l2_init import L2Init
from plasticity.strategies.lwf import LwF, distill_kl
from plasticity.strategies.naive import Naive
from plasticity.strategies.redo import ReDo
from plasticity.strategies.reinit import fresh_state, reinit_units
from plasticity.strategies.replay import Replay
from plasticity.strategies.reset import Reset
from plasticity.strategies.shrink_perturb import ShrinkPerturb
from plasticity.strategies.si import SI
from plasticity.train.data import stream_loader
from plasticity.train.lightning_module import WindTunnelModule
from plasticity.train.loss import sequence_loss
from plasticity.train.optim import OptimConfig
from streams import Stream

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 4  # each phase's token range: BOS + 3 symbols


def tiny_stream(steps=(4, 6, 6), batch_size=4, length=6, seed=0) -> Stream:
    phases = [
        {"name": f"p{i}", "family": "dirichlet", "params": {"n_symbols": WIDTH - 1, "length": length},
         "steps": s, "offset": WIDTH * i}
        for i, s in enumerate(steps)
    ]
    return Stream.from_spec({"batch_size": batch_size, "eval_size": 8, "phases": phases}, seed=seed)


def tiny_model(stream: Stream, seed=0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = {"name": "transformer", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, **kw}
    return build_model(spec, stream.vocab_size, stream.max_seq_len)


def pretrained_pair(stream: Stream, seed=0):
    """(model, init_state): the 'pretrained' weights are the init moved by noise, so θ ≠ θ₀."""
    model = tiny_model(stream, seed)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, init_state


def make_module(model, stream, strategy, start, end, lr=1e-2, device="cpu"):
    optim = OptimConfig(lr=lr, warmup_steps=0, weight_decay=0.01)
    module = WindTunnelModule(model.to(device), optim, "sampled", stream, start, end - start, lr=lr,
                              schedule="constant", warmup_steps=0, strategy=strategy)
    return module


def run_arm(strategy, stream=None, model=None, init_state=None, first_phase=1, last_phase=1, lr=1e-2,
            device="cpu"):
    """Train `strategy`'s arm over phases [first_phase, last_phase] like Experiment.run_arm does."""
    stream = stream or tiny_stream()
    if model is None:
        model, init_state = pretrained_pair(stream)
    start, end = stream.phases[first_phase].start, stream.phases[last_phase].end
    module = make_module(model, stream, strategy, start, end, lr, device)
    strategy.attach(module, stream, init_state)
    trainer = pl.Trainer(max_steps=end - start, max_epochs=1, accelerator="gpu" if device == "cuda" else "cpu",
                         devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[strategy])
    trainer.fit(module, stream_loader(stream, start, end))
    return module


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def sq_distance(model, ref: dict[str, torch.Tensor]) -> float:
    return sum(float((p.detach().cpu() - ref[n].cpu()).pow(2).sum()) for n, p in model.named_parameters())


# ---------------------------------------------------------------------------------------------------
# Registry, configs, parameters


ALL = ["replay", "ewc", "si", "lwf", "l2_init", "shrink_perturb", "cbp", "redo", "reset"]


@pytest.mark.parametrize("name", ALL)
def test_registered_with_a_description_and_its_defaults_recorded_by_the_run(name):
    cls = STRATEGIES.get(name)
    assert cls.name == name and cls.description
    cfg = load_config("smoke", [f"arms=[{name}]", "progress=false"])
    build(cfg)  # the config, built, spells out every parameter: the run records what ran
    entry = to_container(cfg.arms[name])
    assert entry == {"strategy": name, **dataclasses.asdict(cls.Params())}
    assert build_strategy("arm", entry).params == cls.Params()


def test_ddp_safety_is_declared_by_the_strategy():
    unsafe = {n for n in STRATEGIES.names() if not STRATEGIES.get(n).ddp_safe}
    assert unsafe == {"shrink_perturb", "cbp", "redo", "reset"}


BAD = [
    ("replay", "buffer_size", 0), ("replay", "replay_fraction", -0.5), ("replay", "seed", -1),
    ("ewc", "lam", -1.0), ("ewc", "gamma", 1.5), ("ewc", "fisher_batches", 0), ("ewc", "fisher", "exact"),
    ("si", "c", -1.0), ("si", "xi", 0.0),
    ("lwf", "lam", float("nan")), ("lwf", "temperature", 0.0),
    ("l2_init", "lam", -1e-3), ("l2_init", "target", "pretrained"),
    ("shrink_perturb", "shrink", 1.5), ("shrink_perturb", "sigma", -0.1), ("shrink_perturb", "every", -1),
    ("cbp", "replacement_rate", 2.0), ("cbp", "decay_rate", 1.0), ("cbp", "maturity_threshold", 1.5),
    ("redo", "every", 0), ("redo", "tau", 1.0),
    ("reset", "seed", "x"),
]


@pytest.mark.parametrize("name,key,value", BAD)
def test_bad_parameters_name_the_parameter(name, key, value):
    with pytest.raises(ValueError, match=rf"arms\.a: strategy '{name}': {key}="):
        build_strategy("a", {"strategy": name, key: value})


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValueError, match="unknown parameter 'lamda'.*Did you mean 'lam'"):
        build_strategy("a", {"strategy": "ewc", "lamda": 1.0})


def test_yaml_boolean_true_means_the_true_fisher():
    assert build_strategy("a", {"strategy": "ewc", "fisher": True}).params.fisher == "true"


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALL)
def test_every_strategy_trains_through_two_phases(name, device):
    # Small enough settings that every mechanism fires within the 12 steps.
    extra = {"replay": {"buffer_size": 8}, "ewc": {"fisher_batches": 2},
             "cbp": {"maturity_threshold": 2, "replacement_rate": 0.05}, "redo": {"every": 3, "tau": 0.9},
             "shrink_perturb": {"every": 4}}.get(name, {})
    strategy = build_strategy("a", {"strategy": name, **extra})
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    init_state = {k: v.to(device) for k, v in init_state.items()}
    module = run_arm(strategy, stream, model.to(device), init_state, last_phase=2, device=device)
    assert module.current_phase == 2
    assert math.isfinite(module.last_finite_loss)
    assert all(p.device.type == device for p in module.model.parameters())
    if name in ("cbp", "redo"):
        assert strategy.replaced > 0


# ---------------------------------------------------------------------------------------------------
# Shared re-initialization helpers


def test_fresh_state_is_the_architectures_init_and_leaves_global_rng_alone():
    stream = tiny_stream()
    model = tiny_model(stream)
    state = torch.random.get_rng_state()
    a, b = fresh_state(model, 1), fresh_state(model, 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = fresh_state(model, 2)
    w = "blocks.0.mlp.fc.weight"
    assert not torch.equal(a[w], c[w])
    assert a[w].std().item() == pytest.approx(0.02, rel=0.25)  # the transformer's GPT-2 init std
    assert torch.equal(a["blocks.0.ln1.weight"], torch.ones(16))


def test_reinit_units_redraws_rows_zeroes_columns_and_moments():
    stream = tiny_stream()
    model = tiny_model(stream)
    layer = model.unit_layers()[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = stream.batch(0).tokens
    model(tokens).pow(2).mean().backward()
    opt.step()
    idx = torch.tensor([1, 5, 7])
    keep = torch.tensor([0, 2, 3])
    with torch.no_grad():
        layer.in_linear.weight[idx] = 9.0
        layer.in_linear.bias[idx] = 9.0
    before_in = layer.in_linear.weight.detach().clone()
    before_moment = opt.state[layer.out_linear.weight]["exp_avg"].clone()
    reinit_units(layer, idx, opt, strategy_generator(0))
    w_in, w_out = layer.in_linear.weight, layer.out_linear.weight
    assert (w_in[idx].abs() < 1.0).all() and (w_in[idx] != 0).any()  # re-drawn at std init_std
    assert torch.equal(w_in[keep], before_in[keep])
    assert torch.equal(layer.in_linear.bias[idx], torch.zeros(3))
    assert torch.equal(w_out[:, idx], torch.zeros(w_out.shape[0], 3))
    for p, index in ((layer.in_linear.weight, idx), (layer.in_linear.bias, idx), (w_out, (slice(None), idx))):
        for key in ("exp_avg", "exp_avg_sq"):
            assert (opt.state[p][key][index] == 0).all()
    assert torch.equal(opt.state[w_out]["exp_avg"][:, keep], before_moment[:, keep])


def test_activity_capture_sees_only_the_training_forward():
    stream = tiny_stream()
    model = tiny_model(stream)
    capture = ActivityCapture(model.unit_layers())
    tokens = stream.batch(0).tokens
    capture.start()
    model(tokens)
    seen = capture.activity["block0.mlp"].clone()
    with torch.no_grad():  # an evaluation pass inside the window is ignored
        model(stream.batch(5).tokens)
    capture.stop()
    model(stream.batch(6).tokens)  # and nothing is recorded once stopped
    taken = capture.take()
    assert torch.equal(taken["block0.mlp"], seen)
    assert seen.shape == (32,) and (seen > 0).all()  # one mean |GELU| per unit of d_ff
    assert capture.take() == {}  # taken once
    assert not model.blocks[0].mlp.act._forward_hooks


# ---------------------------------------------------------------------------------------------------
# reset


class ResetProbe(Reset):
    def on_phase_start(self, module, phase):
        opt = module.trainer.optimizers[0]
        self.log_ = getattr(self, "log_", [])
        before, state_len = params_of(module.model), len(opt.state)
        super().on_phase_start(module, phase)
        self.log_.append((phase, before, params_of(module.model), state_len, len(opt.state)))


def test_reset_reinitializes_weights_and_clears_the_optimizer():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    probe = ResetProbe()
    run_arm(probe, stream, model, init_state, last_phase=2)
    assert [entry[0] for entry in probe.log_] == [1, 2]
    phase, before, after, state_before, state_after = probe.log_[1]
    assert state_before > 0 and state_after == 0  # phase 1 had filled Adam's state; phase 2 starts clean
    fresh = fresh_state(model, strategy_seed(stream.seed, 0, 2))
    other = fresh_state(model, 12345)
    for n in after:
        assert not torch.equal(after[n], before[n]), n
        assert torch.equal(after[n], fresh[n]), n  # exactly a fresh init with the phase's seed
        if n.endswith(("fc.weight", "qkv.weight", "tok_emb.weight")):
            assert after[n].std().item() == pytest.approx(other[n].std().item(), rel=0.3)
            assert not torch.equal(after[n], init_state[n])  # a new draw, not the arm's own init
    assert torch.equal(after["blocks.0.mlp.fc.bias"], torch.zeros(32))
    # Each phase gets its own draw.
    assert not torch.equal(probe.log_[0][2]["blocks.0.mlp.fc.weight"], after["blocks.0.mlp.fc.weight"])


# ---------------------------------------------------------------------------------------------------
# l2_init


@pytest.mark.parametrize("target", ["init", "start"])
def test_l2_init_pulls_toward_its_target(target):
    stream = tiny_stream(steps=(4, 8, 1))
    model, init_state = pretrained_pair(stream)
    ref = init_state if target == "init" else params_of(model)
    start_distance = sq_distance(model, ref)
    runs = {}
    for name, strategy in (("naive", Naive()), ("l2", L2Init(lam=1.0, target=target))):
        torch.manual_seed(0)
        runs[name] = run_arm(strategy, stream, copy.deepcopy(model), init_state).model
    naive, l2 = sq_distance(runs["naive"], ref), sq_distance(runs["l2"], ref)
    assert l2 < 0.8 * naive
    if target == "init":
        assert l2 < start_distance
    # The penalty is exactly lam * sum of squares.
    s = L2Init(lam=0.5, target=target)
    module = make_module(copy.deepcopy(model), stream, s, 0, 1)
    s.attach(module, stream, init_state)
    expected = 0.5 * sq_distance(module.model, ref)
    assert float(s.penalty(module, None, None)) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# replay


class ReplayProbe(Replay):
    def transform_batch(self, module, batch):
        out = super().transform_batch(module, batch)
        self.seen_batches = getattr(self, "seen_batches", [])
        self.seen_batches.append((module.current_phase, len(batch), out))
        return out


def phase_of_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """The phase each sequence's tokens come from (disjoint ranges); -1 if they mix ranges."""
    lo, hi = tokens.min(dim=1).values // WIDTH, tokens.max(dim=1).values // WIDTH
    return torch.where(lo == hi, lo, torch.full_like(lo, -1))


def test_replay_prefills_from_pretraining_and_never_replays_the_future():
    stream = tiny_stream(steps=(3, 6, 6), batch_size=4)
    probe = ReplayProbe(buffer_size=6, replay_fraction=0.5)
    model, init_state = pretrained_pair(stream)
    module = make_module(model, stream, probe, stream.phases[1].start, stream.phases[1].end)
    probe.attach(module, stream, init_state)
    # The prefill: 6 of the 12 pretraining sequences, each one of them exactly.
    pre = torch.cat([stream.batch(s).tokens for s in range(3)])
    assert len(probe.buffer) == 6
    for row in probe.buffer.tokens:
        assert (pre == row).all(dim=1).any()
    assert (probe.buffer.latent["phase"] == 0).all()

    probe = ReplayProbe(buffer_size=6, replay_fraction=0.5)
    run_arm(probe, stream, last_phase=2)
    replayed_phases = []
    for phase, n, out in probe.seen_batches:
        assert len(out) == n + round(0.5 * n)
        current = phase_of_tokens(out.tokens[:n])
        assert (current == phase).all()
        from_buffer = phase_of_tokens(out.tokens[n:])
        assert ((from_buffer >= 0) & (from_buffer <= phase)).all(), "replayed a future phase"
        assert torch.equal(out.latent["phase"][n:], from_buffer)
        replayed_phases += from_buffer.tolist()
    assert 0 in replayed_phases  # past-phase (pretraining) sequences are replayed
    assert 1 in replayed_phases  # and the reservoir admits later ones
    # Deterministic given the seeds.
    again = ReplayProbe(buffer_size=6, replay_fraction=0.5)
    run_arm(again, stream, last_phase=2)
    assert all(torch.equal(a[2].tokens, b[2].tokens) for a, b in zip(probe.seen_batches, again.seen_batches))


def test_reservoir_is_uniform_over_everything_seen():
    """After N offered sequences each one is in the buffer with probability size/N."""
    stream = tiny_stream(steps=(1, 2, 1), batch_size=2)
    counts = torch.zeros(8)
    trials = 300
    for t in range(trials):
        r = Replay(buffer_size=3, replay_fraction=0.0, seed=t)
        module = make_module(tiny_model(stream), stream, r, 2, 4)
        r.attach(module, stream, {})
        # Tag sequences by their first token: 2 pretraining sequences, then 6 offered ones.
        r.buffer.tokens[:, 0] = torch.arange(len(r.buffer))
        for k in range(3):
            b = stream.batch(1 + min(k, 1))
            b.tokens[:, 0] = torch.tensor([2 + 2 * k, 3 + 2 * k])
            r.transform_batch(module, b)
        # The two pretraining sequences were both kept at attach (2 <= 3): tags 0, 1.
        counts += torch.bincount(r.buffer.tokens[:, 0], minlength=8).float()
    p = counts / trials
    assert p.sum().item() == pytest.approx(3.0)
    assert torch.allclose(p, torch.full((8,), 3 / 8), atol=0.12), p


# ---------------------------------------------------------------------------------------------------
# ewc


def tiny_mlp_stream():
    spec = {"batch_size": 3, "eval_size": 4, "phases": [
        {"family": "dirichlet", "params": {"n_symbols": 3, "length": 3}, "steps": 2},
        {"family": "dirichlet", "params": {"n_symbols": 3, "length": 3}, "steps": 2, "offset": 0, "name": "b"}]}
    return Stream.from_spec(spec, seed=3)


def brute_force_fisher(model, batch, targets, eps=1e-6):
    """Per sequence, the gradient of Σ_scored log q(y_t) by central differences, one weight at a time."""
    def seq_ll():
        logp = torch.log_softmax(model(batch.tokens).double(), dim=-1)
        ll = logp.gather(-1, targets[..., None])[..., 0]
        return (ll * batch.scored).sum(1)  # [B]

    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            f = torch.zeros_like(p)
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = seq_ll()
                flat[i] = old - eps
                down = seq_ll()
                flat[i] = old
                f.view(-1)[i] = (((up - down) / (2 * eps)) ** 2).sum()
            out[name] = f / batch.scored.sum()
    return out


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_ewc_fisher_matches_brute_force(kind):
    stream = tiny_mlp_stream()
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": 3, "depth": 1}, stream.vocab_size, stream.max_seq_len).double()
    batch = stream.batch(0)
    fisher = fisher_diagonal(model, [batch], kind == "empirical", strategy_generator(7))
    if kind == "empirical":  # the data's next token at each position (the last one is unscored)
        targets = torch.cat([batch.tokens[:, 1:], batch.tokens[:, :1]], dim=1)
    else:  # the same draws from the model's predictive
        with torch.no_grad():
            targets = fisher_targets(model(batch.tokens), batch, False, strategy_generator(7))
    expected = brute_force_fisher(model, batch, targets)
    for name in expected:
        assert (fisher[name] >= 0).all()
        assert torch.allclose(fisher[name], expected[name], rtol=1e-5, atol=1e-10), name
    assert sum(float(f.sum()) for f in fisher.values()) > 0


class PenaltyLog:
    """Mixin: record every penalty the module adds to the loss."""

    def penalty(self, module, batch, logits):
        value = super().penalty(module, batch, logits)
        self.penalties = getattr(self, "penalties", [])
        self.penalties.append(None if value is None else float(value))
        return value


class EWCProbe(PenaltyLog, EWC):
    pass


def test_ewc_penalty_zero_at_anchor_positive_after_updates():
    stream = tiny_stream()
    probe = EWCProbe(lam=100.0, fisher_batches=2)
    module = run_arm(probe, stream, last_phase=1)  # ends at phase 1's end: phase 1 is consolidated
    assert probe.penalties[0] == 0.0  # the first step is at the anchor (the pretrained weights)
    assert all(v > 0 for v in probe.penalties[1:])
    assert all((f >= 0).all() for f in probe.fisher.values())
    # After consolidation the anchor is the current weights: zero again.
    assert float(probe.penalty(module, None, None)) == 0.0
    # gamma=1: the Fisher only grows; phase 1's estimate was added to phase 0's.
    single = EWC(lam=100.0, fisher_batches=2)
    single.attach(make_module(*pretrained_pair(stream)[:1], stream, single, 0, 1), stream, {})
    assert all((probe.fisher[n] >= single.fisher[n] - 1e-12).all() for n in single.fisher)
    assert any((probe.fisher[n] > single.fisher[n]).any() for n in single.fisher)


# ---------------------------------------------------------------------------------------------------
# si


class SIProbe(PenaltyLog, SI):
    pass


def test_si_importance_after_a_phase_and_penalty():
    stream = tiny_stream()
    probe = SIProbe(c=1.0)
    module = run_arm(probe, stream, last_phase=1)
    assert all(v == 0.0 for v in probe.penalties)  # no importance yet during phase 1
    omega = probe.omega
    assert all((w >= 0).all() for w in omega.values())
    assert sum(float(w.sum()) for w in omega.values()) > 0
    assert float(probe.penalty(module, None, None)) == 0.0  # at the new anchor
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.01)
    assert float(probe.penalty(module, None, None)) > 0


def test_si_path_uses_the_task_gradient_only():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    si = SI(c=3.0)
    module = make_module(model, stream, si, 0, 1)
    si.attach(module, stream, init_state)
    g = torch.Generator().manual_seed(0)
    for n in si.omega:
        si.omega[n] = torch.rand(si.omega[n].shape, generator=g)
        si.anchor[n] = si.anchor[n] + 0.1 * torch.randn(si.anchor[n].shape, generator=g)
    batch = stream.batch(0)
    logits = model(batch.tokens)
    task = sequence_loss(logits, batch, "sampled")
    task_grads = torch.autograd.grad(task, list(model.parameters()), retain_graph=True)
    (task + si.penalty(module, batch, logits)).backward()
    si.on_before_optimizer_step(None, module, None)
    for (n, _), tg in zip(model.named_parameters(), task_grads):
        assert torch.allclose(si._grad[n], tg, atol=1e-6), n
    # A path that raised the loss (negative ω) adds no importance, rather than negative importance.
    omega = {n: w.clone() for n, w in si.omega.items()}
    for n in si.path:
        si.path[n] = torch.randn(si.path[n].shape, generator=g)
    si.on_phase_end(module, 1)
    for n in si.omega:
        gained = si.omega[n] - omega[n]
        assert (gained >= 0).all() and (gained > 0).any(), n


# ---------------------------------------------------------------------------------------------------
# lwf


def test_distill_kl_by_hand():
    t = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    s = torch.tensor([[[0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    T = 2.0

    def softmax(xs):
        e = [math.exp(x / T) for x in xs]
        return [v / sum(e) for v in e]

    pt, ps = softmax([1.0, 0.0, -1.0]), softmax([0.0, 2.0, 0.0])
    expected = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert float(distill_kl(t, s, mask, T)) == pytest.approx(expected, rel=1e-6)


class LwFProbe(PenaltyLog, LwF):
    pass


def test_lwf_penalty_zero_after_snapshot_then_positive():
    stream = tiny_stream()
    probe = LwFProbe(lam=1.0, temperature=2.0)
    module = run_arm(probe, stream, last_phase=2)
    p1 = stream.phases[1].steps
    assert probe.penalties[0] == pytest.approx(0.0, abs=1e-7)  # teacher = student at phase 1's start
    assert probe.penalties[p1] == pytest.approx(0.0, abs=1e-7)  # a new snapshot at phase 2's start
    assert all(v > 0 for v in probe.penalties[1:p1] + probe.penalties[p1 + 1:])
    # The penalty is lam * T^2 * the distillation KL against the teacher.
    batch = stream.batch(stream.phases[2].start)
    logits = module.model(batch.tokens)
    kl = distill_kl(probe.teacher(batch.tokens), logits, batch.scored, 2.0)
    assert float(probe.penalty(module, batch, logits)) == pytest.approx(4.0 * float(kl), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# shrink_perturb


def test_shrink_without_perturbation_is_exact():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    sp = ShrinkPerturb(shrink=0.7, sigma=0.0)
    module = make_module(model, stream, sp, 0, 1)
    sp.attach(module, stream, init_state)
    before = params_of(model)
    sp.on_phase_start(module, 0)  # pretraining is not the arm's: nothing happens
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    sp.on_phase_start(module, 1)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n] * 0.7), n


def test_shrink_perturb_adds_sigma_times_a_fresh_init():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    sp = ShrinkPerturb(shrink=0.8, sigma=0.5, seed=4)
    module = make_module(model, stream, sp, 0, 1)
    sp.attach(module, stream, init_state)
    before = params_of(model)
    sp.on_phase_start(module, 1)
    noise = {n: (p.detach() - 0.8 * before[n]) / 0.5 for n, p in model.named_parameters()}
    fresh = fresh_state(model, strategy_seed(stream.seed, 4, 0))
    for n in noise:
        assert torch.allclose(noise[n], fresh[n], atol=1e-5), n
    assert torch.allclose(noise["blocks.0.ln1.weight"], torch.ones(16), atol=1e-5)  # LayerNorm gain 1
    assert noise["blocks.0.mlp.fc.weight"].std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.allclose(noise["blocks.0.mlp.fc.bias"], torch.zeros(32), atol=1e-6)


def test_shrink_perturb_every_n_steps():
    stream = tiny_stream()
    sp = ShrinkPerturb(shrink=0.9, sigma=0.0, every=2)
    run_arm(sp, stream, last_phase=2)
    total = stream.phases[1].steps + stream.phases[2].steps
    assert sp.applied == total // 2  # and not at the phase starts


# ---------------------------------------------------------------------------------------------------
# cbp and redo: units forced dormant are the ones recycled


DEAD = torch.tensor([0, 3, 10, 21])


def kill_units(model) -> None:
    """Incoming weights 0 and a bias of -100: GELU's output (and gradient) is exactly 0 whatever the input,
    so the units stay dormant through training, while their outgoing weights stay non-zero."""
    layer = model.unit_layers()[0]
    with torch.no_grad():
        layer.in_linear.weight[DEAD] = 0.0
        layer.in_linear.bias[DEAD] = -100.0
        layer.out_linear.weight[:, DEAD] += 0.05


class UnitProbe:
    """Mixin: after each training step, a snapshot of the unit layer and of the replaced count."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        layer = pl_module.model.unit_layers()[0]
        self.snaps = getattr(self, "snaps", [])
        self.snaps.append((self.replaced, layer.in_linear.weight.detach().clone(),
                           layer.in_linear.bias.detach().clone(), layer.out_linear.weight.detach().clone()))


class CBPProbe(UnitProbe, CBP):
    pass


class ReDoProbe(UnitProbe, ReDo):
    pass


def check_recycled(snap_before, snap_after):
    _, w_in0, b_in0, w_out0 = snap_before
    _, w_in, b_in, w_out = snap_after
    assert (w_in0[DEAD] == 0).all() and (w_out0[:, DEAD] != 0).any()  # dormant before
    assert (w_in[DEAD] != 0).all(dim=1).all()  # re-drawn incoming weights
    assert torch.equal(b_in[DEAD], torch.zeros(len(DEAD)))
    assert torch.equal(w_out[:, DEAD], torch.zeros(w_out.shape[0], len(DEAD)))  # outgoing exactly 0


def test_cbp_replaces_the_lowest_utility_mature_units():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    kill_units(model)
    # 32 units, maturity after 2 steps: 0.125 * 32 = exactly the 4 dead units at the first chance.
    probe = CBPProbe(replacement_rate=0.125, maturity_threshold=2)
    run_arm(probe, stream, model, init_state, last_phase=1)
    counts = [s[0] for s in probe.snaps]
    assert counts[:2] == [0, 0] and counts[2] == 4  # age 3 > 2 at the third step
    check_recycled(probe.snaps[1], probe.snaps[2])
    assert probe.replaced == counts[-1] > 4  # replacement continues among the other mature units


def test_cbp_accumulates_fractional_replacements():
    stream = tiny_stream(steps=(2, 12, 1))
    probe = CBPProbe(replacement_rate=0.01, maturity_threshold=0)
    run_arm(probe, stream, last_phase=1)
    # 0.01 * 32 = 0.32 units per step: the whole parts of 0.32 * k for k = 1..12.
    assert [s[0] for s in probe.snaps] == [int(0.32 * k + 1e-9) for k in range(1, 13)]


def test_redo_recycles_dormant_units_every_n_steps():
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    kill_units(model)
    probe = ReDoProbe(every=3, tau=0.1)
    run_arm(probe, stream, model, init_state, last_phase=1)
    counts = [s[0] for s in probe.snaps]
    assert counts[0] == counts[1] == 0 and counts[2] >= len(DEAD)
    assert counts[3] == counts[4] == counts[2]  # nothing happens between recycling steps
    check_recycled(probe.snaps[1], probe.snaps[2])
    # Units that are clearly active keep their outgoing weights.
    assert (probe.snaps[2][3].abs().sum(0) > 0).sum() >= 32 - counts[2]
