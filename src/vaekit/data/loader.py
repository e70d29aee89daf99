"""`BatchLoader`: one process's batches of a source, in a global order that is exact across ranks and resumes.

Per epoch the whole data set is put in one order (a permutation seeded from (seed, epoch), or ``arange`` without
shuffling) and cut into global batches of ``batch_size``. Each of ``world_size`` processes takes a contiguous
slice of every global batch, so N processes with batch B/N see exactly the samples one process with batch B sees.
``iter_from(k)`` starts at global batch k: the exact mid-epoch resume point.

With ``drop_last=False`` the last global batch may be partial; it is split across ranks as evenly as possible
(earlier ranks get one more), and a rank may receive an *empty* batch (first dim 0). Every rank yields exactly
``len(loader) - start_batch`` batches, so collectives stay in step; reduce sums and counts, not means, for exact
validation metrics. Nothing is padded or repeated.

`ArraySource`s are gathered with one index op per batch; `FileSource`s go through a torch DataLoader whose
batch sampler is this rank's list of index lists, so the order never depends on ``num_workers``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from vaekit.data.base import ArraySource, FileSource, Source
from vaekit.errors import DataError


class BatchLoader:
    """Batches of ``source`` for process ``rank`` of ``world_size``.

    Args:
        source: an `ArraySource` or a `FileSource`.
        batch_size: the GLOBAL batch size; each rank gets ``batch_size // world_size`` samples per batch.
        shuffle: a new seeded permutation every epoch (else the source's order).
        drop_last: drop the last partial global batch.
        seed: with the epoch, seeds the permutation (``seed * 1000003 + epoch``).
        rank, world_size: this process and the number of processes.
        num_workers: DataLoader workers for a `FileSource` (ignored for an `ArraySource`).
        pin_memory: pin batches in page-locked memory (only when CUDA is available).
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        labels: bool = True,
    ) -> None:
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(
                f"train.batch_size={batch_size} must be a positive multiple of the world size {world_size} "
                "(it is the global batch; each process gets batch_size / world_size)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.source = source
        self.labels = labels
        """False: in-memory batches carry only ``x`` (training needs no labels; one gather less per step)."""
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0

    @property
    def local_batch_size(self) -> int:
        """Samples per full batch on this rank."""
        return self.batch_size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its permutation and (for a `FileSource`) its augmentation."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        n = len(self.source)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self) -> Tensor:
        """This epoch's global order of sample indices, (N,) int64."""
        n = len(self.source)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))

    def rank_indices(self, batch: int, order: Tensor | None = None) -> Tensor:
        """This rank's sample indices in global batch ``batch`` (contiguous slice; may be empty)."""
        order = self.order() if order is None else order
        chunk = order[batch * self.batch_size : (batch + 1) * self.batch_size]
        return torch.tensor_split(chunk, self.world_size)[self.rank]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int = 0) -> Iterator[dict[str, Tensor]]:
        """Yield this rank's batches from global batch ``start_batch`` to the end of the epoch."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch={start_batch} outside [0, {len(self)}]")
        order = self.order()
        indices = [self.rank_indices(b, order) for b in range(start_batch, len(self))]
        if isinstance(self.source, ArraySource):
            return self._iter_array(self.source, indices)
        if isinstance(self.source, FileSource):
            return self._iter_files(self.source, indices, self.epoch)
        raise TypeError(f"unsupported source type {type(self.source).__name__}")

    def _iter_array(self, source: ArraySource, indices: list[Tensor]) -> Iterator[dict[str, Tensor]]:
        for idx in indices:
            batch = source.get_batch(idx, labels=self.labels)
            if self.pin_memory and source.x.device.type == "cpu":
                batch = {k: v.pin_memory() for k, v in batch.items()}
            yield batch

    def _iter_files(
        self, source: FileSource, indices: list[Tensor], epoch: int
    ) -> Iterator[dict[str, Tensor]]:
        source.set_epoch(epoch)  # before the workers copy the source
        lists = [idx.tolist() for idx in indices]
        loader = DataLoader(
            source,
            batch_sampler=[b for b in lists if b],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            # the workers' base seed comes from here, not from the global RNG (which resume restores exactly)
            generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch),
        )
        it = iter(loader)
        for b in lists:
            try:
                yield next(it) if b else self._empty_batch(source)
            except DataError as err:  # from a worker, the message carries the worker's traceback
                raise DataError(worker_message(str(err))) from None

    @staticmethod
    def _empty_batch(source: FileSource) -> dict[str, Tensor]:
        sample = source[0]
        return {k: v.new_zeros((0, *v.shape)) for k, v in sample.items()}


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?DataError: ")


def worker_message(text: str) -> str:
    """The original one-line message of a ``DataError`` re-raised from a DataLoader worker.

    torch re-raises a worker's exception as ``DataError("Caught DataError in DataLoader worker process 0.\n
    Original Traceback ...\nvaekit.errors.DataError: <message>")``; the message is what follows the last
    exception line. Text that is not such a wrapper comes back unchanged.
    """
    if not text.startswith("Caught "):
        return text
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            return " ".join([lines[i].split(": ", 1)[1], *lines[i + 1 :]]).strip()
    return text
