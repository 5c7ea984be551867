"""Evaluation on fixed eval banks: calibration against the exact posterior plus structural probes.

`Evaluator` is the Lightning callback that evaluates an arm every `eval.every` stream steps and at every
phase end, appends rows to metrics.jsonl and records the rows of the R matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import pytorch_lightning as pl
import torch
from torch import nn

from plasticity.eval.calibration import CalibrationAccumulator
from plasticity.eval.geometry import geometry_probes, manifold
from plasticity.eval.probes import ProbeForward, probe_all
from plasticity.eval.rows import BY_POSITION, ROW_METRICS
from streams import Batch, Stream
from streams.base import GROUP_MASK_PREFIX


@torch.no_grad()
def evaluate_bank(model: nn.Module, bank: Batch, batch_size: int, device: torch.device,
                  probe: ProbeForward | None = None) -> dict:
    """The bank's calibration metrics; `probe` records what the probes need from the first chunk's forward."""
    acc = CalibrationAccumulator(bank.tokens.shape[1])
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(bank), batch_size):
            chunk = bank[i : i + batch_size]
            with probe.recording(model) if probe is not None and i == 0 else nullcontext():
                logits = model(chunk.tokens.to(device))
            groups = {k.removeprefix(GROUP_MASK_PREFIX): v for k, v in chunk.latent.items()
                      if k.startswith(GROUP_MASK_PREFIX)}
            acc.update(logits, chunk.posterior.to(device), chunk.scored.to(device), chunk.tokens.to(device),
                       None if chunk.general is None else chunk.general.to(device), groups)
    finally:
        model.train(was_training)
    return acc.compute()


def evaluate_all(model: nn.Module, banks: dict[int, Batch], batch_size: int, device: torch.device,
                 probe: tuple[Batch, ProbeForward] | None = None) -> dict[int, dict]:
    """Metrics per phase; recurring phases that share one bank object are evaluated once. `probe` = (bank,
    recorder): the recorder gets the forward of that bank's first chunk."""
    by_bank: dict[int, dict] = {}
    out = {}
    for phase, bank in banks.items():
        if id(bank) not in by_bank:
            record = probe[1] if probe is not None and bank is probe[0] else None
            by_bank[id(bank)] = evaluate_bank(model, bank, batch_size, device, record)
        out[phase] = by_bank[id(bank)]
    return out


