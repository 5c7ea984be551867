"""End to end: the run directory contract, the protocol (pretrain once, fork arms) and what it measures."""

import json

import pytest
import torch
import yaml

from plasticity.entry import run
from plasticity.models import build_model, count_parameters, resolve
from plasticity.run.config import load_config

ROW_FIELDS = ("arm", "step", "phase", "eval_phase", "kl_bits", "entropy_gap_bits", "nll_bits", "bayes_nll_bits",
              "ece", "kl_bits_by_position", "dormant_frac", "effective_rank", "weight_norm", "grad_norm")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("smoke")
    cfg = load_config("smoke", ["progress=false"])
    return run(cfg, path), path


def test_run_directory_has_every_file_and_field(smoke_run):
    summary, path = smoke_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/pretrained.pt",
                 "checkpoints/naive.pt", "checkpoints/frozen.pt"):
        assert (path / name).is_file(), name
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["name"] == "smoke" and "git_commit" in config
    assert config["stream"]["phases"][0]["family"] == "dirichlet"  # resolved, not a group name
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(all(f in r for f in ROW_FIELDS) for r in rows)
    assert {r["arm"] for r in rows} == {"pretrain", "frozen", "naive"}
    on_disk = json.loads((path / "summary.json").read_text())
    assert on_disk["phases"] == ["pretrain", "new_symbols"]
    for arm in ("frozen", "naive"):
        res = on_disk["arms"][arm]
        assert res["strategy"] == arm
        assert len(res["R_kl_bits"]) == 2 and all(len(row) == 2 for row in res["R_kl_bits"])
        for key in ("final_kl_bits", "forgetting_bits", "bwt_bits", "auc_kl"):
            assert key in res
    for key in ("wall_seconds", "train_tokens_per_second", "eval_fraction"):
        assert on_disk["timing"][key] > 0


def test_every_arm_forks_from_the_same_pretrained_weights(smoke_run):
    summary, path = smoke_run
    R = {arm: res["R_kl_bits"] for arm, res in summary["arms"].items()}
    assert R["frozen"][0] == R["naive"][0]  # row 0 is the shared pretraining
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    pre_end = [r["kl_bits"] for r in rows if r["arm"] == "pretrain" and r["step"] == 150]
    assert pre_end == R["naive"][0]


def test_frozen_weights_are_bit_identical_and_its_rows_do_not_change(smoke_run):
    summary, path = smoke_run
    pre = torch.load(path / "checkpoints/pretrained.pt", weights_only=True)["model"]
    frozen = torch.load(path / "checkpoints/frozen.pt", weights_only=True)["model"]
    naive = torch.load(path / "checkpoints/naive.pt", weights_only=True)["model"]
    assert all(torch.equal(pre[k], frozen[k]) for k in pre)
    assert any(not torch.equal(pre[k], naive[k]) for k in pre)
    R = summary["arms"]["frozen"]["R_kl_bits"]
    assert R[0] == R[1]
    assert summary["arms"]["frozen"]["forgetting_bits"] == [0.0, 0.0]


def test_naive_forgets_on_out_of_support_drift_and_frozen_cannot_follow(smoke_run):
    summary, _ = smoke_run
    naive, frozen = summary["arms"]["naive"], summary["arms"]["frozen"]
    assert naive["forgetting_bits"][0] > 0.05  # hand-check: R[1][0] - min(R[0][0], R[1][0])
    assert naive["forgetting_bits"][0] == pytest.approx(naive["R_kl_bits"][1][0] - naive["R_kl_bits"][0][0])
    assert naive["R_kl_bits"][1][1] < frozen["R_kl_bits"][1][1] / 3  # online adapts to new symbols


def test_training_reduces_kl_five_fold_from_initialization(smoke_run):
    _, path = smoke_run
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    curve = sorted((r["step"], r["kl_bits"]) for r in rows if r["arm"] == "pretrain" and r["eval_phase"] == 0)
    assert curve[0][0] == 0
    assert curve[-1][1] <= curve[0][1] / 5, curve


def test_single_phase_run_has_one_arm(tmp_path):
    cfg = load_config("smoke", ["progress=false", "arms=[]", "stream.phases=[{name: only, family: bijection,"
                                " params: {n_keys: 3}, steps: 20}]", "eval.every=10"])
    summary = run(cfg, tmp_path)
    assert list(summary["arms"]) == ["pretrain"]
    assert len(summary["arms"]["pretrain"]["R_kl_bits"]) == 1


