"""The selective state-space model against a step-by-step recurrence written out independently."""

import pytest
import torch
import torch.nn.functional as F

from plasticity.models import build_model
from plasticity.models.mamba import CHUNK, selective_scan


@pytest.mark.parametrize("T", [5, CHUNK, 2 * CHUNK + 3])  # within one chunk, exactly one, and across three
def test_the_hand_written_backward_is_the_gradient(T):
    g = torch.Generator().manual_seed(0)
    B, e, n = 2, 3, 2
    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    delta, A = draw(B, T, e).abs() + 0.1, -draw(e, n).abs()
    args = (delta, A, draw(B, T, n), draw(B, T, n), draw(B, T, e))
    assert torch.autograd.gradcheck(selective_scan, tuple(a.requires_grad_() for a in args))


def stepwise_mixer(mixer, u):
    """Mamba's recurrent form, one token at a time: a window of the last d_conv inputs for the convolution,
    the state h updated per channel and state index by explicit loops over neither."""
    cfg = mixer.cfg
    Bsz, T, _ = u.shape
    e, n, k = cfg.d_inner, cfg.d_state, cfg.d_conv
    A = -torch.exp(mixer.A_log)
    w = mixer.conv.weight[:, 0, :]  # [e, k]: tap j multiplies the input k - 1 - j positions back
    window = torch.zeros(Bsz, k, e, dtype=u.dtype)
    h = torch.zeros(Bsz, e, n, dtype=u.dtype)
    out = []
    for t in range(T):
        window = torch.cat([window[:, 1:], (u[:, t] @ mixer.in_x.weight.T + mixer.in_x.bias)[:, None]], 1)
        x = F.silu((window * w.T[None]).sum(1) + mixer.conv.bias)  # [B, e]
        proj = x @ mixer.x_proj.weight.T
        r = cfg.rank
        delta = F.softplus(proj[:, :r] @ mixer.dt.weight.T + mixer.dt.bias)
        Bt, Ct = proj[:, r:r + n], proj[:, r + n:]
        h = torch.exp(delta[:, :, None] * A) * h + delta[:, :, None] * Bt[:, None, :] * x[:, :, None]
        y = (h * Ct[:, None, :]).sum(-1) + mixer.D * x
        z = u[:, t] @ mixer.in_z.weight.T + mixer.in_z.bias
        out.append((y * F.silu(z)) @ mixer.out_proj.weight.T + mixer.out_proj.bias)
    return torch.stack(out, 1)


def test_the_mixer_is_the_stepwise_recurrence():
    torch.manual_seed(0)
    model = build_model({"name": "mamba", "d_model": 8, "d_state": 4, "d_conv": 3}, 7, 32).double()
    with torch.no_grad():  # away from the initialization's zero biases, so every term counts
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    mixer = model.blocks[0].mixer
    u = torch.randn(2, 11, 8, dtype=torch.float64)
    expected = stepwise_mixer(mixer, u)
    torch.testing.assert_close(mixer(u), expected, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the scan that keeps no states
        torch.testing.assert_close(mixer(u), expected, rtol=1e-10, atol=1e-10)


def test_initialization_follows_the_paper():
    model = build_model({"name": "mamba", "d_model": 32, "d_state": 8}, 7, 32)
    mixer = model.blocks[0].mixer
    assert mixer.cfg.rank == 2  # ceil(32 / 16)
    torch.testing.assert_close(-torch.exp(mixer.A_log[5]), -torch.arange(1.0, 9.0))  # S4D-real
    dt = F.softplus(mixer.dt.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)


def test_bad_mamba_configs():
    with pytest.raises(ValueError, match=r"model.d_state=0: must be an integer"):
        build_model({"name": "mamba", "d_state": 0}, 7, 32)
    with pytest.raises(ValueError, match=r"model.layer_norm='no': must be true or false"):
        build_model({"name": "mamba", "layer_norm": "no"}, 7, 32)


def test_a_re_initialized_gate_channel_contributes_nothing_until_it_learns():
    from plasticity.strategies.reinit import reinit_units

    torch.manual_seed(0)
    model = build_model({"name": "mamba", "d_model": 8, "n_layers": 2}, 7, 32).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tokens = torch.randint(0, 7, (3, 12))
    layer, idx = model.unit_layers()[1], torch.tensor([0, 5, 15])
    assert layer.n_units == 16 and layer.in_linear is model.blocks[1].mixer.in_z
    with torch.no_grad():  # the channels' old contribution removed by hand ...
        layer.out_linear.weight[:, idx] = 0
    without = model(tokens)
    reinit_units(layer, idx, None, torch.Generator().manual_seed(1))
    assert not torch.equal(layer.in_linear.weight[idx], torch.zeros_like(layer.in_linear.weight[idx]))
    torch.testing.assert_close(model(tokens), without, rtol=1e-12, atol=1e-12)  # ... and the new ones add none


def test_a_log_is_not_weight_decayed():
    from plasticity.train.optim import OptimConfig, build_optimizer

    model = build_model({"name": "mamba", "d_model": 8}, 7, 32)
    groups = build_optimizer(model, OptimConfig(weight_decay=0.1), lr=1e-3).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.blocks[0].mixer.A_log) not in decayed and id(model.blocks[0].mixer.in_x.weight) in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
