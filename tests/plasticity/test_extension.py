"""Extension by one file: the worked examples of docs/strategies.md (a strategy) and docs/streams.md (a task
family), written out as a package outside plasticity and run as written — in process, and through the CLI
by their import paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plasticity.strategies import STRATEGIES, build_strategy
from plasticity.strategies.base import strategy_seed
from plasticity.strategies.reinit import fresh_state
from streams import make
from streams.base import FAMILIES
from tests.plasticity.test_strategies import pretrained_pair, run_arm, tiny_stream
from tests.streams.helpers import check_posterior_shape_and_mass, check_prefix_consistency_and_frequencies

ROOT = Path(__file__).resolve().parents[2]


def doc_block(doc: str, lang: str, marker: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    return next(b.split("```", 1)[0] for b in text.split(f"```{lang}\n")[1:] if marker in b)


@pytest.fixture(scope="module")
def mypkg(tmp_path_factory) -> Path:
    """A package outside plasticity holding the two examples: mypkg.head_reset and mypkg.coin."""
    root = tmp_path_factory.mktemp("outside")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "head_reset.py").write_text(doc_block("strategies.md", "python", "class HeadReset"))
    (root / "mypkg" / "coin.py").write_text(doc_block("streams.md", "python", "class Coin"))
    return root


@pytest.fixture
def on_path(mypkg, monkeypatch):
    """mypkg importable; the registries as they were afterwards (importing the examples registers them)."""
    monkeypatch.syspath_prepend(str(mypkg))
    for registry in (STRATEGIES, FAMILIES):
        monkeypatch.setattr(registry, "classes", dict(registry.classes))
    return mypkg


def test_the_example_strategy_resets_the_head_at_each_phase(on_path):
    strategy = build_strategy("hr", {"strategy": "mypkg.head_reset:HeadReset"})
    assert type(strategy).__name__ == "HeadReset" and strategy.params.scale == 1.0 and not strategy.ddp_safe
    with pytest.raises(ValueError, match=r"arms\.a: strategy 'head_reset': scale=-1"):
        build_strategy("a", {"strategy": "mypkg.head_reset:HeadReset", "scale": -1})
    stream = tiny_stream()
    model, init_state = pretrained_pair(stream)
    before = model.head.weight.detach().clone()
    run_arm(strategy, stream, model, init_state, last_phase=1)
    fresh = fresh_state(model, strategy_seed(stream.seed, 0, 1))
    assert not torch.allclose(model.head.weight, before)
    # One phase-1 start reset, then a few small Adam steps: still near the fresh head.
    assert (model.head.weight.detach() - fresh["head.weight"]).abs().max() < 0.1


def test_the_example_family_is_exact(on_path):
    coin = make("mypkg.coin:Coin", a=0.5, b=2.0, length=6)
    batch = coin.sample(20_000, torch.Generator().manual_seed(0))
    check_posterior_shape_and_mass(batch)
    # By hand: after BOS, T, H, H (tokens 0 1 2 2) two heads in three flips: (0.5 + 2) / (0.5 + 2 + 3).
    tokens = torch.tensor([0, 1, 2, 2])
    rows = (batch.tokens[:, :4] == tokens).all(1).nonzero().flatten()
    assert len(rows) > 0
    assert batch.posterior[rows[0], 3, 2].item() == pytest.approx(2.5 / 5.5, abs=1e-12)
    check_prefix_consistency_and_frequencies(batch, max_prefix_len=4)
    with pytest.raises(ValueError, match=r"coin\.length=0"):
        make("mypkg.coin:Coin", length=0)


def test_both_run_from_the_cli_by_import_path(mypkg, tmp_path):
    run_dir = tmp_path / "run"
    arms = '{naive: {strategy: naive}, hr: {strategy: "mypkg.head_reset:HeadReset", scale: 0.5}}'
    phase = '{name: coin, family: "mypkg.coin:Coin", params: {a: 0.5, b: 0.5}, steps: 60}'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(mypkg), str(ROOT)]), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "plasticity.cli", "run", "smoke", f"arms={arms}",
                           f"stream.phases.1={phase}", f"run.dir={run_dir}", "plots=false", "progress=false"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["phases"] == ["pretrain", "coin"]
    assert summary["arms"]["hr"]["strategy"] == "head_reset"
    naive, hr = summary["arms"]["naive"]["R_kl_bits"][1], summary["arms"]["hr"]["R_kl_bits"][1]
    assert naive != hr  # the reset changed what the arm learned
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["arms"]["hr"] == {"strategy": "mypkg.head_reset:HeadReset", "scale": 0.5, "seed": 0}
