import math

import pytest
import torch

from plasticity.eval.calibration import CalibrationAccumulator, calibration


def one_position(p, q, next_token):
    """A batch with one scored position: posterior p, model distribution q, observed next token."""
    B, Vn = len(p), len(p[0])
    tokens = torch.zeros(B, 2, dtype=torch.long)
    tokens[:, 1] = torch.tensor(next_token)
    posterior = torch.zeros(B, 2, Vn, dtype=torch.float64)
    posterior[:, 0] = torch.tensor(p, dtype=torch.float64)
    logits = torch.zeros(B, 2, Vn, dtype=torch.float64)
    logits[:, 0] = torch.tensor(q, dtype=torch.float64).log()
    scored = torch.tensor([[True, False]] * B)
    return logits, posterior, scored, tokens


def test_kl_identical_is_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
    posterior = logits.softmax(-1)
    scored = torch.ones(4, 6, dtype=torch.bool)
    scored[:, -1] = False
    m = calibration(logits, posterior, scored, torch.randint(0, 5, (4, 6), generator=g))
    assert abs(m["kl_bits"]) < 1e-12
    assert m["entropy_gap_bits"] < 1e-12
    assert m["n_scored"] == 20


def test_kl_hand_pair_nll_and_ece():
    m = calibration(*one_position([[0.5, 0.5]], [[0.9, 0.1]], [1]))
    # KL = 0.5 log2(0.5/0.9) + 0.5 log2(0.5/0.1) = 0.5 log2(25/9)
    assert m["kl_bits"] == pytest.approx(0.7369655941662062, abs=1e-6)
    assert m["nll_bits"] == pytest.approx(-math.log2(0.1), abs=1e-6)
    assert m["bayes_nll_bits"] == pytest.approx(1.0, abs=1e-12)
    assert m["ece"] == pytest.approx(0.9, abs=1e-6)  # confident (0.9) in token 0, token 1 came
    assert m["nll_gap_se_bits"] is None  # one token: no spread to estimate


def test_kl_with_zero_posterior_entries():
    m = calibration(*one_position([[1.0, 0.0, 0.0]], [[0.5, 0.25, 0.25]], [0]))
    assert m["kl_bits"] == pytest.approx(1.0, abs=1e-6)
    assert m["bayes_nll_bits"] == 0.0


def test_entropy_gap_zero_on_shifted_support():
    posterior = torch.zeros(1, 2, 4, dtype=torch.float64)
    posterior[0, 0, :2] = 0.5
    logits = torch.tensor([[[-50.0, -50.0, 0.0, 0.0], [0.0] * 4]])
    m = calibration(logits, posterior, torch.tensor([[True, False]]), torch.tensor([[0, 1]]))
    assert m["entropy_gap_bits"] == pytest.approx(0.0, abs=1e-9)
    assert m["kl_bits"] > 50


def test_entropy_gap_means_then_abs_and_weights_positions_equally():
    # Position 0: seq A has H(q)=2, H(p)=1 and seq B has H(q)=1, H(p)=2: the means agree, gap 0.
    # Position 1: only seq A is scored, H(q)=2, H(p)=1: gap 1. Average over positions: 0.5.
    half, flat = [0.5, 0.5, 0.0, 0.0], [0.25] * 4
    posterior = torch.tensor([[half, half, flat], [flat, flat, flat]], dtype=torch.float64)
    logits = torch.tensor([[[0.0] * 4, [0.0] * 4, [0.0] * 4], [[0.0, 0.0, -60.0, -60.0]] * 3])
    scored = torch.tensor([[True, True, False], [True, False, False]])
    m = calibration(logits, posterior, scored, torch.zeros(2, 3, dtype=torch.long))
    assert m["entropy_gap_bits"] == pytest.approx(0.5, abs=1e-9)
    assert m["model_entropy_bits_by_position"][0] == pytest.approx(1.5, abs=1e-9)
    assert m["posterior_entropy_bits_by_position"][1] == pytest.approx(1.0, abs=1e-12)
    assert m["kl_bits_by_position"][2] is None


def test_nll_hand_example_and_se():
    # Two predictions: q(next) = 0.5 and 0.25, p*(next) = 0.5 and 0.5.
    m = calibration(*one_position([[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.75, 0.25]], [1, 1]))
    assert m["nll_bits"] == pytest.approx((1 + 2) / 2, abs=1e-9)
    assert m["bayes_nll_bits"] == pytest.approx(1.0, abs=1e-12)
    # Differences 0 and 1 bit: sample std 1/sqrt(2), standard error 1/2.
    assert m["nll_gap_se_bits"] == pytest.approx(0.5, abs=1e-9)


def test_ece_hand_example():
    # Model confidences 0.95 (one right, one wrong) and 0.7 (both right) in token 0:
    # ECE = 0.5·|0.5 − 0.95| + 0.5·|1 − 0.7| = 0.375.
    q = [[0.95, 0.05], [0.95, 0.05], [0.7, 0.3], [0.7, 0.3]]
    m = calibration(*one_position([[0.5, 0.5]] * 4, q, [0, 1, 0, 0]))
    assert m["ece"] == pytest.approx(0.375, abs=1e-6)


def test_chunks_equal_one_shot():
    g = torch.Generator().manual_seed(3)
    B, Tn, Vn = 11, 7, 5
    posterior = torch.distributions.Dirichlet(torch.full((Vn,), 0.5)).sample((B, Tn)).double()
    posterior[:, :, 0] = 0.0  # zero-probability entries
    posterior = posterior / posterior.sum(-1, keepdim=True)
    tokens = torch.randint(1, Vn, (B, Tn), generator=g)
    logits = torch.randn(B, Tn, Vn, generator=g)
    scored = torch.rand(B, Tn, generator=g) < 0.7
    scored[:, -1] = False
    scored[:, 2] = False
    whole = calibration(logits, posterior, scored, tokens)
    acc = CalibrationAccumulator(Tn)
    for s in range(0, B, 3):
        acc.update(logits[s : s + 3], posterior[s : s + 3], scored[s : s + 3], tokens[s : s + 3])
    chunked = acc.compute()
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        if isinstance(value, list):
            assert [v is None for v in value] == [v is None for v in chunked[key]]
            present = [v for v in chunked[key] if v is not None]
            assert [v for v in value if v is not None] == pytest.approx(present)
        else:
            assert chunked[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert whole["kl_bits_by_position"][2] is None and whole["kl_bits_by_position"][-1] is None
    assert whole["kl_bits"] > 0 and whole["n_scored"] == int(scored.sum())
    # kl_bits is the scored-count-weighted mean of the per-position values.
    counts = scored.sum(0).tolist()
    per = whole["kl_bits_by_position"]
    weighted = sum(c * v for c, v in zip(counts, per) if v is not None)
    assert whole["kl_bits"] == pytest.approx(weighted / sum(counts))


def test_empty_and_shape_errors():
    m = CalibrationAccumulator(4).compute()
    assert m["n_scored"] == 0 and m["kl_bits"] is None and m["kl_bits_by_position"] == [None] * 4
    with pytest.raises(ValueError, match="shapes disagree"):
        calibration(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.bool),
                    torch.zeros(1, 3, dtype=torch.long))
