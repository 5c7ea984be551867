"""Streams: phases of task families run one after another in a shared vocabulary, with fixed eval banks.

A StreamSpec lists phases (a family, its parameters, how many training steps, where its tokens sit in
the shared vocabulary, whether its token ids are re-drawn). `Stream.from_spec` validates the spec,
expands `repeat` and `cycles`, and then serves `batch(step)` (deterministic in (seed, step)) and
`eval_bank(phase)` (fixed per task, cached). Recurring phases of a cyclic stream are the *same* task.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from streams.base import GROUP_MASK_PREFIX, Batch, Family, family_class, make
from streams.checks import MAX_SIZE, did_you_mean
from streams.pool import TaskPool
from streams.seeding import make_generator

TRANSITIONS = ("abrupt", "gradual", "cyclic")

# Seed-sequence tags keep training batches, eval banks and relabel permutations on disjoint streams.
_TRAIN, _EVAL, _RELABEL, _POOL = 0x7472, 0x6576, 0x726C, 0x706F


@dataclass
class PhaseSpec:
    name: str = ""
    family: str = "???"
    params: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    offset: int = 0
    relabel: bool = False
    repeat: int = 1
    eval_length: Optional[int] = None  # noqa: UP045  (OmegaConf structured configs want Optional)
    # A finite pool of N tasks drawn once from the family's prior (streams.pool); None: the prior itself
    tasks: Optional[int] = None  # noqa: UP045


@dataclass
class StreamSpec:
    phases: list[PhaseSpec] = field(default_factory=list)
    batch_size: int = 64
    transition: str = "abrupt"
    window: int = 0
    cycles: int = 1
    eval_size: int = 512
    eval_length: Optional[int] = None  # noqa: UP045


@dataclass(eq=False)
class Task:
    """One distinct task: a family placed at `offset`, optionally through a fixed token permutation and
    restricted to a finite pool of its tasks."""

    index: int
    name: str
    family: Family
    eval_family: Family
    offset: int
    permutation: torch.Tensor | None  # long [V_family]: local token t is shown as permutation[t]
    pool: TaskPool | None = None  # the phase's pool (`tasks: N`), for its batches and eval bank

    def sampler(self, evaluation: bool = False) -> Family | TaskPool:
        """What draws this task's sequences: the family (or its eval-length version), or its pool."""
        family = self.eval_family if evaluation else self.family
        if self.pool is None:
            return family
        return self.pool if family is self.family else self.pool.with_length(family.params()[family.length_param])


@dataclass(frozen=True, eq=False)
class Phase:
    """One stretch of training steps [start, start + steps) on task `task_id`."""

    index: int
    name: str
    family: Family
    steps: int
    start: int
    offset: int
    task_id: int
    cycle: int = 0

    @property
    def end(self) -> int:
        return self.start + self.steps

    def spaced_steps(self, n: int) -> list[int]:
        """`n` stream steps evenly spaced over the phase, first and last included (fewer if it is shorter)."""
        n = min(n, self.steps)
        return torch.linspace(self.start, self.end - 1, n).round().long().unique().tolist()


# ---------------------------------------------------------------------------------------------------
# Validation: every message starts with the key path, "stream.phases[1].steps=0: must be ...".


MAX_BATCH, MAX_REPEAT, MAX_PHASES = 2**20, 10_000, 100_000  # sanity bounds, like streams.checks.MAX_SIZE
MAX_POOL = 2**20  # tasks in one phase's pool


def _int(where: str, value: Any, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where}={value!r}: must be an integer >= {low}")
    if value > high:
        raise ValueError(f"{where}={value!r}: must be an integer in [{low}, {int(high)}]")
    return int(value)


def _fields(where: str, raw: Any, cls: type) -> dict[str, Any]:
    """The fields of a spec dataclass (from an instance or a mapping), rejecting unknown keys."""
    if isinstance(raw, cls):
        return {f.name: getattr(raw, f.name) for f in dataclasses.fields(cls)}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}={raw!r}: must be a mapping of {cls.__name__} fields")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in allowed:
            raise ValueError(
                f"{where}.{key}: unknown key; allowed: {', '.join(allowed)}.{did_you_mean(str(key), allowed)}"
            )
    out = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
           for f in dataclasses.fields(cls)}
    out.update(raw)
    return out


def _optional_length(where: str, value: Any) -> int | None:
    return None if value is None else _int(where, value, 1, MAX_SIZE)


# ---------------------------------------------------------------------------------------------------


