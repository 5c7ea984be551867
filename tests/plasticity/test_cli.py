"""Every configuration mistake: exit status 2, one line naming the key and what is allowed, no files."""

import subprocess
import sys

import pytest

from plasticity.cli import main
from plasticity.run.build import build
from plasticity.run.config import ConfigError, load_config

BAD = [
    # (overrides, words the one-line message must contain)
    (["model.n_layer=4"], ["model.n_layer", "n_layers", "Did you mean"]),
    (["seeed=3"], ["seeed", "Did you mean 'seed'"]),
    (["seed=abc"], ["seed", "abc"]),
    (["optim.lr=-1"], ["optim.lr", "> 0"]),
    (["loss=hinge"], ["loss", "sampled", "posterior"]),
    (["model=mlpp"], ["model=mlpp", "mlp", "Did you mean"]),
    (["stream=nope"], ["stream=nope", "bijection"]),
    (["stream=/does/not/exist.yaml"], ["stream", "not found"]),
    (["arms=[naiv]"], ["naiv", "naive"]),
    (["stream.phases.0.params.n_symbols=1"], ["n_symbols", "1"]),
    (["stream.phases.0.family=dirichlett"], ["dirichlet"]),
    (["stream.phases.0.steps=0"], ["steps", ">= 1"]),
    (["model.name=gru"], ["gru", "transformer"]),
    (["arms.naive.lr=3"], ["naive", "lr"]),
    (["trainer.accelerator=tpu"], ["trainer.accelerator", "cpu"]),
    (["eval.every=0"], ["eval.every", "> 0"]),
    (["nokeyvalue"], ["key=value"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[b[0][0] for b in BAD])
def test_config_errors_exit_2_with_one_line(overrides, words, tmp_path, capsys):
    code = main(["run", "smoke", *overrides, f"run.dir={tmp_path / 'run'}", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "run").exists()  # nothing written before the config is valid


def test_malformed_and_missing_experiment_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["run", "smok"]) == 2
    assert "Did you mean 'smoke'" in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "plasticity.cli", "run", "smoke", "model.d_modle=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr


def test_group_selection_and_overrides_compose():
    cfg = load_config("smoke", ["model=mlp", "model.depth=3", "seed=7", "arms=[naive]"])
    build(cfg)
    assert cfg.model.name == "mlp" and cfg.model.depth == 3 and cfg.model.match_params.name == "transformer"
    assert cfg.seed == 7 and list(cfg.arms) == ["naive"]


def test_strategy_shorthand_sets_the_single_arm():
    cfg = load_config("smoke", ["strategy=naive"])
    assert list(cfg.arms) == ["naive"]
    with pytest.raises(ConfigError, match="strategy"):
        load_config("smoke", ["strategy.lam=3"])  # two arms: ambiguous


def test_list_names_every_group(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("smoke", "bijection", "transformer", "naive", "dirichlet("):
        assert word in out


def test_a_run_builds_its_config_once(tmp_path, monkeypatch):
    import plasticity.run.build as build_module

    calls = []
    real = build_module._build
    monkeypatch.setattr(build_module, "_build", lambda cfg: calls.append(1) or real(cfg))
    assert main(["run", "smoke", f"run.dir={tmp_path}", "progress=false", "plots=false",
                 "stream.phases.0.steps=10", "stream.phases.1.steps=10"]) == 0
    assert len(calls) == 1
