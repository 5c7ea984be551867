"""Streams: schedule, gradual mixing, cyclic recurrence, determinism, relabeling, placement, configs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from streams import Batch, Stream, load_stream
from streams.stream import PhaseSpec, StreamSpec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "stream").glob("*.yaml"))


def dirichlet(steps=10, **kw):
    params = {"n_symbols": 4, "alpha": 1.0, "length": 8}
    params.update(kw.pop("params", {}))
    return {"family": "dirichlet", "params": params, "steps": steps, **kw}


def bijection(steps=10, **kw):
    return {"family": "bijection", "params": {"n_keys": 4}, "steps": steps, **kw}


def digest(b: Batch) -> str:
    h = hashlib.sha256()
    for t in (b.tokens, b.posterior, b.scored):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def check_valid(b: Batch) -> None:
    """Rows sum to 1 where scored, are zero elsewhere; the next token always has positive mass."""
    sums = b.posterior.sum(-1)
    assert torch.allclose(sums[b.scored], torch.ones(()).double(), atol=1e-12)
    assert (sums[~b.scored] == 0).all()
    nxt = b.tokens[:, 1:]
    mass = b.posterior[:, :-1].gather(-1, nxt[..., None])[..., 0]
    assert (mass[b.scored[:, :-1]] > 0).all()


# --- schedule -------------------------------------------------------------------------------------


def test_boundaries_and_phase_at():
    s = Stream.from_spec({"phases": [dirichlet(5), bijection(3), dirichlet(7, name="late")]})
    assert s.boundaries == [0, 5, 8]
    assert s.total_steps == 15
    assert [p.name for p in s.phases] == ["dirichlet0", "bijection", "late"]
    assert [(p.start, p.end) for p in s.phases] == [(0, 5), (5, 8), (8, 15)]
    assert [s.phase_at(t) for t in range(15)] == [0] * 5 + [1] * 3 + [2] * 7
    assert s.mixture(7) == [(1, 64)]
    assert (s.batch(4).latent["phase"] == 0).all() and (s.batch(5).latent["phase"] == 1).all()
    for bad in (-1, 15):
        with pytest.raises(ValueError, match="step="):
            s.phase_at(bad)
    assert "late" in s.describe() and "[8, 15)" in s.describe()


def test_gradual_mixing_counts_and_sources():
    # Boundary at 100, window 8: steps 96..103 carry shares (k + 0.5) / 8 of phase 1, k = 0..7,
    # i.e. round(64 * share) = 4, 12, 20, 28, 36, 44, 52, 60 sequences.
    spec = {"phases": [dirichlet(100), dirichlet(100, offset=5)], "transition": "gradual", "window": 8}
    s = Stream.from_spec(spec, seed=3)
    assert s.vocab_size == 10
    expected = {95: [(0, 64)], 96: [(0, 60), (1, 4)], 99: [(0, 36), (1, 28)], 100: [(0, 28), (1, 36)],
                103: [(0, 4), (1, 60)], 104: [(1, 64)], 0: [(0, 64)], 199: [(1, 64)]}
    for step, mix in expected.items():
        assert s.mixture(step) == mix, step
        b = s.batch(step)
        assert len(b) == 64
        from_next = (b.tokens >= 5).all(1)  # phase 1 lives in ids 5..9, phase 0 in 0..4
        from_this = (b.tokens < 5).all(1)
        assert (from_next | from_this).all()
        n_next = dict(mix).get(1, 0)
        assert int(from_next.sum()) == n_next
        assert torch.equal(b.latent["phase"] == 1, from_next)
        check_valid(b)
    assert s.phase_at(99) == 0 and s.phase_at(100) == 1  # own intervals, not the mixture


def test_gradual_window_must_fit_and_be_set():
    with pytest.raises(ValueError, match=r"^stream\.window=0: must be an integer >= 1"):
        Stream.from_spec({"phases": [dirichlet(10), dirichlet(10)], "transition": "gradual"})
    with pytest.raises(ValueError, match=r"^stream\.window=12: must fit inside every phase"):
        Stream.from_spec({"phases": [dirichlet(20), dirichlet(10), dirichlet(20)], "transition": "gradual",
                          "window": 12})
    Stream.from_spec({"phases": [dirichlet(20), dirichlet(10), dirichlet(20)], "transition": "gradual",
                      "window": 10})


def test_cyclic_recurrence_shares_task_and_bank():
    spec = {"phases": [dirichlet(4, name="A", params={"alpha": 0.3}), bijection(6, name="B", relabel=True)],
            "transition": "cyclic", "cycles": 3, "eval_size": 16}
    s = Stream.from_spec(spec, seed=7)
    assert [p.name for p in s.phases] == ["A@0", "B@0", "A@1", "B@1", "A@2", "B@2"]
    assert len(s.tasks) == 2 and s.total_steps == 30
    assert [p.task_id for p in s.phases] == [0, 1, 0, 1, 0, 1]
    assert s.boundaries == [0, 4, 10, 14, 20, 24]
    banks = s.eval_banks()
    assert banks[0] is banks[2] is banks[4] and banks[1] is banks[3] is banks[5]
    assert banks[0] is not banks[1]
    assert s.eval_bank(3) is s.eval_bank(1)
    assert s.phases[1].family is s.phases[3].family
    # The relabel permutation is the task's, so a recurring phase uses the same mapping.
    b1, b3 = s.batch(4), s.batch(14)
    support = lambda b: set(b.tokens[:, 1::2].unique().tolist())  # value tokens of the bijection
    assert support(b1) == support(b3)
    assert not torch.equal(s.batch(0).tokens, s.batch(10).tokens)  # same task, different steps
    assert not torch.equal(b1.tokens, b3.tokens)


# --- determinism ----------------------------------------------------------------------------------


def test_batches_deterministic_in_seed_and_step():
    spec = {"phases": [dirichlet(5), bijection(5, offset=5)]}
    a, b = Stream.from_spec(spec, seed=1), Stream.from_spec(spec, seed=1)
    for step in (0, 3, 7):
        assert digest(a.batch(step)) == digest(b.batch(step)) == digest(a.batch(step))
    assert digest(a.batch(0)) != digest(a.batch(1))
    assert digest(a.batch(6)) != digest(a.batch(7))
    assert digest(a.batch(0)) != digest(Stream.from_spec(spec, seed=2).batch(0))
    assert not a._banks  # training batches never build eval banks


_SUBPROCESS = """
import hashlib, json, sys
from streams import Stream
s = Stream.from_spec(json.loads(sys.argv[1]), seed=int(sys.argv[2]))
out = []
for i in range(len(s.phases)):
    b = s.eval_bank(i)
    h = hashlib.sha256()
    for t in (b.tokens, b.posterior, b.scored):
        h.update(t.contiguous().numpy().tobytes())
    out.append(h.hexdigest())
