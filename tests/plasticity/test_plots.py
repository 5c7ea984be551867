"""Figures from a run directory: every PNG exists, is a PNG, and is not blank; sweeps pool seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from plasticity.files import read_jsonl
from plasticity.results.figures import EARLIER, TRAINED, kl_curves, save, stream_curves
from plasticity.results.phase_plots import bin_width, binned, per_phase, seeds_phase_figure
from plasticity.results.plots import (
    kl_figure,
    make_plots,
    probe_series,
    r_from_rows,
    r_matrices_figure,
    r_matrix_figure,
)
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


# ------------------------------------------------------------------------------------------- long streams
LONG = """name: long
stream:
  batch_size: 8
  eval_size: 16
  phases: [{name: task, family: bijection, params: {n_keys: 4}, relabel: true, repeat: 14, steps: 4}]
model: {name: transformer, n_layers: 1, d_model: 16, n_heads: 2, d_ff: 32}
arms: [naive]
fresh: true
fresh_every: 5
eval: {every: 4, phases: current}
"""


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory) -> Path:
    from plasticity.entry import run

    root = tmp_path_factory.mktemp("long")
    (root / "long.yaml").write_text(LONG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        run(load_config(str(root / "long.yaml"), ["progress=false", "plots=false", "logger.wandb.mode=disabled"]),
            root / "run")
    return root / "run"


def test_a_long_stream_is_drawn_by_phase_index(long_dir):
    """14 phases (> MANY_PHASES): the KL in two views rather than 14 panels, the R heatmap without its 196
    values, and the per-phase figure; each a real PNG."""
    paths = make_plots(long_dir)
    assert {p.name for p in paths} == RUN_FIGURES | {"phases.png"}
    for p in paths:
        assert_real_png(p)
    rows = read_jsonl(long_dir / "metrics.jsonl")
    summary = json.loads((long_dir / "summary.json").read_text())
    fig = kl_figure(rows, summary)
    assert [ax.get_title() for ax in fig.axes] == [f"evaluated on {TRAINED}", f"evaluated on {EARLIER}"]
    assert all(not ax.texts for ax in r_matrices_figure(summary, rows).axes)
    curves = stream_curves(rows)
    trained = {(r["step"], r["kl_bits"]) for r in rows if r["arm"] == "naive" and r["eval_phase"] == r["phase"]}
    assert set(curves["naive"][TRAINED]) == trained
    last = max(r["step"] for r in rows)  # only the final evaluation covers the earlier phases
    finals = [r["kl_bits"] for r in rows if r["arm"] == "naive" and r["step"] == last and r["eval_phase"] < r["phase"]]
    assert curves["naive"][EARLIER] == [(last, pytest.approx(sum(finals) / len(finals)))]


def test_per_phase_figures_read_the_summary(long_dir):
    summary = json.loads((long_dir / "summary.json").read_text())
    series = per_phase(summary)
    R = summary["arms"]["naive"]["R_kl_bits"]
    end = series["end_kl"]["naive"]
    assert np.isnan(end[0]) and end[1:].tolist() == [R[i][i] for i in range(1, 14)]
    fresh = series["end_kl"]["fresh"]
    assert [i for i in range(14) if np.isfinite(fresh[i])] == [1, 6, 11]  # fresh_every 5 from phase 1
    assert series["gap"]["naive"][6] == pytest.approx(R[6][6] - fresh[6])
    assert series["regret"]["naive"][1:].tolist() == summary["arms"]["naive"]["regret_bits_per_token"][1:]


def test_binned_means_by_hand():
    x, m = binned(np.array([np.nan, 1.0, 2.0, 3.0, np.nan, 5.0]), 2)
    assert x.tolist() == [1.5, 3.5, 5.0] and m.tolist() == [1.5, 3.0, 5.0]
    assert bin_width(41) == 1 and bin_width(42) == 2 and bin_width(501) == 13


def test_seeds_phase_figure_draws_the_mean_over_seeds():
    def summary(values):
        n = len(values) + 1
        R = [[0.0] * n for _ in range(n)]
        for i, v in enumerate(values, start=1):
            R[i][i] = v
        return {"name": "s", "phases": [f"p{i}" for i in range(n)], "arms": {"naive": {"R_kl_bits": R}}}

    fig = seeds_phase_figure([summary([1.0, 2.0, 4.0]), summary([3.0, 4.0, 8.0])], "two seeds")
    line = fig.axes[0].lines[0]
    assert line.get_xdata().tolist() == [1, 2, 3] and line.get_ydata().tolist() == [2.0, 3.0, 6.0]
