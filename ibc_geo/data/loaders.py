"""DataLoaders: PK batches for training, plain ordered batches for embedding extraction."""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from ibc_geo.data.errors import DatasetError
from ibc_geo.data.sampler import PKSampler, SeededBatches
from ibc_geo.utils.runtime import distributed_rank


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from the seed torch gave it (from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loader_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """A torch generator seeded from (seed, epoch): it seeds the workers (torch RNG = base + worker id)."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _loader_options(cfg, persistent: bool) -> dict:
    workers = int(cfg.data.workers)
    return dict(
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
    )


def build_train_loader(cfg, dataset, epoch: int = 0) -> tuple[DataLoader, PKSampler]:
    """PK batches of ``dataset`` (``sampler.classes_per_batch`` x ``sampler.samples_per_class``; the
    epoch's length by ``sampler.epoch_length``; with ``sampler.random_pk`` another P x K each epoch,
    the batch size fixed: see :class:`~ibc_geo.data.sampler.PKSampler`).

    Build it once: call ``sampler.set_epoch(e)`` before iterating epoch ``e`` (set to ``epoch``
    here); workers persist across epochs. Each sample is augmented on its own seed
    (:class:`~ibc_geo.data.sampler.SeededBatches`), so an epoch's images are a function of
    (``seed``, epoch) alone: the same for any ``data.workers``, and for a resumed run.
    Under torch.distributed each rank gets disjoint batches.
    """
    rank, world_size = distributed_rank()
    num_classes = len(np.unique(dataset.labels))
    if not cfg.sampler.random_pk and num_classes < cfg.sampler.classes_per_batch:
        raise DatasetError(
            f"the {dataset.split} split of {cfg.data.name} ({cfg.data.root or 'built in'}) has {num_classes} "
            f"classes, fewer than sampler.classes_per_batch = {cfg.sampler.classes_per_batch}; lower "
            f"sampler.classes_per_batch, or data.val_classes (held-out classes are not trained on)")
    sizes = np.unique(dataset.labels, return_counts=True)[1]
    small = int((sizes < cfg.sampler.samples_per_class).sum())
    if small and not cfg.sampler.random_pk:
        warnings.warn(f"{small} of {len(sizes)} classes of the {dataset.split} split have fewer than "
                      f"sampler.samples_per_class = {cfg.sampler.samples_per_class} images: their batches repeat "
                      f"images (topped up with replacement)", UserWarning, stacklevel=2)
    try:
        sampler = PKSampler(dataset.labels, cfg.sampler.classes_per_batch, cfg.sampler.samples_per_class,
                            seed=cfg.seed, rank=rank, world_size=world_size,
                            epoch_length=cfg.sampler.epoch_length, random_pk=bool(cfg.sampler.random_pk))
    except ValueError as e:  # the sampler's own argument checks, e.g. no usable P for random_pk
        raise DatasetError(f"sampler settings do not fit the {dataset.split} split: {e}") from None
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_sampler=SeededBatches(sampler, cfg.seed),
                        generator=loader_generator(cfg.seed, epoch), **_loader_options(cfg, persistent=True))
    return loader, sampler


def build_eval_loader(cfg, dataset) -> DataLoader:
    """``dataset`` in order, ``eval.batch_size`` images per batch, the last batch kept (one pass:
    its workers do not persist)."""
    return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, drop_last=False,
                      generator=loader_generator(cfg.seed), **_loader_options(cfg, persistent=False))