class Stream:
    """A validated, expanded stream. Build with `Stream.from_spec(spec, seed)` or `load_stream(path)`."""

    def __init__(self, phases: list[Phase], tasks: list[Task], *, seed: int, batch_size: int,
                 transition: str, window: int, eval_size: int, spec: StreamSpec):
        self.phases, self.tasks, self.seed, self.spec = phases, tasks, seed, spec
        self.batch_size, self.transition, self.window = batch_size, transition, window
        self.eval_size = eval_size
        self.boundaries = [p.start for p in phases]
        self.total_steps = phases[-1].end
        self.vocab_size = max(t.offset + max(t.family.vocab_size, t.eval_family.vocab_size) for t in tasks)
        self.seq_len = max(t.family.seq_len for t in tasks)
        self.max_seq_len = max(self.seq_len, *(t.eval_family.seq_len for t in tasks))
        for what, value in (("vocabulary", self.vocab_size), ("sequence length", self.max_seq_len)):
            if value > MAX_SIZE:  # e.g. an HMM header of n_states * (n_states + n_symbols) tokens
                raise ValueError(f"stream: a {what} of {value} tokens is over the limit of {MAX_SIZE}")
        self._banks: dict[int, Batch] = {}

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: StreamSpec | Mapping[str, Any], seed: int = 0, where: str = "stream") -> Stream:
        seed = _int("seed", seed, 0)
        s = _fields(where, spec, StreamSpec)
        batch_size = _int(f"{where}.batch_size", s["batch_size"], 1, MAX_BATCH)
        eval_size = _int(f"{where}.eval_size", s["eval_size"], 1, MAX_BATCH)
        cycles = _int(f"{where}.cycles", s["cycles"], 1, MAX_REPEAT)
        window = _int(f"{where}.window", s["window"], 0)
        transition = s["transition"]
        if transition not in TRANSITIONS:
            raise ValueError(f"{where}.transition={transition!r}: must be one of {', '.join(TRANSITIONS)}")
        stream_eval_length = _optional_length(f"{where}.eval_length", s["eval_length"])
        raw_phases = s["phases"]
        if isinstance(raw_phases, (str, bytes)) or not isinstance(raw_phases, Sequence) or not raw_phases:
            raise ValueError(f"{where}.phases={raw_phases!r}: must be a non-empty list of phases")

        entries = [_fields(f"{where}.phases[{i}]", p, PhaseSpec) for i, p in enumerate(raw_phases)]
        family_names = [e["family"] for e in entries]
        tasks: list[Task] = []
        task_steps: list[int] = []
        task_where: list[str] = []
        for i, e in enumerate(entries):
            w = f"{where}.phases[{i}]"
            family = _build_family(w, e["family"], e["params"])
            steps = _int(f"{w}.steps", e["steps"], 1)
            offset = _int(f"{w}.offset", e["offset"], 0, MAX_SIZE)
            repeat = _int(f"{w}.repeat", e["repeat"], 1, MAX_REPEAT)
            if not isinstance(e["relabel"], bool):
                raise ValueError(f"{w}.relabel={e['relabel']!r}: must be true or false")
            name = e["name"]
            if not isinstance(name, str):
                raise ValueError(f"{w}.name={name!r}: must be a string")
            if not name:
                name = e["family"] if family_names.count(e["family"]) == 1 else f"{e['family']}{i}"
            eval_family = _eval_family(w, family, e["eval_length"], where, stream_eval_length)
            n_tasks = None if e["tasks"] is None else _int(f"{w}.tasks", e["tasks"], 1, MAX_POOL)
            if n_tasks is not None and not hasattr(family, "draw_tasks"):
                raise ValueError(f"{w}.tasks: family '{family.name}' has no finite task pools")
            for r in range(repeat):
                k = len(tasks)
                perm = None
                if e["relabel"]:
                    perm = torch.randperm(family.vocab_size, generator=make_generator(seed, k, _RELABEL))
                task_name = name if repeat == 1 else f"{name}_{r}"
                pool = None if n_tasks is None else TaskPool.draw(family, n_tasks, make_generator(seed, k, _POOL))
                tasks.append(Task(k, task_name, family, eval_family, offset, perm, pool))
                task_steps.append(steps)
                task_where.append(w)
            if n_tasks is not None and eval_family is not family:  # a pool's tasks must fit its eval bank
                try:
                    tasks[-1].sampler(evaluation=True).sample(1, torch.Generator().manual_seed(0))
                except ValueError as err:
                    raise ValueError(f"{w}.eval_length: {err}") from None

        seen: dict[str, str] = {}
        for t, w in zip(tasks, task_where):
            if t.name in seen:
                raise ValueError(f"{w}.name={t.name!r}: duplicate phase name (also used by {seen[t.name]})")
            seen[t.name] = w

        cyclic = transition == "cyclic"
        if len(tasks) * (cycles if cyclic else 1) > MAX_PHASES:
            raise ValueError(f"{where}: {len(tasks)} phases x {cycles} cycles: at most {MAX_PHASES} phases")
        phases: list[Phase] = []
        start = 0
        for c in range(cycles if cyclic else 1):
            for t, steps in zip(tasks, task_steps):
                name = f"{t.name}@{c}" if cyclic else t.name
                phases.append(Phase(len(phases), name, t.family, steps, start, t.offset, t.index, c))
                start += steps

        if transition == "gradual":
            if window < 1:
                raise ValueError(f"{where}.window={window}: must be an integer >= 1 with transition gradual")
            for p in phases:
                halves = (p.index > 0) + (p.index < len(phases) - 1)
                if halves and window * halves > 2 * p.steps:
                    raise ValueError(
                        f"{where}.window={window}: must fit inside every phase; phase '{p.name}' has "
                        f"{p.steps} steps, which holds at most a window of {2 * p.steps // halves}"
                    )
        spec_obj = spec if isinstance(spec, StreamSpec) else StreamSpec(**{**s, "phases": [
            PhaseSpec(**e) for e in entries]})
        return cls(phases, tasks, seed=seed, batch_size=batch_size, transition=transition, window=window,
                   eval_size=eval_size, spec=spec_obj)

    # --- schedule ----------------------------------------------------------------------------------

    def _check_step(self, step: int) -> int:
        ok = isinstance(step, (int, np.integer)) and not isinstance(step, bool)
        if not ok or not 0 <= step < self.total_steps:
            raise ValueError(f"step={step!r}: must be an integer in [0, {self.total_steps - 1}]")
        return int(step)

    def phase_at(self, step: int) -> int:
        """The phase whose own interval [start, end) contains `step`."""
        return bisect.bisect_right(self.boundaries, self._check_step(step)) - 1

    def _next_share(self, step: int, boundary: int) -> float:
        """Share of the phase starting at `boundary`, linear over a window centred on it (step midpoints)."""
        return min(1.0, max(0.0, (step + 0.5 - boundary) / self.window + 0.5))

    def mixture(self, step: int) -> list[tuple[int, int]]:
        """The batch at `step` as [(phase_index, n_sequences), ...]; the counts sum to batch_size."""
        p = self.phase_at(step)
        B = self.batch_size
        if self.transition != "gradual":
            return [(p, B)]
        # Windows never overlap (checked in from_spec); inside its own interval a phase holds at least
        # half the batch, so each branch below has 0 < n <= B.
        if p > 0:  # early in this phase: the previous one is still fading out
            n = math.floor(self._next_share(step, self.phases[p].start) * B + 0.5)
            if n < B:
                return [(p - 1, B - n), (p, n)]
        if p + 1 < len(self.phases):  # late in this phase: the next one is fading in
            n = math.floor(self._next_share(step, self.phases[p + 1].start) * B + 0.5)
            if n > 0:
                return [(p, B - n), (p + 1, n)]
        return [(p, B)]

    # --- data --------------------------------------------------------------------------------------

    def batch(self, step: int) -> Batch:
        """The training batch for a global step, placed in the shared vocabulary and padded to seq_len.

        `latent["phase"]` holds each sequence's phase index (other latents survive only when all
        parts of a mixed batch share them)."""
        step = self._check_step(step)
        gen = make_generator(self.seed, step, _TRAIN)
        parts, owners = [], []
        for p, n in self.mixture(step):
            task = self.tasks[self.phases[p].task_id]
            parts.append(self._place(task, task.sampler().sample(n, gen), self.seq_len))
            owners.append(torch.full((n,), p, dtype=torch.long))
        out = parts[0] if len(parts) == 1 else Batch.cat(parts)
        out.latent["phase"] = torch.cat(owners)
        return out

    def eval_bank(self, phase_index: int) -> Batch:
        """The fixed eval bank of the phase's task: `eval_size` sequences, computed once and cached."""
        if not 0 <= phase_index < len(self.phases):
            raise ValueError(f"phase_index={phase_index!r}: must be in [0, {len(self.phases) - 1}]")
        k = self.phases[phase_index].task_id
        if k not in self._banks:
            task = self.tasks[k]
            raw = task.sampler(evaluation=True).sample(self.eval_size, make_generator(self.seed, k, _EVAL))
            self._banks[k] = self._place(task, raw, raw.tokens.shape[1])
        return self._banks[k]

    def eval_banks(self) -> dict[int, Batch]:
        """Phase index -> eval bank; recurring phases of one task share the same object."""
        return {p.index: self.eval_bank(p.index) for p in self.phases}

    def _place(self, task: Task, b: Batch, length: int) -> Batch:
        """Relabel local ids, shift them by the task's offset, right-pad to `length` (token 0, unscored)."""
        B, T = b.tokens.shape
        Vl, o = b.vocab_size, task.offset
        tokens = b.tokens if task.permutation is None else task.permutation[b.tokens]
        inverse = None if task.permutation is None else torch.argsort(task.permutation)

        def place(post: torch.Tensor | None) -> torch.Tensor | None:
            if post is None:
                return None
            if inverse is not None:
                post = post[..., inverse]  # column perm[j] gets the mass of local j
            if o == 0 and Vl == self.vocab_size and T == length:
                return post
            out = post.new_zeros(B, length, self.vocab_size)
            out[:, :T, o : o + Vl] = post
            return out

        if o == 0 and Vl == self.vocab_size and T == length:
            return Batch(tokens, place(b.posterior), b.scored, dict(b.latent), place(b.general))
        out_tokens = tokens.new_zeros(B, length)
        out_tokens[:, :T] = tokens + o
        scored = b.scored.new_zeros(B, length)
        scored[:, :T] = b.scored
        latent = dict(b.latent)
        for key in [k for k in latent if k.startswith(GROUP_MASK_PREFIX)]:  # token masks pad like `scored`
            latent[key] = scored.new_zeros(B, length)
            latent[key][:, :T] = b.latent[key]
        return Batch(out_tokens, place(b.posterior), scored, latent, place(b.general))

    # --- reporting ---------------------------------------------------------------------------------

    def describe(self) -> str:
        head = (f"stream: {len(self.phases)} phases, {len(self.tasks)} tasks, {self.total_steps} steps, "
                f"transition {self.transition}" + (f" (window {self.window})" if self.transition == "gradual"
                                                   else "")
                + f", vocab {self.vocab_size}, seq_len {self.seq_len} (eval {self.max_seq_len}), "
                f"batch {self.batch_size}, seed {self.seed}")
        lines = [head]
        for p in self.phases:
            t = self.tasks[p.task_id]
            extra = [f"offset {t.offset}"] if t.offset else []
            extra += ["relabeled"] if t.permutation is not None else []
            extra += [f"pool of {t.pool.n_tasks} tasks"] if t.pool is not None else []
            extra += [f"eval {t.eval_family}"] if t.eval_family is not t.family else []
            lines.append(f"  [{p.index}] {p.name}: {p.family} steps [{p.start}, {p.end}) task {p.task_id}"
                         + "".join(f", {x}" for x in extra))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Stream({len(self.phases)} phases, {self.total_steps} steps, vocab {self.vocab_size})"


