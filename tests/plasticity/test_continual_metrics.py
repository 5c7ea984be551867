from types import SimpleNamespace

import pytest
import torch

from plasticity.eval.continual import (
    add_fresh,
    arm_summary,
    auc_kl,
    bwt_bits,
    forgetting_bits,
    steps_to_threshold,
)

# Three phases; KL in bits on phase j's bank (columns) after training phase i (rows).
R = [
    [0.10, 2.00, 3.00],
    [0.05, 0.20, 2.50],
    [0.40, 0.30, 0.15],
]


def test_forgetting():
    # Phase 0: 0.40 − min(0.10, 0.05, 0.40); phase 1: 0.30 − min(0.20, 0.30); last: 0.
    assert forgetting_bits(R) == pytest.approx([0.35, 0.10, 0.0])
    assert forgetting_bits(torch.tensor(R, dtype=torch.float64)) == pytest.approx([0.35, 0.10, 0.0])
    # Rows trained so far: after two phases only.
    assert forgetting_bits(R[:2]) == pytest.approx([0.0, 0.0])


def test_bwt_sign_positive_is_worse():
    assert bwt_bits(R) == pytest.approx(((0.40 - 0.10) + (0.30 - 0.20)) / 2)
    improved = [[0.5, 1.0], [0.2, 0.3]]
    assert bwt_bits(improved) == pytest.approx(-0.3)
    assert bwt_bits([[0.7]]) == 0.0


def test_an_arms_final_kl_is_the_mean_over_every_phase_at_the_end():
    phases = [SimpleNamespace(start=10 * i, steps=10) for i in range(3)]
    s = arm_summary("naive", dict(enumerate(R)), {}, phases, threshold_bits=0.05)
    assert s["final_kl_bits"] == pytest.approx((0.40 + 0.30 + 0.15) / 3)  # summary.json's final_kl_bits
    assert s["final_current_kl_bits"] == 0.15  # R[last][last]
    assert s["forgetting_bits"] == pytest.approx([0.35, 0.10, 0.0]) and s["R_kl_bits"] == R
    with pytest.raises(ValueError):
        forgetting_bits([[0.1], [0.2]])  # row 1 lacks phase 1's column


def test_auc_and_threshold():
    steps, kls = [100, 110, 130], [2.0, 1.0, 0.0]
    # Area = 10·1.5 + 20·0.5 = 25 over a span of 30.
    assert auc_kl(steps, kls) == pytest.approx(25 / 30)
    assert auc_kl(steps, kls, length=50) == pytest.approx(0.5)
    assert auc_kl([5], [0.3]) == 0.3
    assert steps_to_threshold(steps, kls, 1.0, start=100) == 10
    assert steps_to_threshold(steps, kls, -1.0, start=100) is None


def test_the_plasticity_gap_is_the_arms_kl_minus_the_fresh_learners_on_each_phase():
    arms = {"naive": {"R_kl_bits": R}}
    add_fresh(arms, {1: 0.1, 2: 0.1}, 3)  # fresh learners reach 0.1 on phases 1 and 2
    assert arms["naive"]["plasticity_gap_bits"] == pytest.approx([None, 0.1, 0.05])
    sparse = {"naive": {"R_kl_bits": R}}
    add_fresh(sparse, {1: 0.1}, 3)  # fresh_every: no fresh learner on phase 2, no gap there
    assert sparse["naive"]["plasticity_gap_bits"][2] is None and sparse["fresh"]["kl_bits_by_phase"] == {"1": 0.1}
    with_none = [[0.1, None, 3.0], [0.05, 0.2, None], [0.4, 0.3, 0.15]]  # eval.phases left cells out
    assert forgetting_bits(with_none) == pytest.approx([0.35, 0.10, 0.0])
