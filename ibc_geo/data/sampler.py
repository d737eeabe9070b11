"""PKSampler: batches of exactly P classes x K images (METHOD.md §1.6)."""
from __future__ import annotations

import math
from typing import Iterator, List, Sequence

import numpy as np
import torch


class PKSampler(torch.utils.data.Sampler):
    r"""A batch sampler: each batch holds ``P`` distinct classes with ``K`` dataset indices each,
    listed class after class.

    **One epoch.** Each class's images are shuffled and cut into
    :math:`m_c = \lceil n_c / K \rceil` chunks of ``K``; the last chunk is topped up with other
    images of the class (drawn without replacement, or with replacement when :math:`n_c < K`).
    Chunks are scheduled into

    .. math::
        B = \max\Big(\Big\lceil \tfrac{1}{P} \textstyle\sum_c m_c \Big\rceil,\ \max_c m_c\Big)

    batches so that no class appears twice in a batch (random, weighted by the chunks a class has
    left); slots left over are filled with fresh ``K``-image draws from classes not yet in the batch.
    So every image appears at least once per epoch, and the epoch is about ``N / (P K)`` batches
    (more when classes are smaller than ``K``).

    **Several processes.** With ``world_size`` > 1 the ``B`` batches (shuffled) are padded with
    extra random batches to a multiple of ``world_size`` and rank ``r`` takes batches
    ``r, r + world_size, ...``: ranks get disjoint batches, together covering every image, and
    ``len(sampler)`` = :math:`\lceil B / \text{world\_size} \rceil` on every rank.

    Everything is a function of ``(seed, epoch)`` (``numpy.random.default_rng([seed, epoch])``);
    call :meth:`set_epoch` before each epoch.

    Args:
        labels: the class label of each dataset index (any hashable values; length N).
        classes_per_batch: ``P`` (default: required).
        samples_per_class: ``K`` (default: required).
        seed: the base seed (default: ``0``).
        rank: this process's rank (default: ``0``).
        world_size: the number of processes (default: ``1``).
    """

    def __init__(self, labels: Sequence, classes_per_batch: int, samples_per_class: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"PKSampler needs a non-empty 1-d array of labels, got shape {labels.shape}")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(f"PKSampler needs P >= 1 and K >= 1, got P={classes_per_batch}, K={samples_per_class}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PKSampler rank must be in [0, world_size={world_size}), got {rank}")
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        self._members: List[np.ndarray] = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        if len(self._members) < classes_per_batch:
            raise ValueError(
                f"PKSampler needs at least sampler.classes_per_batch = {classes_per_batch} classes; "
                f"the dataset has {len(self._members)}"
            )
        self.P, self.K = int(classes_per_batch), int(samples_per_class)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self._chunks = np.array([math.ceil(len(m) / self.K) for m in self._members])
        self.num_batches_total = int(max(math.ceil(self._chunks.sum() / self.P), self._chunks.max()))

    @property
    def batch_size(self) -> int:
        return self.P * self.K

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_batches_total / self.world_size)

    def __repr__(self) -> str:
        return (f"PKSampler(P={self.P}, K={self.K}, classes={len(self._members)}, batches={len(self)}, "
                f"rank={self.rank}/{self.world_size})")

    def _draw(self, c: int, rng: np.random.Generator) -> np.ndarray:
        """K fresh indices of class ``c`` (with replacement only when it has fewer than K)."""
        members = self._members[c]
        if len(members) >= self.K:
            return rng.choice(members, self.K, replace=False)
        return np.concatenate([rng.permutation(members), rng.choice(members, self.K - len(members))])

    def _class_chunks(self, c: int, rng: np.random.Generator) -> List[np.ndarray]:
        perm = rng.permutation(self._members[c])
        chunks = [perm[i:i + self.K] for i in range(0, len(perm), self.K)]
        short = self.K - len(chunks[-1])
        if short:
            rest = perm[: len(perm) - len(chunks[-1])]
            if len(rest) >= short:
                extra = rng.choice(rest, short, replace=False)
            else:  # the class has fewer than K images
                extra = rng.choice(perm, short, replace=True)
            chunks[-1] = np.concatenate([chunks[-1], extra])
        return chunks

    def _schedule(self, rng: np.random.Generator) -> List[np.ndarray]:
        """All batches of the epoch (every rank's), as arrays of P*K indices."""
        chunks = [self._class_chunks(c, rng) for c in range(len(self._members))]
        left = self._chunks.copy()
        num_classes = len(left)
        batches = []
        for b in range(self.num_batches_total):
            remaining_batches = self.num_batches_total - b
            # Classes with a chunk for every remaining batch must go now (at most P: see invariant).
            forced = np.flatnonzero(left == remaining_batches)
            active = np.flatnonzero((left > 0) & (left < remaining_batches))
            need = self.P - len(forced)
            assert need >= 0, "PKSampler schedule invariant broken"
            if len(active) > need:
                weights = left[active] / left[active].sum()
                active = rng.choice(active, need, replace=False, p=weights)
            chosen = np.concatenate([forced, active]).astype(np.int64)
            pieces = []
            for c in chosen:
                pieces.append(chunks[c][len(chunks[c]) - left[c]])
                left[c] -= 1
            if len(chosen) < self.P:
                others = np.setdiff1d(np.arange(num_classes), chosen)
                for c in rng.choice(others, self.P - len(chosen), replace=False):
                    pieces.append(self._draw(int(c), rng))
            order = rng.permutation(len(pieces))
            batches.append(np.concatenate([pieces[i] for i in order]))
        assert not left.any(), "PKSampler left chunks unscheduled"
        return [batches[i] for i in rng.permutation(len(batches))]

    def _extra_batch(self, rng: np.random.Generator) -> np.ndarray:
        classes = rng.choice(len(self._members), self.P, replace=False)
        return np.concatenate([self._draw(int(c), rng) for c in classes])

    def batches(self) -> List[List[int]]:
        """This rank's batches of the current epoch (the list ``__iter__`` yields)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._schedule(rng)
        while len(batches) % self.world_size:
            batches.append(self._extra_batch(rng))
        return [b.tolist() for b in batches[self.rank::self.world_size]]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches())


class SeededBatches(torch.utils.data.Sampler):
    r"""The batches of a :class:`PKSampler`, each index paired with a seed for its augmentation.

    Yields lists of ``(index, sample_seed)``; :class:`~ibc_geo.data.RetrievalDataset` runs the
    transform of that sample on torch's RNG seeded with ``sample_seed``. The seeds are a function of
    ``(seed, epoch, rank)`` and the position in the epoch
    (``numpy.random.default_rng([seed, epoch, rank, 1])``), so an epoch's augmented images do not
    depend on which worker loads them, how many workers there are, or whether they persist across
    epochs: a resumed run, or one with another ``data.workers``, sees the same images.

    Args:
        batch_sampler: the :class:`PKSampler` that picks the indices; call its ``set_epoch``.
        seed: the base seed (default: ``0``).
    """

    def __init__(self, batch_sampler: PKSampler, seed: int = 0):
        self.batch_sampler = batch_sampler
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[List[tuple]]:
        sampler = self.batch_sampler
        batches = sampler.batches()
        rng = np.random.default_rng([self.seed, sampler.epoch, sampler.rank, 1])
        seeds = rng.integers(0, 2**63 - 1, size=(len(batches), sampler.batch_size)).tolist()
        return iter([list(zip(batch, batch_seeds)) for batch, batch_seeds in zip(batches, seeds)])
