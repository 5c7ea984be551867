"""The geometry probes against independent computations on hand-made inputs."""

import math

import numpy as np
import pytest
import torch

from plasticity.eval.evaluator import evaluate_bank
from plasticity.eval.geometry import (
    entropy_bits,
    geometry_probes,
    keys_by_token,
    manifold,
    mean_abs_offdiag_cosine,
    pca_variance,
    spearman,
)
from plasticity.models import build_model
from streams import Stream


def test_orthogonal_keys_give_0_and_identical_keys_1():
    assert mean_abs_offdiag_cosine(torch.eye(5)[:4] * torch.tensor([[1.0], [2.0], [-3.0], [0.5]])) == 0.0
    assert mean_abs_offdiag_cosine(torch.tensor([1.0, -2.0, 0.5]).repeat(6, 1)) == pytest.approx(1.0)
    # by hand: cos(e1, (e1 + e2)/sqrt2) = 1/sqrt2, the other pairs 0 -> 2 · (1/sqrt2) over 6 ordered pairs
    v = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 0], [0, 0, 1.0]])
    assert mean_abs_offdiag_cosine(v) == pytest.approx(2 / math.sqrt(2) / 6)


def test_keys_by_token_average_each_tokens_keys():
    tokens = torch.tensor([[0, 2, 2], [2, 0, 5]])
    k = torch.arange(12, dtype=torch.float64).reshape(2, 3, 2)
    expected = torch.tensor([[(0 + 8) / 2, (1 + 9) / 2], [(2 + 4 + 6) / 3, (3 + 5 + 7) / 3], [10, 11]],
                            dtype=torch.float64)
    torch.testing.assert_close(keys_by_token(k, tokens), expected)


def test_uniform_attention_over_t_positions_has_log2_t_bits():
    T = 7
    attn = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    torch.testing.assert_close(entropy_bits(attn), torch.log2(torch.arange(1.0, T + 1)))
    assert entropy_bits(torch.eye(T)).abs().max() == 0  # attending one position: 0 bits


def test_a_line_plus_noise_has_the_pc1_fraction_numpy_computes():
    rng = np.random.default_rng(0)
    t = rng.normal(size=500)
    x = np.outer(t, [3.0, -1.0, 2.0, 0.5]) + 0.3 * rng.normal(size=(500, 4))
    z = (x - x.mean(0)) / x.std(0)
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    ev = sv ** 2
    out = pca_variance(torch.from_numpy(x))
    assert out["pc1"] == pytest.approx(ev[0] / ev.sum(), rel=1e-10)
    assert out["pc12"] == pytest.approx(ev[:2].sum() / ev.sum(), rel=1e-10)
    assert out["n90"] == int(np.searchsorted(np.cumsum(ev) / ev.sum(), 0.9) + 1)
    assert out["pc1"] > 0.9  # the line dominates
    coords = z @ vt[0]
    assert np.allclose(out["pc1_coords"].numpy() * np.sign(coords @ out["pc1_coords"].numpy()), coords)


def test_spearman_of_a_monotone_map_is_1_and_ties_share_their_rank():
    a = torch.tensor([0.3, -1.0, 2.0, 5.0, 0.0])
    assert spearman(a, torch.exp(3 * a)) == pytest.approx(1.0)
    assert spearman(a, -a ** 3) == pytest.approx(-1.0)
    # ties: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; Pearson with [1, 2, 3, 4] by hand
    r, s = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4.0])
    expected = ((r - r.mean()) @ (s - s.mean())) / math.sqrt(((r - r.mean()) ** 2).sum() * ((s - s.mean()) ** 2).sum())
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(expected)


@pytest.fixture(scope="module")
def bank():
    stream = Stream.from_spec({"phases": [{"family": "dirichlet", "params": {"n_symbols": 5}, "steps": 1}],
                               "eval_size": 16})
    return stream.eval_bank(0)


@pytest.mark.parametrize("rotary", [False, True])
def test_the_internals_reproduce_the_model_and_the_last_logit_lens_is_its_kl(bank, rotary):
    torch.manual_seed(0)
    model = build_model({"name": "transformer", "n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32,
                         "rotary": rotary}, bank.vocab_size, bank.tokens.shape[1]).double().eval()
    with torch.no_grad():
        layers = model.internals(bank.tokens)
        torch.testing.assert_close(model.readout(layers[-1]["residual"]), model(bank.tokens))
        assert torch.allclose(layers[0]["attn"].sum(-1), torch.ones((), dtype=torch.float64))
        assert layers[0]["attn"].triu(1).abs().max() == 0  # causal
    probes = geometry_probes(model, bank)
    kl = evaluate_bank(model, bank, 64, torch.device("cpu"))["kl_bits"]
    assert probes["logit_lens_kl_bits/layer1"] == pytest.approx(kl, rel=1e-9)
    assert {"key_orthogonality/layer1.head1", "qk_alignment/layer0.head0", "n90/layer1"} <= set(probes)
    assert len(probes["attention_entropy_bits_by_position/layer0"]) == bank.tokens.shape[1]
    assert 0 <= probes["key_orthogonality"] <= 1 and 0 < probes["pc1_fraction"] <= 1
    assert model.training is False


