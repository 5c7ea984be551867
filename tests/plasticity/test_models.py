import pytest
import torch
import torch.nn.functional as F

from plasticity.models import MODELS, build_model, count_parameters, normalize, resolve

V, T = 20, 64

CONFIGS = {
    "transformer": {"name": "transformer"},
    "transformer-rotary": {"name": "transformer", "rotary": True},
    "mlp-onehot": {"name": "mlp", "hidden": 32},
    "mlp-embed": {"name": "mlp", "hidden": 32, "input": "embed", "d_model": 8, "depth": 3},
    "lstm": {"name": "lstm", "hidden": 32},
    "mamba": {"name": "mamba", "d_model": 16, "d_state": 4},
}


@pytest.fixture(params=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return build_model(CONFIGS[request.param], V, T).eval()


def test_registry():
    assert MODELS.names() == ["lstm", "mamba", "mlp", "transformer"]
    with pytest.raises(ValueError, match="unknown model 'gru'; known: lstm, mamba, mlp, transformer"):
        build_model({"name": "gru"}, V, T)


def test_every_model_has_its_own_parameters_spelled_out_with_defaults():
    assert normalize({"name": "lstm"}) == {"name": "lstm", "n_layers": 2, "hidden": 256, "d_model": 64, "dropout": 0.0,
                                           "activation": "gelu"}
    with pytest.raises(ValueError, match="model.n_heads: not a parameter of model 'lstm'"):
        normalize({"name": "lstm", "n_heads": 4})
    with pytest.raises(ValueError, match=r"model.hiden: .*Did you mean 'hidden'"):
        normalize({"name": "mlp", "hiden": 4})
    assert normalize({"name": "mlp", "match_params": "transformer"})["match_params"]["n_heads"] == 4


def test_shapes(model):
    tokens = torch.randint(0, V, (3, 17))
    assert model(tokens).shape == (3, 17, V)
    feats = model.features(tokens)
    assert feats.shape[:2] == (3, 17)
    assert feats.shape[-1] == model.head.in_features


def test_causality(model):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (2, 24), generator=g)
    logits = model(tokens)
    for t in (0, 5, 22):
        changed = tokens.clone()
        shift = torch.randint(1, V, changed[:, t + 1 :].shape, generator=g)
        changed[:, t + 1 :] = (tokens[:, t + 1 :] + shift) % V
        out = model(changed)
        torch.testing.assert_close(out[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out[:, t + 1 :], logits[:, t + 1 :])  # the change is seen afterwards


def test_unit_layers_consistent(model):
    layers = model.unit_layers()
    assert layers and len({layer.name for layer in layers}) == len(layers)
    seen = {}
    handles = [
        layer.act.register_forward_hook(lambda m, i, o, name=layer.name: seen.__setitem__(name, o.shape[-1]))
        for layer in layers
    ]
    model(torch.randint(0, V, (2, 9)))
    for h in handles:
        h.remove()
    for layer in layers:
        n = layer.n_units
        assert layer.in_linear.out_features == layer.out_linear.in_features == seen[layer.name] == n
        assert layer.init_std > 0


def naive_first_preactivation(model, tokens):
    """The MLP's first layer applied to the materialized, causally masked, zero-padded prefix."""
    B, Tn = tokens.shape
    L = model.max_seq_len
    per = F.one_hot(tokens, V).to(torch.float64) if model.embed is None else model.embed(tokens)
    per = F.pad(per, (0, 0, 0, L - Tn))  # [B, L, ·]
    mask = (torch.arange(L)[None, :] <= torch.arange(Tn)[:, None]).to(per.dtype)  # [t, s]
    prefix = mask[None, :, :, None] * per[:, None, :, :]  # [B, T, L, ·]
    return model.layers[0](prefix.reshape(B, Tn, -1))


@pytest.mark.parametrize("mlp_input", ["onehot", "embed"])
def test_mlp_cumsum_equals_materialized(mlp_input):
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "hidden": 16, "input": mlp_input, "d_model": 6}, V, 12).double()
    with torch.no_grad():
        model.layers[0].bias.normal_()
    tokens = torch.randint(0, V, (3, 10))
    torch.testing.assert_close(model.input_preactivation(tokens), naive_first_preactivation(model, tokens))


def test_default_transformer_size():
    n = count_parameters(build_model({"name": "transformer"}, V, T))
    print(f"default transformer, V={V}, T={T}: {n} parameters")
    assert 90_000 <= n <= 115_000


@pytest.mark.parametrize("name", ["mlp", "lstm", "mamba"])
def test_match_params(name):
    target = count_parameters(build_model({"name": "transformer"}, V, T))
    spec = {"name": name, "match_params": "transformer"}
    model = build_model(spec, V, T)
    n = count_parameters(model)
    _, config = resolve(spec, V, T)
    width = type(model).width_param
    print(f"{name} matched to the transformer: {width}={getattr(config, width)}, {n} vs {target}")
    assert abs(n - target) / target <= 0.05
    # An unmatched model of the default width is far off, so the match is doing the work.
    unmatched = count_parameters(build_model({"name": name}, V, T))
    assert abs(unmatched - target) > 0.05 * target
    # A bigger matched transformer gives a wider baseline.
    big = {"name": name, "match_params": {"name": "transformer", "n_layers": 4}}
    assert getattr(resolve(big, V, T)[1], width) > getattr(config, width)


def test_match_params_impossible():
    tiny = {"name": "mlp", "match_params": {"name": "transformer", "n_layers": 1, "d_model": 4, "n_heads": 1,
                                            "d_ff": 4}}
    with pytest.raises(ValueError, match="cannot match"):
        build_model(tiny, V, T)


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible"):
        build_model({"name": "transformer", "d_model": 30, "n_heads": 4}, V, T)
    with pytest.raises(ValueError, match="model.input='bag'"):
        build_model({"name": "mlp", "input": "bag"}, V, T)
    with pytest.raises(ValueError, match="model.n_layers=0"):
        build_model({"name": "lstm", "n_layers": 0}, V, T)
    with pytest.raises(ValueError, match="max_seq_len"):
        build_model({"name": "transformer"}, V, 8)(torch.zeros(1, 9, dtype=torch.long))


def test_the_knobs_the_plasticity_literature_varies():
    no_ln = build_model({"name": "transformer", "layer_norm": False, "activation": "relu"}, V, T)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in no_ln.modules())
    assert all(isinstance(u.act, torch.nn.ReLU) for u in no_ln.unit_layers())
    mlp = build_model({"name": "mlp", "hidden": 16, "layer_norm": True, "activation": "tanh"}, V, T)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in mlp.modules()) == 2
    assert all(isinstance(u.act, torch.nn.Tanh) for u in mlp.unit_layers())
    with pytest.raises(ValueError, match="model.activation='swish'"):
        build_model({"name": "lstm", "activation": "swish"}, V, T)


def test_sgd_is_an_optimizer_too():
    from plasticity.train.optim import OptimConfig, build_optimizer

    model = build_model({"name": "mlp", "hidden": 8}, V, T)
    sgd = build_optimizer(model, OptimConfig(optimizer="sgd", momentum=0.9, weight_decay=0.1), lr=0.5)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.1, 0.0]  # matrices decay, biases do not
    assert isinstance(build_optimizer(model, OptimConfig(), lr=0.5), torch.optim.AdamW)
