"""The training data of a fit: the stream's batches for a range of stream steps, generated on the fly."""

from __future__ import annotations

from torch.utils.data import DataLoader, IterableDataset

from streams import Stream


class StreamBatches(IterableDataset):
    """The stream's training batches for global steps [start, end). Under DDP, rank r of n takes sequences
    r, r+n, ... of each step's batch: together the ranks train on the whole batch."""

    def __init__(self, stream: Stream, start: int, end: int, rank: int = 0, world: int = 1):
        self.stream, self.start, self.end = stream, start, end
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        for step in range(self.start, self.end):
            batch = self.stream.batch(step)
            yield batch if self.world == 1 else batch[self.rank :: self.world]


def stream_loader(stream: Stream, start: int, end: int, rank: int = 0, world: int = 1) -> DataLoader:
    return DataLoader(StreamBatches(stream, start, end, rank, world), batch_size=None, num_workers=0)