class Evaluator(pl.Callback):
    """Evaluates one arm on every phase's bank at chosen stream steps and records R rows at phase ends."""

    def __init__(
        self,
        arm: str,
        stream: Stream,
        banks: dict[int, Batch],
        eval_steps: set[int],
        batch_size: int,
        probes: bool,
        tau: float,
        reference_state: dict[str, torch.Tensor] | None,
        reference_name: str,
        write_rows: Callable[[list[dict]], None],
        on_eval: Callable[[str, int, float], None] | None = None,
        on_phase_end: Callable[[str, int, dict[int, list[float]]], None] | None = None,
        select: Callable[[int], Iterable[int]] | None = None,
        final_step: int | None = None,
        geometry_every: int = 0,
        geometry_size: int = 256,
        write_manifold: Callable[[str, int, dict], None] | None = None,
    ):
        """`select(phase)`: the eval phases to evaluate while training `phase` (None: every bank); at
        `final_step` (the unit's last step) every bank is evaluated, so the R matrix's last row is whole.
        `geometry_every` > 0: the geometry probes at the evaluations of steps that are its multiples and at
        phase ends, on the current phase's first `geometry_size` sequences, in the current phase's row; and at
        each phase end `write_manifold(arm, phase, data)` gets the manifold figure's data on that bank."""
        self.arm, self.stream, self.banks = arm, stream, banks
        self.geometry_every, self.geometry_size = geometry_every, geometry_size
        self._geometry_keys: set[str] = set()  # the geometry's row keys seen so far (replay strips them)
        self.write_manifold = write_manifold
        self._manifolds: dict[int, dict | None] = {}  # a frozen arm's, per bank, for `replay` at phase ends
        self.select, self.final_step = select, final_step
        self.eval_steps = eval_steps
        self.batch_size, self.probes, self.tau = batch_size, probes, tau
        self.reference_state, self.reference_name = reference_state, reference_name
        self.write_rows = write_rows
        self.on_eval = on_eval
        self.on_phase_end = on_phase_end
        self.phase_ends = {p.start + p.steps: i for i, p in enumerate(stream.phases)}
        self.R: dict[int, list[float]] = {}  # phase index -> KL on every phase's bank at its end
        self.R_general: dict[int, list[float | None]] = {}  # the same to the general posterior (pool phases)
        self.curves: dict[int, list[tuple[int, float]]] = {j: [] for j in banks}  # eval phase -> (step, kl)
        self.seconds = 0.0

    def evaluate(self, model: nn.Module, step: int, grad_norm: float = 0.0, record: bool = True,
                 every_bank: bool = False) -> list[dict]:
        """Evaluate on the banks of `step` (banks_at), or on all with `every_bank`; `record=False` only returns
        the rows (see `replay`)."""
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        phase = self.stream.phase_at(min(step, self.stream.total_steps) - 1) if step > 0 else 0
        banks = self.banks if every_bank else self.banks_at(step, phase)
        # the probes read the forward that scores the current bank's first chunk: their tokens
        forward = ProbeForward() if self.probes else None
        results = evaluate_all(model, banks, self.batch_size, device,
                               (self.banks[phase], forward) if forward is not None else None)
        probes: dict = {}
        if self.probes:
            tokens = self.banks[phase].tokens[: self.batch_size].to(device)
            probes = probe_all(model, tokens, self.tau, self.reference_state, self.reference_name, forward)
            probes["grad_norm"] = grad_norm
        # the current phase's bank at the geometry's cadence; every bank for a frozen arm's one evaluation,
        # which `replay` then shows in the current phase's row at the cadence
        # (and the manifold figure's data at phase ends), each distinct bank once
        geometry: dict[int, dict] = {}
        if self.geometry_every and (every_bank or self._geometry_due(step)):
            with_manifold = self.write_manifold is not None and (every_bank or step in self.phase_ends)
            by_bank: dict[int, tuple[dict, dict | None]] = {}
            for j in (results if every_bank else [phase]):
                bank = self.banks[j][: self.geometry_size]
                if id(self.banks[j]) not in by_bank:
                    by_bank[id(self.banks[j])] = (geometry_probes(model, bank),
                                                  manifold(model, bank) if with_manifold else None)
                geometry[j], shape = by_bank[id(self.banks[j])]
                if with_manifold:
                    self._manifolds[j] = shape
            self._geometry_keys.update(k for g in geometry.values() for k in g)
            if with_manifold and record and step in self.phase_ends:
                self._write_manifold(phase)
        rows = []
        for j, m in results.items():
            row = {"arm": self.arm, "step": step, "phase": phase, "eval_phase": j,
                   "eval_phase_name": self.stream.phases[j].name}
            row.update({k: m[k] for k in ROW_METRICS})
            row.update({key: m[key] for key in BY_POSITION})
            row.update(m["groups"])
            row.update(probes)
            row.update(geometry.get(j, {}))
            rows.append(row)
        if record:
            for r in rows:
                self.curves[r["eval_phase"]].append((step, r["kl_bits"]))
            self.record(step, rows)
        self.seconds += time.perf_counter() - t0
        return rows

    def _write_manifold(self, phase: int) -> None:
        data = self._manifolds.get(phase)
        if data is not None and self.write_manifold is not None:
            self.write_manifold(self.arm, phase, data)

    def _geometry_due(self, step: int) -> bool:
        return bool(self.geometry_every) and (step % self.geometry_every == 0 or step in self.phase_ends)

    def banks_at(self, step: int, phase: int) -> dict[int, Batch]:
        """The banks evaluated at `step` (while training `phase`): `select`'s, always the phase's own, and
        every bank at the final step."""
        if self.select is None or step == self.final_step:
            return self.banks
        wanted = {*self.select(phase), phase}
        return {j: b for j, b in self.banks.items() if j in wanted}

    def record(self, step: int, rows: list[dict]) -> None:
        self.write_rows(rows)
        if step in self.phase_ends:
            row: list[float | None] = [None] * len(self.stream.phases)  # not evaluated: None
            general: list[float | None] = [None] * len(self.stream.phases)  # and phases without a pool
            for r in rows:
                row[r["eval_phase"]] = r["kl_bits"]
                general[r["eval_phase"]] = r.get("kl_bits_general")
            self.R[self.phase_ends[step]] = row
            self.R_general[self.phase_ends[step]] = general
            if self.on_phase_end is not None:
                self.on_phase_end(self.arm, self.phase_ends[step], dict(self.R))
        if self.on_eval is not None:
            current = [r for r in rows if r["eval_phase"] == r["phase"]]
            self.on_eval(self.arm, step, current[0]["kl_bits"] if current else float("nan"))

    def replay(self, rows: list[dict], step: int) -> None:
        """Record already-computed rows at another step (a frozen arm's weights do not change): those of
        the banks that step would evaluate."""
        phase = self.stream.phase_at(step - 1)
        banks = self.banks_at(step, phase)
        due = self._geometry_due(step)
        rows = [dict(r, step=step, phase=phase) for r in rows if r["eval_phase"] in banks]
        for r in rows:
            if not (due and r["eval_phase"] == phase):
                for key in self._geometry_keys:
                    r.pop(key, None)
        for r in rows:
            self.curves[r["eval_phase"]].append((step, r["kl_bits"]))
        self.record(step, rows)
        if step in self.phase_ends:
            self._write_manifold(phase)

    def state_dict(self) -> dict:
        return {"R": {int(k): list(v) for k, v in self.R.items()},
                "R_general": {int(k): list(v) for k, v in self.R_general.items()},
                "curves": {int(j): [list(p) for p in c] for j, c in self.curves.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.R = {int(k): list(v) for k, v in state["R"].items()}
        self.R_general = {int(k): list(v) for k, v in state.get("R_general", {}).items()}
        self.curves = {int(j): [tuple(p) for p in c] for j, c in state["curves"].items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.stream_step
        if step in self.eval_steps:
            self.evaluate(pl_module.model, step, pl_module.last_grad_norm)


def eval_selection(spec: str, n_phases: int) -> Callable[[int], Iterable[int]] | None:
    """`eval.phases`: which banks an arm evaluates while it trains a phase, besides that phase's own —
    `all` (None), `current` (none), `recent:K` (the K phases up to the current), `every:K` (phases 0, K,
    2K, ...). The cost of an evaluation then stays flat however long the stream."""
    if spec == "all":
        return None
    kind, _, k = spec.partition(":")
    if kind == "current" and not k:
        return lambda phase: ()
    if kind in ("recent", "every") and k.isdigit() and int(k) >= 1:
        K = int(k)
        if kind == "recent":
            return lambda phase: range(max(0, phase - K + 1), phase + 1)
        return lambda phase: range(0, n_phases, K)
    raise ValueError(f"eval.phases={spec!r}: must be all, current, recent:K or every:K (K >= 1)")


def eval_schedule(every: int, start: int, end: int, phase_ends: list[int]) -> set[int]:
    """Stream steps in (start, end] at which to evaluate: multiples of `every` and every phase end."""
    steps = set(range((start // every + 1) * every, end + 1, every))
    steps.update(e for e in phase_ends if start < e <= end)
    return steps