def _build_family(where: str, name: Any, params: Any) -> Family:
    if not isinstance(name, str) or name == "???":
        raise ValueError(f"{where}.family={name!r}: missing; name a registered family")
    try:
        family_class(name)
    except ValueError as e:
        raise ValueError(f"{where}.family: {e}") from None
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}.params={params!r}: must be a mapping of family parameters")
    try:
        return make(name, **_plain(params))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}.params: {e}") from None


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists (an OmegaConf DictConfig/ListConfig passes through)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _eval_family(where: str, family: Family, phase_len: Any, root: str, stream_len: int | None) -> Family:
    """The family for the eval bank: the phase's eval_length overrides the stream's."""
    key = f"{where}.eval_length"
    length = _optional_length(key, phase_len)
    if length is None:
        if stream_len is None or family.length_param is None:
            return family  # a stream-wide eval_length skips fixed-length families
        length, key = stream_len, f"{root}.eval_length"
    elif family.length_param is None:
        raise ValueError(f"{key}={length}: family '{family.name}' has a fixed sequence length")
    try:
        return family.with_length(length)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{key}={length}: {e}") from None


def load_stream(path_or_dict: str | os.PathLike | Mapping[str, Any] | StreamSpec, seed: int = 0) -> Stream:
    """A Stream from a YAML file (top-level keys are StreamSpec fields), a mapping or a StreamSpec."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        import yaml

        with open(path_or_dict) as f:
            data = yaml.safe_load(f)
        if data is None:
            raise ValueError(f"{os.fspath(path_or_dict)}: empty stream file")
        return Stream.from_spec(data, seed=seed)
    return Stream.from_spec(path_or_dict, seed=seed)
