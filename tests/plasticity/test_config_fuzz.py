"""Fuzzing bad input: random mutations of valid configs through `plasticity run`.

Each example is either valid (validation passes; the run itself is replaced by a stub, nothing trains) or
rejected with exit status 2 and exactly one line on stderr, `error: ...`, before any file is written. No
exception from inside torch, OmegaConf or YAML may reach the user. Mutations: overrides of known keys with
values of every type (and out of range), misspelt and invented keys, nested garbage, unknown group options,
strategy parameters, YAML syntax in override values, and experiment files with keys dropped, renamed or
replaced and text cut or corrupted.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import plasticity.entry
from plasticity.cli import main
from plasticity.run.config import CONFIG_ROOT, group_options, load_config, to_container
from plasticity.strategies import STRATEGIES

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip(".")


SMOKE = to_container(load_config("smoke"))
KEYS = sorted(set(_leaves(SMOKE)) | {"stream", "model", "arms", "stream.phases", "stream.phases.0.params",
                                      "optim", "eval", "logger.wandb.tags", "arms.naive"})
STRATEGY_PARAMS = ["lam", "c", "buffer_size", "every", "tau", "shrink", "sigma", "target", "temperature", "xi",
                   "fisher_batches", "gamma", "decay_rate", "maturity_threshold", "replacement_rate",
                   "replay_fraction", "seed", "strategy", "nope"]
FAMILY_PARAMS = ["n_symbols", "alpha", "length", "n_keys", "n_pairs", "n_values", "n_queries", "with_replacement",
                 "n_states", "hazard", "transition", "emission", "concentration", "grid", "stickiness", "header"]
PHASE_FIELDS = ["name", "family", "params", "steps", "offset", "relabel", "repeat", "eval_length"]
GROUPS = {**{g: group_options(g) for g in ("stream", "model")}, "strategy": STRATEGIES.names()}
# Text that YAML reads as something surprising (dates, hex, interpolations, tags) or cannot read at all.
NASTY = ["???", "${oops}", "${seed}", "${stream.batch_size}", "[1, 2", "{a: 1", "!!python/object:os.system",
         "!!binary aGk=", "1e400", "-1e400", ".nan", "-.inf", ".inf", "2024-01-01", "2024-01-01 10:00:00", "0x10",
         "0o17", "1_000", "~", "null", "", "''", "[]", "{}", "[[]]", "{a: {b: {c: []}}}", "- a", "a: b", "@x", "%",
         "'unclosed", "\"x", "=", "==", "a=b", "yes", "off", "NaN", "-0", "1.5e-400", "9" * 30, "-" + "9" * 30,
         "transformer", "naive", "frozen", "\t", "\\", "é", "\x00", "🙂"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10),
                    st.text(max_size=8), st.sampled_from(NASTY))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=6)


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    try:
        return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...")
    except yaml.YAMLError:
        return str(value)


def _typo(word: str, data) -> str:
    if not word:
        return "x"
    i = data.draw(st.integers(0, len(word) - 1))
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "upper", "junk"]))
    if kind == "drop":
        return word[:i] + word[i + 1:] or "x"
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "upper":
        return word.upper()
    return word[:i] + data.draw(st.sampled_from(list("_.[]0x -?*$"))) + word[i:]


def _near(original):
    """Values of the original's type, in and out of range: what a plausible mistake looks like."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return st.one_of(st.integers(-3, 3 * max(1, original)), st.integers(-(2**70), 2**70))
    if isinstance(original, float):
        return st.one_of(st.floats(-3 * max(1.0, original), 3 * max(1.0, original)), st.floats())
    if isinstance(original, str):
        return st.one_of(st.text(max_size=8), st.sampled_from(NASTY))
    return values


def _original(key: str):
    node = SMOKE
    for part in key.split("."):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return node


