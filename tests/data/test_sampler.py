"""PKSampler: exact P x K batches, top-up, determinism, coverage, ranks; the train/eval loaders."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from ibc_geo.data import PKSampler, build_dataset, build_eval_loader, build_train_loader
from ibc_geo.testing import fixtures

# 12 classes with 1..14 images: some below K, one far above (needs many batches).
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 30]
LABELS = np.repeat(np.arange(len(SIZES)) * 10 + 3, SIZES)  # arbitrary label values
P, K = 4, 3


def check_batches(sampler, labels, P=P, K=K):
    for batch in sampler:
        assert len(batch) == P * K
        counts = Counter(labels[batch].tolist())
        assert len(counts) == P and set(counts.values()) == {K}
        for c in counts:  # top-up only repeats when the class is smaller than K
            members = [i for i in batch if labels[i] == c]
            if (labels == c).sum() >= K:
                assert len(set(members)) == K


@pytest.mark.parametrize("epoch_length", ["official", "cover"])
def test_batches_exact_and_cover_every_image(epoch_length):
    sampler = PKSampler(LABELS, P, K, seed=3, epoch_length=epoch_length)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        check_batches(sampler, LABELS)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = {i for b in batches for i in b}
        assert seen == set(range(len(LABELS)))


def test_epoch_length_rule():
    sampler = PKSampler(LABELS, P, K, epoch_length="cover")
    chunks = [math.ceil(n / K) for n in SIZES]
    assert len(sampler) == max(math.ceil(sum(chunks) / P), max(chunks)) == 10
    balanced = PKSampler(np.repeat(np.arange(10), 6), 5, 3, epoch_length="cover")
    assert len(balanced) == 60 // 15
    # official: every class one chunk more than floor(max(n, K) / K); a multiple of K too
    assert len(PKSampler(np.repeat(np.arange(10), 6), 5, 3, epoch_length="official")) == 10 * 3 // 5
    official = [max(n, K) // K + 1 for n in SIZES]
    assert len(PKSampler(LABELS, P, K)) == max(math.ceil(sum(official) / P), max(official)) == 11
    with pytest.raises(ValueError, match="epoch_length"):
        PKSampler(LABELS, P, K, epoch_length="paper")


def official_num_batches(sizes, P, K):
    """The official CombineSampler's batches per epoch, computed on its own: each class topped up
    to K, padded to (floor(n / K) + 1) * K, chunks of K; the chunk count padded to a multiple of P."""
    chunks = 0
    for n in sizes:
        n = max(n, K)
        chunks += ((n // K + 1) * K) // K
    while chunks % P:
        chunks += 1
    return chunks // P


def test_official_epoch_length_sop_like():
    P_, K_ = 15, 6
    sizes = np.random.default_rng(0).integers(2, 13, size=400)  # SOP: 2..12 images per class
    labels = np.repeat(np.arange(len(sizes)), sizes)
    sampler = PKSampler(labels, P_, K_, seed=1, epoch_length="official")
    expected = official_num_batches(sizes, P_, K_)
    assert len(sampler) == expected
    assert expected * P_ >= 2 * len(sizes) + (sizes == 12).sum()  # 2..3 chunks per class
    cover = PKSampler(labels, P_, K_, seed=1, epoch_length="cover")
    assert len(cover) == math.ceil(sum(math.ceil(n / K_) for n in sizes) / P_)
    assert 1.3 < len(sampler) / len(cover) < 1.4  # about 2.09 vs 1.55 chunks per class
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == expected
        check_batches(batches, labels, P_, K_)
        assert {i for b in batches for i in b} == set(range(len(labels)))
        # each class's chunks all scheduled: at least floor(max(n, K) / K) + 1 of them
        appearances = Counter(c for b in batches for c in set(labels[b].tolist()))
        assert all(appearances[c] >= max(n, K_) // K_ + 1 for c, n in enumerate(sizes))


def test_official_vs_cover_on_the_sop_fixture_counts():
    sizes = np.array(fixtures.sop_full_counts()[:11318])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    official = PKSampler(labels, 15, 6, epoch_length="official")
    cover = PKSampler(labels, 15, 6, epoch_length="cover")
    assert len(official) == official_num_batches(sizes, 15, 6)
    assert len(cover) == math.ceil(sum(math.ceil(n / 6) for n in sizes) / 15)
    assert (len(official), len(cover)) == (1510, 755)  # the fixture's classes hold 5 or 6 images


def test_deterministic_in_seed_and_epoch():
    a, b = PKSampler(LABELS, P, K, seed=1), PKSampler(LABELS, P, K, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(LABELS, P, K, seed=2)) != list(PKSampler(LABELS, P, K, seed=1))


def test_small_class_topped_up():
    labels = np.array([0] * 1 + [1] * 2 + [2] * 8)
    sampler = PKSampler(labels, 2, 4, seed=0)
    batches = list(sampler)
    single = [b for b in batches if 0 in b]
    assert single and all(b.count(0) == 4 for b in single)


@pytest.mark.parametrize("epoch_length,total", [("cover", 10), ("official", 11)])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_slices_of_the_same_global_batches(world_size, epoch_length, total):
    samplers = [PKSampler(LABELS, P, K, seed=5, rank=r, world_size=world_size, epoch_length=epoch_length)
                for r in range(world_size)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert all(len(b) == len(samplers[0]) == total for b in per_rank)  # the global batch count
    single = PKSampler(LABELS, P, K, seed=5, epoch_length=epoch_length)
    single.set_epoch(2)
    for i, batch in enumerate(single):
        slices = [per_rank[r][i] for r in range(world_size)]
        assert all(len(sl) == P * K // world_size for sl in slices)
        assert sum(slices, []) == batch  # disjoint, in order, covering the global batch
    # The augmentation seeds follow the global position too: the same for any world size.
    from ibc_geo.data import SeededBatches

    whole = list(SeededBatches(single, seed=1))
    parts = [list(SeededBatches(s, seed=1)) for s in samplers]
    assert [sum((p[i] for p in parts), []) for i in range(total)] == whole


def test_a_global_batch_must_split_over_the_ranks():
    with pytest.raises(ValueError, match="must split evenly over 5 processes"):
        PKSampler(LABELS, P, K, rank=0, world_size=5)


def test_too_few_classes():
    with pytest.raises(ValueError, match="at least sampler.classes_per_batch = 4 classes; the dataset has 3"):
        PKSampler([0, 1, 2], 4, 2)


# 40 classes of 3..30 images, batches of 54 = 6 x 9 with random P x K.
RPK_SIZES = np.random.default_rng(2).integers(3, 31, size=40)
RPK_LABELS = np.repeat(np.arange(len(RPK_SIZES)), RPK_SIZES)


def test_random_pk_draws_the_divisors_uniformly():
    from ibc_geo.data.sampler import pk_divisors

    assert pk_divisors(54) == [2, 3, 6, 9, 18, 27] and pk_divisors(54, 10) == [2, 3, 6, 9]
    sampler = PKSampler(RPK_LABELS, 6, 9, seed=7, random_pk=True)
    draws = []
    for epoch in range(600):
        sampler.set_epoch(epoch)
        assert sampler.P * sampler.K == 54 and sampler.batch_size == 54
        draws.append((sampler.P, sampler.K))
    counts = Counter(p for p, _ in draws)
    assert set(counts) == {2, 3, 6, 9, 18, 27}
    assert all(60 <= counts[p] <= 140 for p in counts), counts  # 100 each expected, sd ~9
    assert all(k == 54 // p for p, k in draws)
    # not a fixed cycle: consecutive epochs differ often, but not always
    changes = sum(a != b for a, b in zip(draws, draws[1:]))
    assert 400 < changes < 560
    # another seed, another sequence
    other = PKSampler(RPK_LABELS, 6, 9, seed=8, random_pk=True)
    other_draws = []
    for epoch in range(600):
        other.set_epoch(epoch)
        other_draws.append(other.P)
    assert other_draws != [p for p, _ in draws]


def test_random_pk_batches_len_and_resume():
    sampler = PKSampler(RPK_LABELS, 6, 9, seed=3, random_pk=True)
    seen_p, run = set(), []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        run.append(batches)
        P_, K_ = sampler.P, sampler.K
        seen_p.add(P_)
        assert len(batches) == len(sampler)
        official = [max(n, K_) // K_ + 1 for n in RPK_SIZES]
        assert len(sampler) == max(math.ceil(sum(official) / P_), max(official))
        check_batches(batches, RPK_LABELS, P_, K_)
        assert {i for b in batches for i in b} == set(range(len(RPK_LABELS)))
    assert seen_p == {2, 3, 6, 9, 18, 27}
    assert len({len(b) for b in run}) > 3  # the epoch length follows P x K
    for epoch in (0, 13, 29):  # a resumed run: a fresh sampler at that epoch
        fresh = PKSampler(RPK_LABELS, 6, 9, seed=3, random_pk=True)
        fresh.set_epoch(epoch)
        assert list(fresh) == run[epoch]
    fixed = PKSampler(RPK_LABELS, 6, 9, seed=3)
    for epoch in range(5):
        fixed.set_epoch(epoch)
        assert (fixed.P, fixed.K) == (6, 9)


def test_random_pk_skips_p_above_the_classes_and_keeps_seeded_batch_size():
    from ibc_geo.data import SeededBatches

    labels = np.repeat(np.arange(10), 20)
    sampler = PKSampler(labels, 6, 9, seed=0, random_pk=True)
    assert sampler.pk_choices == [2, 3, 6, 9]
    ps = set()
    for epoch in range(60):
        sampler.set_epoch(epoch)
        ps.add(sampler.P)
        batches = list(SeededBatches(sampler, seed=0))
        assert len(batches) == len(sampler) and all(len(b) == 54 for b in batches)
    assert ps == {2, 3, 6, 9}
    with pytest.raises(ValueError, match="random_pk"):
        PKSampler(np.arange(20) % 2, 1, 7, random_pk=True)  # 7 is prime: no divisor in [2, 3]
    assert PKSampler(np.arange(20) % 2, 6, 2, random_pk=True).pk_choices == [2]  # 3 of 12 needs 3 classes


def test_large_dataset_fast():
    labels = np.repeat(np.arange(11318), fixtures.sop_full_counts()[:11318])
    sampler = PKSampler(labels, 15, 6)
    batches = list(sampler)
    assert len(batches) == len(sampler) and {i for b in batches for i in b} == set(range(len(labels)))


def test_train_and_eval_loaders(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=8, images_per_class=5)
    cfg = fixtures.fixture_config("cub", root, "sampler.classes_per_batch", 2, "sampler.samples_per_class", 3,
                                  "data.workers", 2, "eval.batch_size", 7, "seed", 4)
    train = build_dataset(cfg, "train")

    def epoch_data(epoch):
        loader, sampler = build_train_loader(cfg, train, epoch=epoch)
        assert sampler.epoch == epoch and loader.num_workers == 2
        return [(x, y, i) for x, y, i in loader]

    loader, sampler = build_train_loader(cfg, train)
    assert (sampler.epoch_length, sampler.random_pk) == ("official", False)
    rpk = fixtures.fixture_config("cub", root, "sampler.epoch_length", "cover", "sampler.random_pk", "true")
    _, sampler = build_train_loader(rpk, train)
    assert (sampler.epoch_length, sampler.random_pk) == ("cover", True)
    first, again = epoch_data(1), epoch_data(1)
    assert len(first) == 4 and first[0][0].shape == (6, 3, 16, 16)
    for (x1, y1, i1), (x2, y2, i2) in zip(first, again):
        assert torch.equal(i1, i2) and torch.equal(y1, y2) and torch.equal(x1, x2)  # augmentation too
    assert any(not torch.equal(a[2], b[2]) for a, b in zip(first, epoch_data(2)))

    test = build_dataset(cfg, "test")
    batches = list(build_eval_loader(cfg, test))
    assert [len(b[1]) for b in batches] == [7, 7, 6]
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(20))


def test_seeded_batches_pair_the_pk_batches_with_per_epoch_seeds():
    from ibc_geo.data import SeededBatches

    sampler = PKSampler(LABELS, P, K, seed=3)
    seeded = SeededBatches(sampler, seed=3)
    sampler.set_epoch(1)
    first = list(seeded)
    assert len(seeded) == len(sampler) and [[i for i, _ in b] for b in first] == list(sampler)
    seeds = [s for b in first for _, s in b]
    assert len(set(seeds)) == len(seeds)  # one seed per sample slot
    assert list(SeededBatches(sampler, seed=3)) == first  # a function of (seed, epoch)
    sampler.set_epoch(2)
    assert not set(seeds) & {s for b in seeded for _, s in b}
    # Ranks take slices of the global batches, seeds included: rank 1 of 2 gets the second half of
    # each batch's seeds, none of rank 0's.
    ranks = [PKSampler(LABELS, P, K, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    halves = [{s for b in SeededBatches(r, seed=3) for _, s in b} for r in ranks]
    assert not halves[0] & halves[1] and halves[0] | halves[1] == set(seeds)


def test_sample_seed_fixes_the_augmentation_and_leaves_the_global_rng(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=4, images_per_class=3)
    train = build_dataset(fixtures.fixture_config("cub", root, "data.random_erasing", 0.5), "train")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b, c = train[(2, 123)][0], train[(2, 123)][0], train[(2, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(train[2][0], train[2][0])  # a plain index draws from the global RNG


def _epochs(cfg, train, epochs, reuse, stop_early=False):
    """The batches of ``epochs``: one loader reused (``sampler.set_epoch``), or a fresh one each;
    ``stop_early`` leaves the first epoch after two batches."""
    out, built = [], None
    for epoch in epochs:
        if built is None or not reuse:
            built = build_train_loader(cfg, train, epoch=epoch)
        loader, sampler = built
        sampler.set_epoch(epoch)
        batches = []
        for i, batch in enumerate(loader):
            batches.append(batch)
            if stop_early and epoch == epochs[0] and i == 1:  # like train.iters_per_epoch: left unfinished
                break
        out.append(batches)
    return out


def test_epoch_images_do_not_depend_on_workers_or_on_persistent_loaders(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=8, images_per_class=5)

    def cfg(workers):
        return fixtures.fixture_config("cub", root, "sampler.classes_per_batch", 2, "sampler.samples_per_class", 3,
                                       "data.workers", workers, "data.random_erasing", 0.5, "seed", 4)

    train = build_dataset(cfg(0), "train")
    reference = _epochs(cfg(0), train, [1, 2], reuse=False)
    persistent = _epochs(cfg(2), train, [1, 2], reuse=True, stop_early=True)
    loader, _ = build_train_loader(cfg(2), train)
    assert loader.persistent_workers and not build_eval_loader(cfg(2), train).persistent_workers
    for ref_epoch, got_epoch, n in zip(reference, persistent, (2, None)):
        for (x1, y1, i1), (x2, y2, i2) in zip(ref_epoch[:n], got_epoch):
            assert torch.equal(i1, i2) and torch.equal(y1, y2) and torch.equal(x1, x2)
    assert len(persistent[1]) == len(reference[1])
