"""`replay`: experience replay from a reservoir buffer (Chaudhry et al. 2019, "On Tiny Episodic Memories
in Continual Learning", arXiv:1902.10486; reservoir sampling: Vitter 1985).

The buffer holds whole sequences with their exact posteriors, so a replayed sequence is scored exactly
like a fresh one under either loss. At attach it is filled as if a reservoir had run through
pretraining: a uniform draw of `buffer_size` sequences among all of phase 0's batches. After that every
incoming sequence enters by reservoir sampling, so the buffer stays a uniform sample of everything
seen so far — after a long pretraining it is mostly phase 0, which is what a reservoir means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plasticity.strategies.base import (
    Strategy,
    check_param,
    cpu_tensors,
    register,
    set_generator_state,
    strategy_generator,
    tensors_to,
)
from streams import Batch
from streams.checks import is_number


def _strip(batch: Batch) -> Batch:
    """Tokens, posterior, scored, and the phase label when the stream gave one (other latents differ
    between families and would stop Batch.cat from keeping any). The label is put on the tokens'
    device: Batch.to leaves latents where they were, and indexing needs them together."""
    latent = {"phase": batch.latent["phase"].to(batch.tokens.device)} if "phase" in batch.latent else {}
    return Batch(batch.tokens, batch.posterior, batch.scored, latent)


@register
class Replay(Strategy):
    name = "replay"
    description = "experience replay from a reservoir buffer of whole sequences (Chaudhry et al. 2019)"

    @dataclass
    class Params:
        buffer_size: int = 2000  # sequences
        replay_fraction: float = 0.5  # round(f·B) buffer sequences appended to each batch of B
        seed: int = 0  # mixed with the stream's seed

    def check(self, p: Params) -> None:
        check_param(self.name, "buffer_size", p.buffer_size, isinstance(p.buffer_size, int) and p.buffer_size >= 1,
                    "an integer >= 1")
        check_param(self.name, "replay_fraction", p.replay_fraction,
                    is_number(p.replay_fraction) and p.replay_fraction >= 0,
                    "a finite number >= 0 (a share of the batch size)")
        check_param(self.name, "seed", p.seed, isinstance(p.seed, int) and p.seed >= 0, "an integer >= 0")

    def attach(self, module, stream, init_state) -> None:
        super().attach(module, stream, init_state)
        self.generator = strategy_generator(stream.seed, self.params.seed, 0x7270)
        self.device = next(module.model.parameters()).device
        self.buffer: Batch | None = None
        self.seen = 0  # sequences offered to the reservoir so far
        self._fill_from_pretraining()

    def state_dict(self) -> dict:
        b = self.buffer
        return {"buffer": cpu_tensors({"tokens": b.tokens, "posterior": b.posterior, "scored": b.scored,
                                       **b.latent}),
                "seen": self.seen, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        buf = tensors_to(state["buffer"], self.device)
        self.buffer = Batch(buf.pop("tokens"), buf.pop("posterior"), buf.pop("scored"), buf)
        self.seen = state["seen"]
        set_generator_state(self.generator, state["generator"])

    def _fill_from_pretraining(self) -> None:
        p0, B = self.stream.phases[0], self.stream.batch_size
        total = p0.steps * B
        # A reservoir run over `total` sequences ends as a uniform subset of min(size, total) of them.
        picks = torch.randperm(total, generator=self.generator)[: self.params.buffer_size].sort().values
        parts = []
        for step in picks.div(B, rounding_mode="floor").unique().tolist():
            rows = picks[picks.div(B, rounding_mode="floor") == step] - step * B
            parts.append(_strip(self.stream.batch(p0.start + step))[rows])
        self.buffer = _strip(Batch.cat(parts).to(self.device))
        self.seen = total

    def _offer(self, batch: Batch) -> None:
        """Reservoir sampling, one sequence at a time in batch order (one uniform draw each)."""
        size = self.params.buffer_size
        n = len(batch)
        counts = torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)
        slots = (torch.rand(n, generator=self.generator, dtype=torch.float64) * counts).long()
        self.seen += n
        room = size - len(self.buffer)
        if room > 0:  # not full yet: the first `room` sequences are appended
            self.buffer = Batch.cat([self.buffer, batch[:room]])
            batch, slots = batch[room:], slots[room:]
        keep = slots < size
        rows, slots = keep.nonzero().flatten(), slots[keep]
        # A later sequence drawn to the same slot overwrites an earlier one, as in the sequential rule.
        last = {int(s): int(r) for r, s in zip(rows, slots)}
        if last:
            dst = torch.tensor(list(last.keys()), device=self.device)
            src = torch.tensor(list(last.values()), device=self.device)
            for name in ("tokens", "posterior", "scored"):
                getattr(self.buffer, name)[dst] = getattr(batch, name)[src]
            if "phase" in self.buffer.latent and "phase" in batch.latent:
                self.buffer.latent["phase"][dst] = batch.latent["phase"][src]

    def transform_batch(self, module, batch: Batch) -> Batch:
        batch = _strip(batch)
        if batch.tokens.device != self.device:  # the model moved after attach: follow it once
            self.device = batch.tokens.device
            self.buffer = _strip(self.buffer.to(self.device))
        k = min(round(self.params.replay_fraction * len(batch)), len(self.buffer))
        # Drawn before the batch is offered to the buffer: the replayed part never repeats this batch.
        rows = torch.randperm(len(self.buffer), generator=self.generator)[:k].to(self.device)
        replayed = self.buffer[rows]
        self._offer(batch)
        if k == 0:
            return batch
        return Batch.cat([batch, replayed])
