"""The stream's phases as an Avalanche benchmark.

Training experience for phase p: the sequences of `stream.batch(step)` for every step of the phase, in
step order, so that a data loader with `batch_size = stream.batch_size` and no shuffling yields exactly
`stream.batch(step)` at every iteration: what a native arm is fed. (Gradual transitions mix neighbours
into a batch near a boundary; the experience holds the batches as the stream serves them.) Each sample
is `(tokens [L], next-token targets [L], task label 0)`, targets `IGNORE_INDEX` where not scored.

Eval experience for phase j: phase j's eval bank, `(tokens, targets, posterior [L, V], task label 0)`;
the posterior rides along for the KL metric (`metrics.PosteriorKL`).

Per-sample `targets` attribute. Avalanche's datasets need one class label per sample, and some plugins
read it (LwF distils over the "classes" seen so far, class-balanced buffers group by it). A sequence's
label here is its first scored next token. For LwF this makes the distilled units the tokens that
occur in earlier phases, as in class-incremental LwF, instead of the whole vocabulary as our native
`lwf` does (see docs/avalanche.md).

Phase 0 (pretraining) is done natively and shared by every arm. With `phase0_batches > 0` the train
stream starts with a *consolidation experience*: that many phase-0 batches, evenly spaced over phase
0, which the bridge does not train on but whose end-of-experience hooks run (EWC's Fisher at the
pretrained weights, replay buffers seeded with phase-0 data, LwF's and A-GEM's memory of phase 0).
Native `ewc` and `replay` do the same at attach.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import TaskAwareSupervisedClassificationDataset
from avalanche.benchmarks.utils.data_attribute import DataAttribute, TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from torch.utils.data import TensorDataset

from plasticity.avalanche_bridge.model import IGNORE_INDEX
from streams import Batch, Stream


def next_token_targets(batch: Batch) -> torch.Tensor:
    """`[B, L]`: tokens[:, t+1] where position t is scored, IGNORE_INDEX elsewhere."""
    return batch.tokens.roll(-1, dims=1).masked_fill(~batch.scored, IGNORE_INDEX)


def sample_labels(targets: torch.Tensor) -> list[int]:
    """One label per sequence: its first scored next token (0 for a sequence with none)."""
    scored = targets != IGNORE_INDEX
    first = scored.float().argmax(dim=1)
    labels = targets.gather(1, first[:, None])[:, 0]
    return labels.masked_fill(~scored.any(dim=1), 0).tolist()


def sequence_dataset(tokens: torch.Tensor, targets: torch.Tensor, posterior: torch.Tensor | None = None
                     ) -> TaskAwareSupervisedClassificationDataset:
    tensors = [tokens, targets] + ([posterior] if posterior is not None else [])
    n = len(tokens)
    return TaskAwareSupervisedClassificationDataset(
        [TensorDataset(*tensors)],
        data_attributes=[DataAttribute(sample_labels(targets), "targets"), TaskLabels(ConstantSequence(0, n))],
    )


def steps_dataset(stream: Stream, steps: list[int], phase: int | None = None
                  ) -> TaskAwareSupervisedClassificationDataset:
    """The sequences of `stream.batch(s)` for s in `steps`, in order (only phase `phase`'s rows if given)."""
    tokens, targets = [], []
    for s in steps:
        b = stream.batch(s)
        if phase is not None and "phase" in b.latent:
            b = b[b.latent["phase"] == phase]
        tokens.append(b.tokens)
        targets.append(next_token_targets(b))
    return sequence_dataset(torch.cat(tokens), torch.cat(targets))


def bank_dataset(bank: Batch) -> TaskAwareSupervisedClassificationDataset:
    return sequence_dataset(bank.tokens, next_token_targets(bank), bank.posterior)


@dataclass
class StreamBenchmark:
    """An Avalanche scenario over a stream; `train_phases[i]` is the phase of train experience i."""

    scenario: object
    train_phases: list[int]
    consolidation: bool = False  # train experience 0 is the phase-0 consolidation sample (not trained on)
    train_steps: list[list[int]] = field(default_factory=list)  # stream steps of each train experience

    @property
    def train_stream(self):
        return self.scenario.train_stream

    @property
    def test_stream(self):
        return self.scenario.test_stream


def stream_benchmark(stream: Stream, banks: dict[int, Batch] | None = None, first_phase: int = 1,
                     phase0_batches: int = 0) -> StreamBenchmark:
    """Train experiences for phases `first_phase`.. (after an optional phase-0 consolidation experience);
    one eval experience per phase, from `banks` (default: the stream's eval banks)."""
    banks = stream.eval_banks() if banks is None else banks
    train, phases, steps = [], [], []
    if phase0_batches > 0 and first_phase > 0:
        s0 = stream.phases[0].spaced_steps(phase0_batches)  # as native EWC picks its Fisher batches
        train.append(steps_dataset(stream, s0, phase=0))
        phases.append(0)
        steps.append(s0)
    for p in stream.phases[first_phase:]:
        s = list(range(p.start, p.end))
        train.append(steps_dataset(stream, s))
        phases.append(p.index)
        steps.append(s)
    by_bank: dict[int, object] = {}  # recurring phases of a cyclic stream share one bank
    for j in range(len(stream.phases)):
        by_bank.setdefault(id(banks[j]), bank_dataset(banks[j]))
    test = [by_bank[id(banks[j])] for j in range(len(stream.phases))]
    scenario = benchmark_from_datasets(train=train, test=test)
    return StreamBenchmark(scenario, phases, consolidation=bool(phase0_batches > 0 and first_phase > 0),
                           train_steps=steps)