@st.composite
def override(draw) -> str:
    kind = draw(st.sampled_from(["known", "known", "known", "typo", "invented", "group", "arm", "phase"]))
    value = _as_text(draw(values))
    if kind == "known":
        key = draw(st.sampled_from(KEYS))
        if draw(st.booleans()):
            value = _as_text(draw(_near(_original(key))))
    elif kind == "typo":
        parts = draw(st.sampled_from(KEYS)).split(".")
        j = draw(st.integers(0, len(parts) - 1))
        parts[j] = _typo(parts[j], draw(st.data()))
        key = ".".join(parts)
    elif kind == "invented":
        key = ".".join(draw(st.lists(st.from_regex(r"[a-z_0-9]{1,6}", fullmatch=True), min_size=1, max_size=4)))
    elif kind == "group":
        group = draw(st.sampled_from(["stream", "model", "arms", "strategy"]))
        options = GROUPS.get(group, GROUPS["strategy"])
        choice = draw(st.one_of(st.sampled_from(options), st.text(max_size=8), st.sampled_from(NASTY),
                                st.builds(lambda o: f"[{o}]", st.sampled_from(GROUPS["strategy"]))))
        return f"{group}={choice}"
    elif kind == "arm":
        arm = draw(st.sampled_from(["naive", "frozen", "ewc", "x"]))
        key = f"arms.{arm}.{draw(st.sampled_from(STRATEGY_PARAMS))}"
    else:
        i = draw(st.integers(0, 3))
        field = draw(st.sampled_from(PHASE_FIELDS + [f"params.{p}" for p in FAMILY_PARAMS]))
        key = f"stream.phases.{i}.{field}"
        if draw(st.booleans()):
            value = _as_text(draw(st.one_of(st.integers(-3, 100), st.integers(-(2**70), 2**70), st.floats())))
    return f"{key}={value}"


def _mutate_tree(tree, data):
    """Drop, rename or replace one node somewhere in a nested dict/list (in place)."""
    node = tree
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        action = data.draw(st.sampled_from(["drop", "rename", "replace", "replace"]))
        if action == "drop":
            del node[key]
        elif action == "rename" and isinstance(node, dict):
            node[_typo(str(key), data)] = node.pop(key)
        else:
            node[key] = data.draw(values)
        return


@pytest.fixture
def stub_run(monkeypatch):
    """The run itself is out of scope: a config that gets past validation stops here, untrained."""

    class Valid(Exception):
        pass

    def run(built, *args, **kwargs):
        raise Valid()

    monkeypatch.setattr(plasticity.entry, "execute", run)
    return Valid


def _check(argv: list[str], valid_exc: type[Exception]) -> str:
    """Run the CLI in an empty folder; returns 'valid' or 'error' and checks the contract."""
    with tempfile.TemporaryDirectory() as cwd:
        old = os.getcwd()
        os.chdir(cwd)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(["run", *argv, f"run.root={cwd}/runs", "progress=false"])
                except valid_exc:
                    code = None
                except SystemExit as e:  # the command line itself (argparse), e.g. an override '-seed=1'
                    code = e.code
        finally:
            os.chdir(old)
        written = sorted(p.name for p in Path(cwd).iterdir())
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert written == [], (argv, written)
    if code is None:
        return "valid"
    lines = text.strip().splitlines()
    assert code == 2, (argv, code, text)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, text)
    assert out.getvalue() == "", (argv, out.getvalue())
    return "error"


@FUZZ
@given(overrides=st.lists(override(), min_size=1, max_size=3),
       experiment=st.sampled_from(["smoke", "smoke", "default", "wind_tunnel_hmm", "changepoint_icl"]))
def test_mutated_overrides_are_valid_or_one_line_exit_2(overrides, experiment, stub_run):
    _check([experiment, *overrides], stub_run)


@FUZZ
@given(data=st.data(), n=st.integers(1, 3), text_edit=st.booleans())
def test_mutated_experiment_files_are_valid_or_one_line_exit_2(data, n, text_edit, stub_run):
    tree = yaml.safe_load((CONFIG_ROOT / "experiment" / "smoke.yaml").read_text())
    for _ in range(n):
        _mutate_tree(tree, data)
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    if text_edit:  # cut, duplicate or corrupt a stretch of the YAML text itself
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 40)))
        text = text[:i] + data.draw(st.sampled_from(["", text[i:j] * 2, "\n  - ]: {", "\t", ": :", "&a *b"])) + text[j:]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "exp.yaml"
        path.write_text(text)
        _check([str(path)], stub_run)


def test_the_fuzzers_reach_both_outcomes(stub_run):
    """A sanity check on the harness: a valid config reaches the run stub, a bad one is an error."""
    assert _check(["smoke", "seed=3"], stub_run) == "valid"
    assert _check(["smoke", "seed=abc"], stub_run) == "error"
