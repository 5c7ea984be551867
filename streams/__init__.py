"""Wind tunnels: synthetic task families whose exact Bayesian posterior predictive is known at every
token, and drifting streams of them. Pure PyTorch; knows nothing of Lightning or models."""

from streams import families as _families  # noqa: F401  (registers every family)
from streams.base import Batch, Family, FamilyInfo, families, make, register
from streams.stream import Phase, Stream, load_stream

__all__ = ["Batch", "Family", "FamilyInfo", "Phase", "Stream", "families", "load_stream", "make", "register"]
