"""The training data order as a pure function of (seed, step): resumable at any step.

Each epoch is a permutation drawn from (seed, epoch). Global step s reads the global batch
perm[i*B:(i+1)*B] (i = s mod steps_per_epoch); rank r takes the r-th of its world_size equal
slices, so W ranks x B/W see exactly the images of one process with B, in the same order
(what makes the 2-process and 1-process runs identical). Each image's augmentation is
seeded by (seed, epoch, index), so a resumed run - with any number of loader workers - draws
the same views as an uninterrupted one, and the global RNG is never touched by the loader.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from moco3.data import BatchTransformCollate


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=g)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's index lists for steps [start_step, end_step) of one epoch.

    drop_last as in the official loader: steps_per_epoch = num_samples // global_batch.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int, epoch: int,
                 first: int, last: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"the global batch {global_batch} must be divisible by the number of "
                f"processes {world_size}."
            )
        self.perm = epoch_permutation(num_samples, seed, epoch)
        self.global_batch, self.first, self.last = global_batch, first, last
        self.local = global_batch // world_size
        self.offset = rank * self.local

    def __len__(self) -> int:
        return self.last - self.first

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.first, self.last):
            start = i * self.global_batch + self.offset
            yield self.perm[start:start + self.local].tolist()


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image `index`'s two views in `epoch`: independent of batch and rank."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


def epoch_loader(images: Dataset, two_views: Any, sampler: StepBatchSampler, seed: int,
                 epoch: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """A loader over one epoch's remaining steps yielding ((v1, v2), labels, indices).

    `images` yields (uint8 image, label, index); the collate function augments the whole
    batch at once (several times faster than image by image at small sizes), each image
    from its own generator seeded by view_seed. The loader gets its own generator so that
    creating it never consumes the global RNG (which the checkpoint restores and the memory
    bank / drop-path draw from).
    """
    collate = BatchTransformCollate(two_views, seed_of=functools.partial(view_seed, seed, epoch))
    # Persistent workers: the workers live as long as this loader (one epoch from the
    # step it starts at); the next epoch's loader starts its own.
    return DataLoader(images, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(0))
