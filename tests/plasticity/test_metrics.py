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


def test_token_groups_report_their_own_kl():
    # Two sequences, one scored position each: KLs 0.5·log2(25/9) and 0 (identical); a group holding only the
    # first, one holding only the second, one with no token (None, not 0).
    logits, posterior, scored, tokens = one_position([[0.5, 0.5], [0.3, 0.7]], [[0.9, 0.1], [0.3, 0.7]], [1, 0])
    acc = CalibrationAccumulator(2)
    first = torch.tensor([[True, True], [False, False]])  # the unscored position 1 never counts
    none = torch.zeros(2, 2, dtype=torch.bool)
    acc.update(logits, posterior, scored, tokens, groups={"a": first, "b": ~first, "none": none})
    m = acc.compute()
    assert m["groups"]["kl_bits_a"] == pytest.approx(0.5 * math.log2(25 / 9), abs=1e-12)
    assert m["groups"]["kl_bits_b"] == pytest.approx(0.0, abs=1e-12)
    assert m["groups"]["kl_bits_none"] is None
    assert m["groups"]["kl_bits_a_by_position"] == [pytest.approx(0.5 * math.log2(25 / 9)), None]
    assert m["kl_bits"] == pytest.approx(0.25 * math.log2(25 / 9), abs=1e-12)


def test_an_eval_bank_reports_its_token_groups():
    from plasticity.eval.evaluator import evaluate_bank
    from streams import make

    bank = make("causal", n_nodes=3, n_values=2, n_rows=4).sample(40, torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Embedding(bank.vocab_size, 8), torch.nn.Linear(8, bank.vocab_size))
    m = evaluate_bank(model, bank, batch_size=16, device=torch.device("cpu"))
    n_obs, n_do = int(bank.latent["scored_obs"].sum()), int(bank.latent["scored_do"].sum())
    assert n_obs > 0 and n_do > 0
    # The groups split the scored tokens, so their token-weighted mean is the overall KL.
    mixed = (m["groups"]["kl_bits_obs"] * n_obs + m["groups"]["kl_bits_do"] * n_do) / (n_obs + n_do)
    assert mixed == pytest.approx(m["kl_bits"], rel=1e-12)
    with torch.no_grad():
        whole = calibration(model(bank.tokens), bank.posterior, bank.latent["scored_do"], bank.tokens)
    assert m["groups"]["kl_bits_do"] == pytest.approx(whole["kl_bits"], rel=1e-12)