def test_probes_that_do_not_apply_are_absent(bank):
    mlp = build_model({"name": "mlp", "hidden": 8}, bank.vocab_size, bank.tokens.shape[1])
    assert geometry_probes(mlp, bank) == {}


def test_geometry_is_tracked_at_its_cadence_in_the_current_phases_row(tmp_path):
    import json

    from plasticity.entry import run
    from plasticity.run.config import load_config

    cfg = load_config("smoke", ["progress=false", "plots=false", "arms=[frozen,naive]", "eval.every=10",
                                "eval.geometry_every=20", "eval.geometry_size=8"])
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ends = {150, 210}  # the smoke stream's phase ends
    current = [r for r in rows if r["eval_phase"] == r["phase"]]
    assert {r["arm"] for r in current if "key_orthogonality" in r} == {"pretrain", "frozen", "naive"}
    for r in current:
        assert ("key_orthogonality" in r) == (r["step"] % 20 == 0 or r["step"] in ends), (r["arm"], r["step"])
    assert not any("key_orthogonality" in r for r in rows if r["eval_phase"] != r["phase"])
    # the frozen arm's geometry is of the phase being trained (its bank), the same at every step
    frozen = {r["key_orthogonality"] for r in current if r["arm"] == "frozen" and "key_orthogonality" in r}
    pretrained = next(r for r in current if r["arm"] == "pretrain" and r["step"] == 150)
    assert len(frozen) == 1 and frozen != {pretrained["key_orthogonality"]}

    from plasticity.results.plots import geometry_series, make_plots

    series = geometry_series(rows)
    step, values = series["naive"][-1]
    last = next(r for r in current if r["arm"] == "naive" and r["step"] == step)
    heads = [v for k, v in last.items() if k.startswith("qk_alignment/")]
    assert step == 210 and len(heads) == 2  # 1 layer x 2 heads
    assert values["query-key alignment\n(mean over layers, heads)"] == pytest.approx(sum(heads) / 2)
    assert values["PC1 variance fraction\n(last layer)"] == last["pc1_fraction"]
    assert {"geometry.png", "manifold.png"} <= {p.name for p in make_plots(tmp_path)}
    # the manifold's data at every phase end: the pretraining's at 0, each arm's at 1; the frozen arm's is
    # its (the pretrained) model on phase 1's bank, the naive arm's not
    files = {p.name for p in (tmp_path / "geometry").iterdir()}
    assert files == {"pretrain@0.json", "frozen@1.json", "naive@1.json"}
    data = {f: json.loads((tmp_path / "geometry" / f).read_text()) for f in files}
    assert len(data["frozen@1.json"]["pc1"]) == int(built_bank(cfg, 1).scored[:8].sum())
    assert data["frozen@1.json"]["pc1"] != data["naive@1.json"]["pc1"]


def built_bank(cfg, phase):
    from plasticity.run.build import build

    return build(cfg).stream.eval_bank(phase)


def test_the_manifold_is_the_pca_numpy_computes_sign_aligned_with_the_entropy(bank):
    torch.manual_seed(1)
    model = build_model({"name": "transformer", "n_layers": 1, "d_model": 8, "n_heads": 2, "d_ff": 16},
                        bank.vocab_size, bank.tokens.shape[1]).double()
    m = manifold(model, bank, points=50)
    with torch.no_grad():
        x = model.internals(bank.tokens)[-1]["residual"][bank.scored][:50].numpy()
    z = (x - x.mean(0)) / x.std(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    h = entropy_bits(bank.posterior)[bank.scored][:50]
    for key, axis in (("pc1", 0), ("pc2", 1)):
        coords = z @ vt[axis]
        assert np.allclose(np.abs(m[key]), np.abs(coords), atol=1e-9)  # up to the sign
    assert m["pc1_fraction"] == pytest.approx(s[0] ** 2 / (s**2).sum())
    assert m["entropy_bits"] == pytest.approx(h.tolist())
    rho = spearman(torch.tensor(m["pc1"]), h)
    assert rho >= 0 and m["pc1_entropy_spearman"] == pytest.approx(rho)  # sign-aligned


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_the_probes_and_the_manifold_on_cuda_equal_the_cpus(bank):
    torch.manual_seed(2)
    model = build_model({"name": "transformer", "n_layers": 2, "d_model": 16, "n_heads": 2, "d_ff": 32},
                        bank.vocab_size, bank.tokens.shape[1]).double()
    cpu, cpu_m = geometry_probes(model, bank), manifold(model, bank)
    model.cuda()
    gpu, gpu_m = geometry_probes(model, bank), manifold(model, bank)
    for key, value in cpu.items():
        values = value if isinstance(value, list) else [value]
        for a, b in zip(gpu[key] if isinstance(value, list) else [gpu[key]], values):
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), key
    assert np.allclose(np.abs(gpu_m["pc1"]), np.abs(cpu_m["pc1"]), atol=1e-6)