def test_posterior_loss_trains_too(tmp_path):
    cfg = load_config("smoke", ["progress=false", "loss=posterior", "arms=[naive]", "stream.phases.0.steps=60",
                                "stream.phases.1.steps=10", "eval.every=30"])
    summary = run(cfg, tmp_path)
    R = summary["arms"]["naive"]["R_kl_bits"]
    assert R[0][0] < 0.5


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_baselines_match_the_transformer_within_5_percent(name):
    target = count_parameters(build_model({"name": "transformer"}, 20, 64))
    spec = {"name": name, "match_params": "transformer"}
    model = build_model(spec, 20, 64)
    assert abs(count_parameters(model) - target) / target <= 0.05
    assert resolve(spec, 20, 64)[1].hidden > 0


def test_long_streams_evaluate_the_current_phase_and_a_fresh_learner_every_k_phases(tmp_path):
    stream = ('{batch_size: 16, eval_size: 32, phases: [{name: p, family: bijection, params: {n_keys: 3}, '
              'relabel: true, repeat: 5, steps: 10}]}')
    cfg = load_config("smoke", ["progress=false", "plots=false", f"stream={stream}", "arms=[naive,frozen]",
                                "eval.every=5", "eval.phases=current", "fresh=true", "fresh_every=2"])
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    naive = [r for r in rows if r["arm"] == "naive"]
    assert {(r["step"], r["eval_phase"]) for r in naive if r["step"] < 50} == \
        {(s, (s - 1) // 10) for s in range(15, 50, 5)}  # only the phase being trained ...
    assert {r["eval_phase"] for r in naive if r["step"] == 50} == set(range(5))  # ... and every bank at the end
    R = summary["arms"]["naive"]["R_kl_bits"]
    assert R[2][0] is None and R[2][2] is not None and None not in R[4]
    frozen = [r for r in rows if r["arm"] == "frozen"]  # evaluated once, replayed as the steps select
    assert {(r["step"], r["eval_phase"]) for r in frozen} == {(r["step"], r["eval_phase"]) for r in naive}
    frozen_R = summary["arms"]["frozen"]["R_kl_bits"]
    assert frozen_R[2][0] is None and None not in frozen_R[4]
    assert all(frozen_R[i][i] == frozen_R[4][i] for i in range(1, 5))  # its weights do not change
    assert summary["arms"]["naive"]["forgetting_bits"][0] == pytest.approx(R[4][0] - min(R[0][0], R[4][0]))
    assert sorted(summary["arms"]["fresh"]["kl_bits_by_phase"]) == ["1", "3"]  # phases 1, 1 + 2
    gap = summary["arms"]["naive"]["plasticity_gap_bits"]
    assert gap[2] is None and gap[3] == pytest.approx(R[3][3] - summary["arms"]["fresh"]["kl_bits_by_phase"]["3"])
    with pytest.raises(Exception, match=r"eval.phases='recent:0': must be all, current, recent:K or every:K"):
        load_config("smoke", ["eval.phases=recent:0"])


def test_a_pool_phase_reports_both_yardsticks(tmp_path):
    """R_kl_general_bits holds each phase end's KL to the general posterior on the pool phases (None on the
    phase without a pool); final_kl_general_bits is the mean of its last row over those; no pool, no keys."""
    stream = ('{batch_size: 16, eval_size: 32, phases: [{name: prior, family: bijection, params: {n_keys: 3}, '
              'steps: 10}, {name: pool, family: bijection, params: {n_keys: 3}, tasks: 2, repeat: 2, steps: 10}]}')
    cfg = load_config("smoke", ["progress=false", "plots=false", f"stream={stream}", "arms=[naive]", "eval.every=5"])
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    naive = summary["arms"]["naive"]
    general = naive["R_kl_general_bits"]
    end = {r["eval_phase"]: r for r in rows if r["arm"] == "naive" and r["step"] == 30}
    assert general[2] == [None, end[1]["kl_bits_general"], end[2]["kl_bits_general"]]
    assert naive["final_kl_general_bits"] == pytest.approx((general[2][1] + general[2][2]) / 2)
    assert naive["R_kl_bits"][2][1] == end[1]["kl_bits"] != end[1]["kl_bits_general"]  # two yardsticks
    assert "R_kl_general_bits" not in run(load_config("smoke", ["progress=false", "plots=false"]),
                                          tmp_path / "plain")["arms"]["naive"]
