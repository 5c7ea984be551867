"""Seeds mixed from integers: every random draw of the testbed comes from a generator seeded here, so runs
are deterministic in (seed, what is drawn, where) and independent draws never share a stream."""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*entropy: int, bits: int = 64) -> int:
    """A seed of `bits` bits mixed from integers by numpy's SeedSequence. Streams use 64 bits; the
    strategies' draws use 63 (their seeds also feed APIs that take signed 64-bit integers)."""
    state = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint64)[0])
    return state >> (64 - bits)


def make_generator(*entropy: int, bits: int = 64) -> torch.Generator:
    """A CPU generator seeded with `derive_seed(*entropy, bits=bits)`: draws are the same on CPU and CUDA
    runs (moved to the device afterwards)."""
    return torch.Generator().manual_seed(derive_seed(*entropy, bits=bits))
