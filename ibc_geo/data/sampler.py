"""PKSampler: batches of exactly P classes x K images (METHOD.md §1.6)."""
from __future__ import annotations

import math
from typing import Iterator, List, Sequence

import numpy as np
import torch

EPOCH_LENGTHS = ("official", "cover")


def pk_divisors(batch_size: int, num_classes: int | None = None) -> List[int]:
    """The ``P`` that ``random_pk`` draws from: divisors of ``batch_size`` in ``[2, batch_size / 2]``
    (official ``NumberSampler``; 54 -> 2, 3, 6, 9, 18, 27), without those above ``num_classes``."""
    return [p for p in range(2, batch_size // 2 + 1)
            if batch_size % p == 0 and (num_classes is None or p <= num_classes)]


class PKSampler(torch.utils.data.Sampler):
    r"""A batch sampler: each batch holds ``P`` distinct classes with ``K`` dataset indices each,
    listed class after class.

    **Chunks of a class** (``epoch_length``). Each class's :math:`n_c` images are shuffled and cut
    into chunks of ``K``:

    * ``"official"`` (the official ``CombineSampler``): a class with fewer than ``K`` images is first
      topped up to ``K`` with replacement, then the (topped-up) list of :math:`n'_c = \max(n_c, K)`
      is padded with other images of the class, drawn without replacement, to
      :math:`(\lfloor n'_c / K \rfloor + 1) K`: :math:`m_c = \lfloor n'_c / K \rfloor + 1` chunks, so
      a class whose size is a multiple of ``K`` still gets one more chunk (2-12 images, ``K`` = 6:
      2-3 chunks). The padding of the last chunk avoids the images already in it (the official code
      may repeat one there; the count is the same).
    * ``"cover"``: :math:`m_c = \lceil n_c / K \rceil` chunks, the last topped up with other images of
      the class (without replacement, or with replacement when :math:`n_c < K`): every image about
      once.

    **Batches.** Chunks are scheduled into

    .. math::
        B = \max\Big(\Big\lceil \tfrac{1}{P} \textstyle\sum_c m_c \Big\rceil,\ \max_c m_c\Big)

    batches so that no class appears twice in a batch (random, weighted by the chunks a class has
    left); slots left over are filled with fresh ``K``-image draws from classes not yet in the batch
    (for ``"official"`` this is the official padding of the chunk count to a multiple of ``P``).
    The official loader shuffles the chunks freely, so one of its batches can hold a class twice;
    here every batch has ``P`` distinct classes. Every image appears at least once per epoch.

    **Random P x K** (``random_pk``, the official CUB ``NumberSampler``): each epoch draws ``P``
    uniformly from the divisors of ``batch_size = P K`` in ``[2, P K / 2]`` (54: 2, 3, 6, 9, 18, 27),
    divisors above the dataset's number of classes excluded, and uses ``K = P K / P``; the batch size
    stays ``P K``. The draw is a function of ``(seed, epoch)``, made by :meth:`set_epoch`, after which
    :attr:`P`, :attr:`K` and ``len(sampler)`` are those of that epoch.

    **Several processes.** ``P x K`` is the *global* batch: every rank computes the same epoch of
    global batches (same seed) and takes its contiguous slice of each, ``batch[r * b:(r + 1) * b]``
    with ``b = P K / world_size`` (which must divide): the slices of a batch are disjoint and cover
    it, the global batches are the same for any world size, and ``len(sampler)`` is the number of
    global batches on every rank. The ranks all-gather their embeddings into the one batch graph.

    Everything is a function of ``(seed, epoch)`` (``numpy.random.default_rng([seed, epoch])``; the
    ``random_pk`` draw ``default_rng([seed, epoch, 2])``); call :meth:`set_epoch` before each epoch.

    Args:
        labels: the class label of each dataset index (any hashable values; length N).
        classes_per_batch: ``P`` (default: required).
        samples_per_class: ``K`` (default: required).
        seed: the base seed (default: ``0``).
        rank: this process's rank (default: ``0``).
        world_size: the number of processes (default: ``1``).
        epoch_length: ``"official"`` or ``"cover"``, the chunks of a class (default: ``"official"``).
        random_pk: draw ``P`` (and ``K``) each epoch, the batch size fixed (default: ``False``).
    """

    def __init__(self, labels: Sequence, classes_per_batch: int, samples_per_class: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, epoch_length: str = "official",
                 random_pk: bool = False):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"PKSampler needs a non-empty 1-d array of labels, got shape {labels.shape}")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(f"PKSampler needs P >= 1 and K >= 1, got P={classes_per_batch}, K={samples_per_class}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PKSampler rank must be in [0, world_size={world_size}), got {rank}")
        if (classes_per_batch * samples_per_class) % world_size:
            raise ValueError(f"PKSampler: the global batch P x K = {classes_per_batch * samples_per_class} "
                             f"must split evenly over {world_size} processes")
        if epoch_length not in EPOCH_LENGTHS:
            raise ValueError(f"PKSampler epoch_length must be one of {EPOCH_LENGTHS}, got {epoch_length!r}")
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        self._members: List[np.ndarray] = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        self._sizes = np.array([len(m) for m in self._members])
        num_classes = len(self._members)
        self._batch_size = int(classes_per_batch) * int(samples_per_class)
        self.random_pk = bool(random_pk)
        if self.random_pk:
            self.pk_choices = pk_divisors(self._batch_size, num_classes)
            if not self.pk_choices:
                raise ValueError(
                    f"PKSampler random_pk needs a divisor of the batch size {self._batch_size} in "
                    f"[2, {self._batch_size // 2}] that is at most the number of classes ({num_classes}); "
                    f"there is none: {pk_divisors(self._batch_size)}")
        elif num_classes < classes_per_batch:
            raise ValueError(
                f"PKSampler needs at least sampler.classes_per_batch = {classes_per_batch} classes; "
                f"the dataset has {num_classes}"
            )
        self.epoch_length = epoch_length
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self._configure(int(classes_per_batch), int(samples_per_class))
        self.set_epoch(0)

    def _configure(self, P: int, K: int) -> None:
        self.P, self.K = P, K
        if self.epoch_length == "official":
            self._chunks = np.maximum(self._sizes, K) // K + 1
        else:
            self._chunks = -(-self._sizes // K)
        self.num_batches_total = int(max(math.ceil(self._chunks.sum() / P), self._chunks.max()))

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` next (with ``random_pk``: its ``P`` x ``K`` and ``len``)."""
        self.epoch = int(epoch)
        if self.random_pk:
            rng = np.random.default_rng([self.seed, self.epoch, 2])
            P = self.pk_choices[int(rng.integers(len(self.pk_choices)))]
            self._configure(P, self._batch_size // P)

    def __len__(self) -> int:
        return self.num_batches_total

    def __repr__(self) -> str:
        return (f"PKSampler(P={self.P}, K={self.K}, classes={len(self._members)}, batches={len(self)}, "
                f"epoch_length={self.epoch_length}, random_pk={self.random_pk}, rank={self.rank}/{self.world_size})")

    def _draw(self, c: int, rng: np.random.Generator) -> np.ndarray:
        """K fresh indices of class ``c`` (with replacement only when it has fewer than K)."""
        members = self._members[c]
        if len(members) >= self.K:
            return rng.choice(members, self.K, replace=False)
        return np.concatenate([rng.permutation(members), rng.choice(members, self.K - len(members))])

    def _class_chunks(self, c: int, rng: np.random.Generator) -> List[np.ndarray]:
        K = self.K
        perm = rng.permutation(self._members[c])
        if self.epoch_length == "official":
            if len(perm) < K:  # topped up to K with replacement
                perm = np.concatenate([perm, rng.choice(perm, K - len(perm), replace=True)])
            tail = len(perm) % K
            pad = (len(perm) // K + 1) * K - len(perm)  # 1..K
            # Without replacement from the list, avoiding the last chunk's own images when n >= K.
            pool = perm[: len(perm) - tail]
            perm = np.concatenate([perm, rng.choice(pool, pad, replace=False)])
            return [perm[i:i + K] for i in range(0, len(perm), K)]
        chunks = [perm[i:i + K] for i in range(0, len(perm), K)]
        short = K - len(chunks[-1])
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

    @property
    def local_batch_size(self) -> int:
        """This rank's share of each global batch."""
        return self.batch_size // self.world_size

    def global_batches(self) -> List[np.ndarray]:
        """All global batches of the current epoch (the same on every rank)."""
        return self._schedule(np.random.default_rng([self.seed, self.epoch]))

    def batches(self) -> List[List[int]]:
        """This rank's slices of the current epoch's global batches (the list ``__iter__`` yields)."""
        b = self.local_batch_size
        return [batch[self.rank * b:(self.rank + 1) * b].tolist() for batch in self.global_batches()]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches())


class SeededBatches(torch.utils.data.Sampler):
    r"""The batches of a :class:`PKSampler`, each index paired with a seed for its augmentation.

    Yields lists of ``(index, sample_seed)``; :class:`~ibc_geo.data.RetrievalDataset` runs the
    transform of that sample on torch's RNG seeded with ``sample_seed``. The seeds are a function of
    ``(seed, epoch)`` and the position in the epoch's global batches
    (``numpy.random.default_rng([seed, epoch, 0, 1])``; each rank takes its slice), so an epoch's
    augmented images do not depend on which worker loads them, how many workers or ranks there
    are, or whether they persist across epochs: a resumed run, or one with another
    ``data.workers`` or world size, sees the same images.

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
        rng = np.random.default_rng([self.seed, sampler.epoch, 0, 1])
        seeds = rng.integers(0, 2**63 - 1, size=(len(batches), sampler.batch_size))
        b = sampler.local_batch_size
        seeds = seeds[:, sampler.rank * b:(sampler.rank + 1) * b].tolist()
        return iter([list(zip(batch, batch_seeds)) for batch, batch_seeds in zip(batches, seeds)])
