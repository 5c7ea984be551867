import math

import pytest
import torch
from torch import nn

from plasticity.eval.probes import (
    distance_from,
    dormant_fraction,
    effective_rank,
    probe_all,
    unit_activity,
    weight_norm,
)
from plasticity.models import build_model


def test_dormant_fraction_hand():
    activity = {"a": torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), "dead": torch.zeros(3)}
    # Scores a / mean(a) = 0, 0.5, 1, 1.5, 2.
    assert dormant_fraction(activity, 0.0) == {"a": pytest.approx(0.2), "dead": 1.0}
    assert dormant_fraction(activity, 0.5)["a"] == pytest.approx(0.4)
    assert dormant_fraction(activity, 0.49)["a"] == pytest.approx(0.2)


def test_effective_rank():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    rank1 = torch.outer(torch.randn(50, dtype=torch.float64), torch.randn(8, dtype=torch.float64))
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-6)
    # Singular values 3 and 1: p = (3/4, 1/4), exp(H) = exp(-(0.75 ln 0.75 + 0.25 ln 0.25)).
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(1.7547654, abs=1e-6)
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_norms_and_distance():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(2.0)
    assert weight_norm(lin) == pytest.approx(math.sqrt(6 + 8))
    state = {k: v.clone() for k, v in lin.state_dict().items()}
    assert distance_from(lin, state) == 0.0
    state["weight"] += 1.0
    assert distance_from(lin, state) == pytest.approx(math.sqrt(6))
    with pytest.raises(KeyError):
        distance_from(lin, {"weight": state["weight"]})


SMALL = {"transformer": {}, "mlp": {"hidden": 16}, "lstm": {"hidden": 16}, "mamba": {"d_model": 16}}


@pytest.mark.parametrize("name", list(SMALL))
def test_unit_activity_and_probe_all(name):
    torch.manual_seed(0)
    model = build_model({"name": name, **SMALL[name]}, 10, 12)
    model.train()
    tokens = torch.randint(0, 10, (4, 12))
    activity = unit_activity(model, tokens)
    layers = model.unit_layers()
    assert list(activity) == [layer.name for layer in layers]
    for layer in layers:
        assert activity[layer.name].shape == (layer.n_units,)
        assert not layer.act._forward_hooks  # hooks removed
    assert model.training  # mode restored
    if name in ("mlp", "lstm"):  # here the last unit layer's activations are the features
        with torch.no_grad():
            expected = model.eval().features(tokens).abs().double().mean((0, 1))
        torch.testing.assert_close(activity[layers[-1].name], expected)

    init = {k: v.clone() for k, v in model.state_dict().items()}
    out = probe_all(model, tokens, tau=0.1, reference_state=init)
    assert {f"dormant_frac/{layer.name}" for layer in layers} <= set(out)
    assert 0.0 <= out["dormant_frac"] <= 1.0
    assert 1.0 <= out["effective_rank"] <= model.head.in_features
    assert out["weight_norm"] > 0 and out["distance_from_init"] == 0.0
    assert "distance_from_init" not in probe_all(model, tokens, tau=0.1)


@pytest.mark.parametrize("name", list(SMALL))
def test_the_evaluations_forward_gives_the_probes_their_own_numbers(name):
    """The evaluator hands the probes what the forward scoring the current bank's first chunk recorded; they
    must be exactly the numbers of the probes' own forward (model.features) on those tokens."""
    from plasticity.eval.evaluator import evaluate_all
    from plasticity.eval.probes import ProbeForward
    from streams import make

    torch.manual_seed(0)
    family = make("dirichlet", n_symbols=4, length=11)
    bank = family.sample(6, torch.Generator().manual_seed(1))
    model = build_model({"name": name, **SMALL[name]}, family.vocab_size, bank.tokens.shape[1])
    forward = ProbeForward()
    evaluate_all(model, {0: bank, 1: bank[:2]}, 4, torch.device("cpu"), (bank, forward))
    assert model.training and not any(layer.act._forward_hooks for layer in model.unit_layers())
    assert forward.features is not None
    shared = probe_all(model, bank.tokens[:4], tau=0.1, forward=forward)
    assert shared == probe_all(model, bank.tokens[:4], tau=0.1)  # bit for bit

    class NoHead(nn.Module):  # a model whose head is not a module named head: the probes' own forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def features(self, tokens):
            return self.inner.features(tokens)

        def forward(self, tokens):
            return self.inner(tokens)

        def unit_layers(self):
            return self.inner.unit_layers()

    headless = ProbeForward()
    evaluate_all(NoHead(model), {0: bank}, 4, torch.device("cpu"), (bank, headless))
    assert headless.features is None
    assert probe_all(NoHead(model), bank.tokens[:4], tau=0.1, forward=headless) == shared