b = s.batch(s.total_steps - 1)
h = hashlib.sha256()
for t in (b.tokens, b.posterior, b.scored):
    h.update(t.contiguous().numpy().tobytes())
out.append(h.hexdigest())
print(json.dumps(out))
"""


def test_eval_banks_fixed_across_calls_and_processes():
    spec = {"phases": [dirichlet(5, relabel=True), bijection(5, offset=5, relabel=True)], "eval_size": 32}
    s = Stream.from_spec(spec, seed=11)
    first = [digest(s.eval_bank(i)) for i in range(2)]
    assert s.eval_bank(0) is s.eval_bank(0)
    assert first == [digest(Stream.from_spec(spec, seed=11).eval_bank(i)) for i in range(2)]
    assert first[0] != digest(Stream.from_spec(spec, seed=12).eval_bank(0))
    bank = s.eval_bank(0)
    assert len(bank) == 32
    assert not torch.equal(bank.tokens[:16], s.batch(0).tokens[:16])  # eval seeds differ from training
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, json.dumps(spec), "11"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == first + [digest(s.batch(s.total_steps - 1))]


# --- relabeling, placement, padding ---------------------------------------------------------------


def test_relabel_is_a_consistent_permutation():
    plain = Stream.from_spec({"phases": [dirichlet(5, offset=3)]}, seed=5)
    relab = Stream.from_spec({"phases": [dirichlet(5, offset=3, relabel=True)]}, seed=5)
    perm = relab.tasks[0].permutation
    assert sorted(perm.tolist()) == list(range(5)) and perm.tolist() != list(range(5))
    for step in (0, 4):
        a, b = plain.batch(step), relab.batch(step)
        check_valid(b)
        # Same draws, shown through the permutation: token t -> perm[t]; column perm[j] holds old j.
        assert torch.equal(b.tokens, perm[a.tokens - 3] + 3)
        expected = torch.zeros_like(a.posterior)
        expected[..., 3 + perm] = a.posterior[..., 3:8]
        assert torch.equal(b.posterior, expected)
        # Mass only on the tokens the phase can emit: the relabeled symbols, never the relabeled BOS.
        emit = torch.zeros(relab.vocab_size, dtype=torch.bool)
        emit[3 + perm[1:]] = True
        assert (b.posterior[..., ~emit] == 0).all()
        assert (b.tokens[:, 0] == 3 + perm[0]).all()
    # Mapping depends on the seed, and a different seed process reproduces it (SeedSequence, not hash).
    other = Stream.from_spec({"phases": [dirichlet(5, relabel=True)]}, seed=6).tasks[0].permutation
    again = Stream.from_spec({"phases": [dirichlet(5, relabel=True)]}, seed=5).tasks[0].permutation
    assert torch.equal(again, perm) and not torch.equal(other, perm)


def test_repeat_expands_into_distinct_relabeled_tasks():
    spec = {"phases": [bijection(3, name="t", relabel=True, repeat=20)], "eval_size": 8}
    s = Stream.from_spec(spec, seed=2)
    assert [p.name for p in s.phases] == [f"t_{i}" for i in range(20)]
    assert len(s.tasks) == 20 and s.total_steps == 60
    perms = {tuple(t.permutation.tolist()) for t in s.tasks}
    assert len(perms) == 20
    for i in (0, 19):
        check_valid(s.eval_bank(i))
        check_valid(s.batch(s.phases[i].start))


def test_offset_placement_vocab_and_padding():
    s = Stream.from_spec({"phases": [bijection(5), dirichlet(5, offset=10, params={"length": 3})]})
    assert s.vocab_size == 15 and s.seq_len == 8  # bijection: V 8, T 8; dirichlet: V 5 at 10, T 4
    b = s.batch(5)
    assert b.tokens.shape == (64, 8) and b.posterior.shape == (64, 8, 15)
    assert ((b.tokens[:, :4] >= 10) & (b.tokens[:, :4] < 15)).all()
    assert (b.tokens[:, 0] == 10).all()  # BOS moved to the offset
    assert (b.tokens[:, 4:] == 0).all() and not b.scored[:, 3:].any()
    assert (b.posterior[:, 4:] == 0).all() and (b.posterior[..., :10] == 0).all()
    assert b.scored[:, :3].all()
    check_valid(b)
    bij = s.batch(0)
    assert bij.tokens.max() < 8 and (bij.posterior[..., 8:] == 0).all()
    check_valid(bij)
    bad = {"phases": [dirichlet(5, offset=-1)]}
    with pytest.raises(ValueError, match=r"^stream\.phases\[0\]\.offset=-1: must be an integer >= 0"):
        Stream.from_spec(bad)


def test_eval_length_generalization():
    spec = {"phases": [dirichlet(5, eval_length=20), bijection(5, offset=5)], "eval_length": 3,
            "eval_size": 8}
    s = Stream.from_spec(spec)
    assert s.seq_len == 9 and s.max_seq_len == 21
    assert s.eval_bank(0).tokens.shape == (8, 21)  # phase override, padded only to its own T
    assert s.eval_bank(1).tokens.shape == (8, 6)  # stream-level: bijection n_pairs=3
    check_valid(s.eval_bank(0))
    assert s.batch(0).tokens.shape == (64, 9)
    with pytest.raises(ValueError, match=r"^stream\.phases\[0\]\.eval_length=0: must be an integer >= 1"):
        Stream.from_spec({"phases": [dirichlet(5, eval_length=0)]})


# --- configs and validation -----------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_sample(path):
    s = load_stream(path)
    raw = yaml.safe_load(path.read_text())
    assert s.batch_size == raw.get("batch_size", 64)
    for step in (0, s.total_steps - 1):
        b = s.batch(step)
        assert b.tokens.shape == (s.batch_size, s.seq_len) and b.vocab_size == s.vocab_size
        check_valid(b)


def test_shipped_configs_present_and_shaped():
    names = {p.stem for p in CONFIGS}
    assert {"bijection", "hmm", "prior_shift", "out_of_support", "cyclic", "long_stream", "gradual"} <= names
    assert len(load_stream(ROOT / "configs/stream/long_stream.yaml").phases) >= 20
    cyc = load_stream(ROOT / "configs/stream/cyclic.yaml")
    assert len(cyc.tasks) == 2 and len(cyc.phases) == 6
    oos = load_stream(ROOT / "configs/stream/out_of_support.yaml")
    first = oos.batch(0)
    last = oos.batch(oos.total_steps - 1)
    assert first.tokens.max() <= 4 and last.tokens.max() > 4


def test_spec_dataclasses_and_structured_config():
    spec = StreamSpec(phases=[PhaseSpec(family="dirichlet", params={"n_symbols": 3}, steps=4)], batch_size=8)
    s = Stream.from_spec(spec)
    assert s.batch(0).tokens.shape[0] == 8 and s.spec is spec
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.merge(omegaconf.OmegaConf.structured(StreamSpec),
                                    {"phases": [{"family": "dirichlet", "params": {"alpha": [1, 2, 3, 4]},
                                                 "steps": 4}], "cycles": 2, "transition": "cyclic"})
    for obj in (omegaconf.OmegaConf.to_object(cfg), cfg):
        assert Stream.from_spec(obj).total_steps == 8


@pytest.mark.parametrize("spec, message", [
    ({"phases": [dirichlet(5), dirichlet(0)]}, r"^stream\.phases\[1\]\.steps=0: must be an integer >= 1"),
    ({"phases": [{"family": "dirichlett", "steps": 3}]},
     r"^stream\.phases\[0\]\.family: unknown family 'dirichlett'.*Did you mean 'dirichlet'\?"),
    ({"phases": [{"family": "dirichlet", "step": 3}]},
     r"^stream\.phases\[0\]\.step: unknown key; allowed: name, family, params, steps.*"
     r"Did you mean 'steps'\?"),
    ({"phases": [dirichlet(5)], "transition": "smooth"},
     r"^stream\.transition='smooth': must be one of abrupt, gradual, cyclic"),
    ({"phases": [dirichlet(5)], "batchsize": 3}, r"^stream\.batchsize: unknown key; allowed: phases"),
    ({"phases": []}, r"^stream\.phases=\[\]: must be a non-empty list"),
    ({"phases": [{"steps": 3}]}, r"^stream\.phases\[0\]\.family='\?\?\?': missing"),
    ({"phases": [dirichlet(5, params={"alpha": -1})]}, r"^stream\.phases\[0\]\.params: dirichlet\.alpha=-1"),
    ({"phases": [dirichlet(5, params={"n_sym": 3})]},
     r"^stream\.phases\[0\]\.params: unknown parameter 'n_sym'.*Did you mean 'n_symbols'\?"),
    ({"phases": [dirichlet(5, name="x"), dirichlet(5, name="x")]},
     r"^stream\.phases\[1\]\.name='x': duplicate"),
    ({"phases": [dirichlet(5, relabel="yes")]},
     r"^stream\.phases\[0\]\.relabel='yes': must be true or false"),
    ({"phases": [dirichlet(5, repeat=0)]}, r"^stream\.phases\[0\]\.repeat=0: must be an integer >= 1"),
    ({"phases": [dirichlet(5)], "batch_size": 0}, r"^stream\.batch_size=0: must be an integer >= 1"),
    ({"phases": [dirichlet(5)], "cycles": 0, "transition": "cyclic"}, r"^stream\.cycles=0: must be"),
])
def test_bad_input_names_the_key_path(spec, message):
    with pytest.raises(ValueError, match=message):
        Stream.from_spec(spec)


def test_load_stream_from_yaml_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("phases:\n  - {family: dirichlet, steps: 3}\n"
                    "  - {family: bijection, steps: 2, offset: 5}\n")
    s = load_stream(path, seed=4)
    assert s.total_steps == 5 and s.vocab_size == 21 and s.seed == 4
    path.write_text("phases:\n  - {family: dirichlet, steps: 3}\ntransition: smooth\n")
    with pytest.raises(ValueError, match=r"^stream\.transition='smooth'"):
        load_stream(path)


def test_token_group_masks_pad_with_the_batch():
    # A causal phase (T 12) beside a longer Dirichlet one (T 21): its padded batches keep masks of the
    # stream's length that still split `scored` exactly.
    causal = {"family": "causal", "params": {"n_nodes": 2, "n_values": 2, "n_rows": 4}, "steps": 2}
    s = Stream.from_spec({"phases": [causal, dirichlet(steps=2, params={"length": 20})], "batch_size": 16})
    b = s.batch(0)
    assert b.tokens.shape == (16, 21)
    obs, do = b.latent["scored_obs"], b.latent["scored_do"]
    assert obs.shape == do.shape == b.scored.shape and torch.equal(obs | do, b.scored) and not (obs & do).any()
    assert not b.scored[:, 12:].any()
