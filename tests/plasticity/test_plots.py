"""Figures from a run directory: every PNG exists, is a PNG, and is not blank; sweeps pool seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread

from plasticity.files import read_jsonl
from plasticity.results.figures import kl_curves, save
from plasticity.results.plots import make_plots, probe_series, r_from_rows, r_matrix_figure
from plasticity.results.sweep_plots import plot_sweep
from plasticity.run.config import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = {"kl_curves.png", "kl_every_step.png", "r_matrix.png", "calibration.png", "probes.png"}


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    from plasticity.entry import run

    run_dir = tmp_path_factory.mktemp("plots") / "smoke"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        run(load_config("smoke", ["progress=false", "plots=false", "logger.wandb.mode=disabled"]), run_dir)
    return run_dir


def copy_run(src: Path, dst: Path, seed: int | None = None, scale: float = 1.0, **config) -> Path:
    """A copy of a run directory with another seed (and KLs scaled, so seeds differ) or config values."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("plots", "checkpoints", "wandb"))
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    if seed is not None:
        cfg["seed"] = seed
    for key, value in config.items():
        node = cfg
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = read_jsonl(dst / "metrics.jsonl")
    (dst / "metrics.jsonl").write_text("".join(json.dumps(dict(r, kl_bits=r["kl_bits"] * scale)) + "\n" for r in rows))
    summary = json.loads((dst / "summary.json").read_text())
    for res in summary["arms"].values():
        res["final_kl_bits"] *= scale
    (dst / "summary.json").write_text(json.dumps(summary))
    return dst


def assert_real_png(path: Path, min_bytes: int = 8_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))
    img = imread(path)[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 300, (path, img.shape)
    assert img.std() > 0.05, path  # not a blank canvas
    assert (img.min(axis=-1) < 0.9).mean() > 0.01, path  # some ink: lines, text, colors


def test_make_plots_writes_every_figure(smoke_dir):
    paths = make_plots(smoke_dir)
    assert {p.name for p in paths} == RUN_FIGURES
    for p in paths:
        assert p.parent == smoke_dir / "plots"
        assert_real_png(p)


def test_make_plots_without_summary_or_entropies(smoke_dir, tmp_path):
    """A crashed run (no summary.json) or an older one (no entropies by position) still gets its figures."""
    run_dir = copy_run(smoke_dir, tmp_path / "partial")
    (run_dir / "summary.json").unlink()
    rows = [{k: v for k, v in r.items() if "entropy_bits_by_position" not in k}
            for r in read_jsonl(run_dir / "metrics.jsonl")]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = make_plots(run_dir)
    assert {p.name for p in paths} == RUN_FIGURES
    for p in paths:
        assert_real_png(p)


def test_empty_run_dir_makes_no_plots(tmp_path):
    assert make_plots(tmp_path) == []


def test_arm_curves_start_where_pretraining_ends(smoke_dir):
    rows = read_jsonl(smoke_dir / "metrics.jsonl")
    curves = kl_curves(rows)
    fork = max(s for s, _ in curves["pretrain"][0])
    for arm in ("frozen", "naive"):
        for j in (0, 1):
            assert curves[arm][j][0] == max(curves["pretrain"][j])
            assert all(s > fork for s, _ in curves[arm][j][1:])
    probes = probe_series(rows)
    assert probes["naive"]["distance"][0] == (fork, 0.0)


def test_r_from_rows_matches_the_summary(smoke_dir):
    summary = json.loads((smoke_dir / "summary.json").read_text())
    derived = r_from_rows(read_jsonl(smoke_dir / "metrics.jsonl"))
    for arm in ("frozen", "naive"):
        R = summary["arms"][arm]["R_kl_bits"]
        assert sorted(derived[arm]) == list(range(len(R)))
        for i, row in enumerate(R):
            assert derived[arm][i] == pytest.approx(row)


def test_r_matrix_figure_takes_partial_rows(tmp_path):
    fig = r_matrix_figure({0: [0.01, 3.0, 2.0], 1: [0.5, 0.1, 1.5]}, ["a", "b", "c"], "partial R")
    assert fig.axes[-1].get_ylabel() == "KL (bits)"
    assert_real_png(save(fig, tmp_path / "r.png"), min_bytes=4_000)


def test_plot_sweep_pools_seeds(smoke_dir, tmp_path):
    runs = [copy_run(smoke_dir, tmp_path / "s0", seed=0),
            copy_run(smoke_dir, tmp_path / "s1", seed=1, scale=1.3),
            copy_run(smoke_dir, tmp_path / "wide", seed=0, model__d_model=64)]
    paths = plot_sweep(runs, tmp_path / "sweep")
    # two settings (d_model 32 with two seeds, d_model 64 with one) and the final-KL bars
    assert sorted(p.name for p in paths) == ["sweep_final_kl.png", "sweep_kl_0.png", "sweep_kl_1.png"]
    for p in paths:
        assert_real_png(p)


def test_single_phase_run(smoke_dir, tmp_path):
    """A pretraining-only run: one panel, a 1x1 R matrix, the pretrained model's calibration."""
    run_dir = tmp_path / "single"
    run_dir.mkdir()
    rows = [r for r in read_jsonl(smoke_dir / "metrics.jsonl") if r["arm"] == "pretrain" and r["eval_phase"] == 0]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = rows[-1]["kl_bits"]
    (run_dir / "summary.json").write_text(json.dumps({"name": "single", "phases": ["pretrain"], "arms": {
        "pretrain": {"strategy": "pretrain", "R_kl_bits": [[last]], "final_kl_bits": last}}}))
    paths = make_plots(run_dir)
    assert {p.name for p in paths} == RUN_FIGURES - {"kl_every_step.png"}  # no steps/ records copied here
    for p in paths:
        assert_real_png(p, min_bytes=4_000)
