"""The analysis scripts of the shipped experiments run end to end on tiny runs and print what they promise."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from plasticity.entry import run
from plasticity.run.config import load_config

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run_script(name: str, *args: str, monkeypatch, capsys):
    """The script's captured stdout and stderr (.out, .err)."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(SCRIPTS / name), run_name="__main__")
    return capsys.readouterr()


def refused(name: str, *args: str, monkeypatch, capsys) -> str:
    """The stderr of a script that must stop with exit status 2 (bad input)."""
    with pytest.raises(SystemExit) as stop:
        run_script(name, *args, monkeypatch=monkeypatch, capsys=capsys)
    assert stop.value.code == 2
    return capsys.readouterr().err


def another_lr(run_dir: Path) -> None:
    """Make the run no longer a seed of its peers: its config gets another learning rate."""
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("\n  lr: 0.001\n", "\n  lr: 0.003\n"))


@pytest.mark.slow
def test_causal_icl_tables(tmp_path, monkeypatch, capsys):
    phases = ("stream.phases=[{name: any, family: causal, params: {n_rows: 4}, steps: 30},"
              "{name: chain, family: causal, params: {n_rows: 4, graph: [[0, 1], [1, 2]]}, steps: 10}]")
    cfg = load_config("causal_icl", [phases, "stream.eval_size=32", "eval.every=10", "progress=false",
                                     "plots=false", "arms=[frozen,naive]", "fresh=false", "trainer.workers=1"])
    run(cfg, tmp_path)
    out = run_script("causal_icl.py", str(tmp_path), "--rows", "4", monkeypatch=monkeypatch, capsys=capsys).out
    assert "## 1. In context" in out and "## 3. Drift" in out
    table1 = [line for line in out.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [line.split("|")[1].strip() for line in table1[:4]] == ["0", "1", "2", "3"]
    assert "| naive | chain |" in out and "| pretrain | any |" in out


def test_geometry_lead_table(tmp_path, monkeypatch, capsys):
    cfg = load_config("smoke", ["progress=false", "plots=false", "eval.every=10", "eval.geometry_every=10",
                                "eval.geometry_size=8"])
    run(cfg, tmp_path)
    out = run_script("geometry_table.py", str(tmp_path), "--lead", monkeypatch=monkeypatch, capsys=capsys).out
    lines = [line for line in out.splitlines() if line.startswith("| naive |")]
    assert len(lines) == 1 and "step 160" in lines[0]  # the smoke stream's phase 1 starts at 150
    out = run_script("geometry_table.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys).out
    assert "| naive | 210 | new_symbols |" in out


def test_half_change_step_by_hand():
    geometry_table = runpy.run_path(str(SCRIPTS / "geometry_table.py"))
    half = geometry_table["half_change_step"]
    # from 1.0 to 0.0: half of the change is made at the first value <= 0.5
    assert half([(0, 1.0), (10, 0.8), (20, 0.5), (30, 0.1), (40, 0.0)], floor=0.01) == 20
    assert half([(0, 0.2), (10, 0.9), (20, 1.0)], floor=0.01) == 10  # rising
    assert half([(0, 0.5), (10, 0.502)], floor=0.01) is None  # no change worth the name


def test_length_generalisation_splits_the_curve_at_the_training_length(tmp_path, monkeypatch, capsys):
    cfg = load_config("compare_architectures", ["stream=recall_longer", "model=transformer_rotary", "progress=false",
                                                "plots=false", "stream.phases.0.steps=4", "eval.every=4",
                                                "eval.size=16"])
    run(cfg, tmp_path / "seed0")
    shutil.copytree(tmp_path / "seed0", tmp_path / "seed1")
    # recall trained with 4 queries is T = 25 (positions 0..23 trained), evaluated with 16: T = 49
    for seed, (inside, beyond) in ((0, (1.0, 3.0)), (1, (2.0, 5.0))):
        curve = [None if t % 2 else (inside if t < 24 else beyond) for t in range(49)]
        row = {"arm": "pretrain", "step": 4, "eval_phase": 0, "kl_bits_by_position": curve}
        (tmp_path / f"seed{seed}" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    shutil.copytree(tmp_path / "seed0", tmp_path / "alien")  # a user's family this install does not know
    config = tmp_path / "alien" / "config.yaml"
    config.write_text(config.read_text().replace("family: recall", "family: not_installed_here"))
    done = run_script("length_generalisation.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert f"skipped {tmp_path / 'alien'}: its stream cannot be rebuilt: " in done.err
    out = done.out
    half_width = 12.706204736174698 * (2 ** 0.5 / 2) / 2 ** 0.5  # t_{0.975,1} · s / sqrt(n), s of (1, 2)
    assert f"| recall | transformer (rotary) | 25 → 49 | 2 | 1.5000 ± {half_width:.4f} | 4.0000 ± " in out
    assert (tmp_path / "length_generalisation.csv").exists()
    assert (tmp_path / "plots" / "length_generalisation.png").stat().st_size > 0
    another_lr(tmp_path / "seed1")
    err = refused("length_generalisation.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert "the runs of task recall, model transformer (rotary) differ in optim.lr: " in err


def test_learning_curves_gives_each_lines_final_kl_and_when_each_seed_learned(tmp_path, monkeypatch, capsys):
    cfg = load_config("compare_architectures", ["stream=recall", "model=lstm", "progress=false", "plots=false",
                                                "stream.phases.0.steps=4", "eval.every=4", "eval.size=16"])
    run(cfg, tmp_path / "lstm0")
    curves = {"lstm0": [2.0, 0.04, 0.01], "lstm1": [2.0, 0.5, 0.03], "mlp0": [2.0, 1.0, 0.9]}
    for name, kls in curves.items():
        if name != "lstm0":
            shutil.copytree(tmp_path / "lstm0", tmp_path / name)
        config = tmp_path / name / "config.yaml"
        text = config.read_text().replace("\nseed: 0\n", f"\nseed: {name[-1]}\n")
        config.write_text(text.replace("name: lstm", f"name: {name[:-1]}"))
        rows = [{"arm": "pretrain", "step": 500 * i, "eval_phase": 0, "kl_bits": kl} for i, kl in enumerate(kls)]
        rows.append({"arm": "naive", "step": 1500, "eval_phase": 0, "kl_bits": 0.0})  # another arm: not drawn
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_script("learning_curves.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys).out
    half_width = 12.706204736174698 * 0.02 ** 0.5 * 0.1 / 2 ** 0.5  # t_{0.975,1} · s / sqrt(n), s of (0.01, 0.03)
    assert f"| recall | lstm | 2 | 0.0200 ± {half_width:.4f} | 500, 1000 |" in out
    assert "| recall | mlp | 1 | 0.9000 | - |" in out
    assert (tmp_path / "plots" / "learning_curves.png").stat().st_size > 0
    out = run_script("learning_curves.py", str(tmp_path), "--panels", "model", "--lines", "seed",
                     "--threshold", "0.5", monkeypatch=monkeypatch, capsys=capsys).out
    assert "| lstm | 0 | 1 | 0.0100 | 500 |" in out and "| lstm | 1 | 1 | 0.0300 | 500 |" in out
    err = refused("learning_curves.py", str(tmp_path), "--threshold", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert "--threshold=0.0: must be > 0" in err
    another_lr(tmp_path / "lstm1")
    err = refused("learning_curves.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert "the runs of stream=recall, model=lstm differ in optim.lr: " in err


def test_hmm_filtering_splits_the_kl_at_the_sep_position(tmp_path, monkeypatch, capsys):
    for stream in ("hmm", "hmm_fixed"):
        cfg = load_config("compare_architectures", [f"stream={stream}", "model=mlp", "progress=false", "plots=false",
                                                    "stream.phases.0.steps=4", "eval.every=4", "eval.size=16"])
        run(cfg, tmp_path / f"{stream}0")
        shutil.copytree(tmp_path / f"{stream}0", tmp_path / f"{stream}1")
    # hmm: a 50-token header (5 x 5 transition + 5 x 5 emission), SEP at 50, 32 observations (scored 50..81);
    # hmm_fixed: SEP at 0, scored 0..31. The last evaluation (step 4) counts, not the first.
    for name, sep, after, length in (("hmm0", 0.1, [0.2, 0.4], 83), ("hmm1", 0.3, [0.6], 83),
                                     ("hmm_fixed0", 0.5, [0.5], 33), ("hmm_fixed1", 0.5, [0.7], 33)):
        start = 50 if length == 83 else 0
        curve = [None] * length
        curve[start] = sep
        for i in range(start + 1, start + 32):
            curve[i] = after[i % len(after)]  # hmm0: 31 positions alternate 0.4, 0.2, ... (16 x 0.4, 15 x 0.2)
        rows = [{"arm": "pretrain", "step": 0, "eval_phase": 0, "kl_bits_by_position": [9.0] * length},
                {"arm": "pretrain", "step": 4, "eval_phase": 0, "kl_bits_by_position": curve}]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_script("hmm_filtering.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys).out
    t1 = 12.706204736174698  # t_{0.975,1}; the interval of two values a, b is t1 · |a − b| / 2
    hmm0_after = (16 * 0.4 + 15 * 0.2) / 31
    sep_ci, after_ci = t1 * 0.2 / 2, t1 * abs(hmm0_after - 0.6) / 2
    assert (f"| hmm | mlp | 2 | 0.2000 ± {sep_ci:.4f} | {(hmm0_after + 0.6) / 2:.4f} ± {after_ci:.4f} | "
            f"[0.1, 0.3], [{round(hmm0_after, 4)}, 0.6] |") in out
    assert f"| hmm_fixed | mlp | 2 | 0.5000 ± 0.0000 | 0.6000 ± {t1 * 0.1:.4f} | [0.5, 0.5], [0.5, 0.7] |" in out
    assert (tmp_path / "hmm_filtering.csv").exists()
    another_lr(tmp_path / "hmm1")
    err = refused("hmm_filtering.py", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert "the runs of stream hmm, model mlp differ in optim.lr: " in err
