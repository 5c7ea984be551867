"""The divergence guard: NaN/Inf in the loss or logits stops that arm with a message (step, phase, last
finite loss) recorded in the summary; the other arms continue; plots, the CLI table and `report` cope."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from plasticity.cli import main

HERE = Path(__file__).resolve().parent


def _phase(name: str, n_symbols: int, steps: int) -> dict:
    return {"name": name, "family": "dirichlet", "params": {"n_symbols": n_symbols, "alpha": 1.0, "length": 12},
            "steps": steps}


# Phases: pretrain [0, 30), second [30, 50), third [50, 70). The explode arm's loss is NaN from step 40 on.
STREAM = {"batch_size": 16, "eval_size": 64,
          "phases": [_phase("pretrain", 4, 30), _phase("second", 6, 20), _phase("third", 5, 20)]}
ARMS = {"naive": {"strategy": "naive"}, "explode": {"strategy": "helpers_diverge:Explode", "at": 40},
        "frozen": {"strategy": "frozen"}}
TINY = ["progress=false", "trainer.threads=1", "eval.every=10", "eval.probes=false",
        "model.d_model=16", "model.d_ff=32", "model.n_heads=2"]


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("diverged")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HERE))  # the strategy is loaded by import path, as a user's own would be
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", "smoke", f"stream={json.dumps(STREAM)}", f"arms={json.dumps(ARMS)}",
                         f"run.dir={path}", *TINY])
    return code, path, out.getvalue(), err.getvalue()


def test_the_diverged_arm_stops_with_step_phase_and_last_finite_loss(diverged_run):
    code, path, out, err = diverged_run
    assert code == 0, err
    summary = json.loads((path / "summary.json").read_text())
    message = summary["arms"]["explode"]["diverged"]
    match = re.fullmatch(r"non-finite loss at step 40, phase 1; last finite loss (\S+)", message)
    assert match, message
    assert float(match.group(1)) > 0  # the loss of step 39, a real number
    assert f"arm 'explode' diverged: {message}; other arms continue" in err
    assert "explode" in out and "diverged" in out  # the CLI table says so rather than print numbers


def test_the_diverged_arm_reports_no_numbers_it_never_reached(diverged_run):
    code, path, out, err = diverged_run
    res = json.loads((path / "summary.json").read_text())["arms"]["explode"]
    R = res["R_kl_bits"]
    assert len(R) == 3 and all(isinstance(v, float) for v in R[0])  # row 0: the shared pretraining
    assert R[1] == [None] * 3 and R[2] == [None] * 3  # phases 1 and 2 never ended for this arm
    for key in ("final_kl_bits", "final_current_kl_bits", "forgetting_bits", "bwt_bits"):
        assert res[key] is None, key
    assert res["auc_kl"][1:] == [None, None]
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in rows if r["arm"] == "explode"})
    assert steps == [40]  # the evaluation before the divergence (30 is row 0, inherited), none after


def test_the_other_arms_continue_and_finish(diverged_run):
    code, path, out, err = diverged_run
    arms = json.loads((path / "summary.json").read_text())["arms"]
    for arm in ("naive", "frozen"):
        res = arms[arm]
        assert "diverged" not in res
        assert all(isinstance(v, float) and v >= 0 for row in res["R_kl_bits"] for v in row), arm
        assert isinstance(res["final_kl_bits"], float) and isinstance(res["bwt_bits"], float)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["arm"] == "naive") == 70


def test_plots_and_report_cope_with_a_diverged_arm(diverged_run, tmp_path, capsys):
    code, path, out, err = diverged_run
    assert "plots failed" not in err
    assert {p.name for p in (path / "plots").glob("*.png")} == {"kl_curves.png", "kl_every_step.png", "r_matrix.png",
                                                              "calibration.png", "phases.png"}
    assert main(["report", str(path), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "diverged arm explode" in printed and "step 40, phase 1" in printed
    md = (tmp_path / "report.md").read_text()
    assert "## Diverged arms" in md and "non-finite loss at step 40" in md
    rows = {r["arm"]: r for r in __import__("csv").DictReader((tmp_path / "report.csv").open())}
    assert rows["explode"]["final_kl_bits_mean"] == "" and float(rows["naive"]["final_kl_bits_mean"]) > 0


def test_diverged_pretraining_fails_the_run_with_one_line(tmp_path, capsys):
    """Pretraining is shared by every arm: when it diverges there is nothing to fork, the run fails (exit 1)."""
    code = main(["run", "smoke", "optim.lr=1e30", "stream.phases.0.steps=20", "stream.phases.1.steps=10",
                 f"run.dir={tmp_path}", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(r"error: pretraining diverged: non-finite loss at step \d+, phase 0; last finite loss \S+",
                        err), err
    assert not (tmp_path / "summary.json").exists()


class _Fixed(__import__("torch").nn.Module):
    """A 'model' returning given logits (plus a zero times a parameter, so there is a graph)."""

    def __init__(self, logits):
        super().__init__()
        import torch

        self.w = torch.nn.Parameter(torch.zeros(()))
        self.logits = logits

    def forward(self, tokens):
        return self.logits + self.w * 0


@pytest.mark.parametrize("where, value, diverged", [
    ("unscored", float("inf"), "logits"),   # the loss never sees it: only the logits check catches it
    ("unscored", float("nan"), "logits"),
    ("scored", float("nan"), "loss"),
    ("huge", 3e38, None),                   # finite, but their float32 sum overflows: still no divergence
])
def test_the_guard_checks_loss_and_every_logit(where, value, diverged):
    import torch

    from plasticity.train.lightning_module import WindTunnelModule
    from plasticity.train.optim import OptimConfig
    from plasticity.train.stopping import DivergenceError
    from streams import make

    batch = make("dirichlet", n_symbols=3, length=6).sample(4, torch.Generator().manual_seed(0))
    logits = torch.zeros(*batch.posterior.shape, dtype=torch.float32)
    if where == "huge":
        logits[~batch.scored, 0] = value
    else:
        mask = batch.scored if where == "scored" else ~batch.scored
        logits[mask] = value
    module = WindTunnelModule(_Fixed(logits), OptimConfig())
    if diverged is None:
        loss = module.compute_loss(batch).detach()
        assert torch.isfinite(loss) and module.last_finite_loss == float(loss)
    else:
        with pytest.raises(DivergenceError, match=f"non-finite {diverged} at step 0"):
            module.compute_loss(batch)
