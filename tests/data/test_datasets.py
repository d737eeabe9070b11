"""Dataset loaders: counts of METHOD.md §3 on full-count fixtures, splits, bad input."""
import math
import os
import shutil

import numpy as np
import pytest
import torch

from ibc_geo.data import DATASETS, DatasetError, RetrievalDataset, build_dataset
from ibc_geo.testing import fixtures
from ibc_geo.data.split import Split, hold_out_classes

make_cfg = fixtures.fixture_config

# (images, classes) of METHOD.md §3.
EXPECTED = {
    "cub": {"train": (5864, 100), "test": (5924, 100)},
    "cars": {"train": (8054, 98), "test": (8131, 98)},
    "sop": {"train": (59551, 11318), "test": (60502, 11316)},
    "inshop": {"train": (25882, 3997), "test": (14218 + 12612, 3985)},
}
MAKERS = {"cub": fixtures.make_cub, "cars": fixtures.make_cars, "sop": fixtures.make_sop,
          "inshop": fixtures.make_inshop}


def test_every_dataset_registered():
    assert DATASETS.names() == ["cars", "cub", "digits", "imagefolder", "inshop", "noisy_digits", "sop"]


@pytest.fixture(scope="module")
def full_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    roots = {name: make(str(base / name), full=True) for name, make in MAKERS.items()}
    return roots


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop"])
def test_full_counts_match_method(full_roots, name):
    cfg = make_cfg(name, full_roots[name])
    for split, (images, classes) in EXPECTED[name].items():
        ds = build_dataset(cfg, split)
        assert (len(ds), ds.num_classes) == (images, classes), split
        assert ds.labels.dtype == np.int64 and ds.labels.min() == 0 and ds.labels.max() == classes - 1
        assert len(ds.class_ids) == classes and len(ds.paths) == images
    if name == "inshop":
        test = build_dataset(cfg, "test")
        assert test.query_mask.dtype == np.bool_
        assert int(test.query_mask.sum()) == 14218 and int((~test.query_mask).sum()) == 12612
    else:
        assert build_dataset(cfg, "test").query_mask is None


def test_open_set_classes_disjoint_and_classification_split_unused(full_roots):
    cfg = make_cfg("cub", full_roots["cub"])
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_ids == list(range(1, 101)) and test.class_ids == list(range(101, 201))
    # train_test_split.txt marks half of every class as test: the loader must not have used it.
    assert os.path.isfile(os.path.join(full_roots["cub"], "train_test_split.txt"))
    cars = make_cfg("cars", full_roots["cars"])
    assert build_dataset(cars, "train").class_ids == list(range(1, 99))


def test_cars_devkit_equals_annos_form(tmp_path):
    # Same images in both forms; the devkit's classification folders mix every class.
    counts = [5, 3, 7, 2, 4, 6]
    annos = fixtures.make_cars(str(tmp_path / "a"), num_classes=6, images_per_class=counts)
    devkit = fixtures.make_cars(str(tmp_path / "d"), num_classes=6, images_per_class=counts, devkit=True)
    assert len(os.listdir(os.path.join(devkit, "cars_train"))) == 14  # 27 - 27 // 2
    for split, expected in (("train", [5, 3, 7]), ("test", [2, 4, 6])):
        a = build_dataset(make_cfg("cars", annos), split)
        b = build_dataset(make_cfg("cars", devkit), split)
        assert np.bincount(a.labels).tolist() == np.bincount(b.labels).tolist() == expected
        assert any("cars_test" in p for p in b.paths) and any("cars_train" in p for p in b.paths)


def test_cars_devkit_test_labels_at_root(tmp_path):
    root = fixtures.make_cars(str(tmp_path), devkit=True)
    shutil.move(os.path.join(root, "devkit", "cars_test_annos_withlabels.mat"), root)
    assert len(build_dataset(make_cfg("cars", root), "test")) == 6
    os.remove(os.path.join(root, "cars_test_annos_withlabels.mat"))
    with pytest.raises(DatasetError, match="cars_test_annos_withlabels.mat"):
        build_dataset(make_cfg("cars", root), "test")


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop", "imagefolder"])
def test_small_fixture_items(tmp_path, name):
    make = {**MAKERS, "imagefolder": fixtures.make_imagefolder}[name]
    root = make(str(tmp_path), num_classes=4, images_per_class=4)
    cfg = make_cfg(name, root)
    train = build_dataset(cfg, "train")
    image, label, index = train[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert (label, index) == (int(train.labels[5]), 5)
    assert train.name == name and train.split == "train" and (len(train), train.num_classes) == (8, 2)
    test = build_dataset(cfg, "test")
    assert not set(train.class_ids) & set(test.class_ids)


def test_digits_builtin():
    cfg = make_cfg("digits")
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_ids == [0, 1, 2, 3, 4] and test.class_ids == [5, 6, 7, 8, 9]
    assert len(train) + len(test) == 1797 and train.paths[0].startswith("digits[")
    assert train[0][0].shape == (3, 16, 16)


def test_noisy_digits_builtin():
    cfg = make_cfg("noisy_digits")
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_ids == [0, 1, 2, 3, 4] and test.class_ids == [5, 6, 7, 8, 9]
    # Every training digit in 4 noise draws, every test digit once: 901 and 896 digits.
    assert (len(train), len(test)) == (4 * 901, 896)
    assert train.paths[0] == "noisy_digits[0]#0" and train.paths[-1].endswith("#3")
    assert len(set(train.paths)) == len(train)
    assert train[0][0].shape == (3, 16, 16) and train.images.shape[1:] == (40, 40, 3)
    assert np.bincount(train.labels).tolist() == [4 * n for n in (178, 182, 177, 183, 181)]


def test_noisy_digits_are_the_digits_under_the_stated_noise():
    from ibc_geo.data.datasets import digits as d

    images, labels, source = d.noisy_digit_splits()["train"]
    clean, clean_labels = d.load_digit_images(d.NOISY_DIGIT_SIZE)
    assert (labels == clean_labels[source]).all()
    x = images.astype(np.float64) / 255.0
    # The border is black before the noise: clip(N(0, 0.7^2), 0, 1) there.
    border = x[:, :5].ravel()
    p_zero, p_one = 0.5, 0.5 * math.erfc(1.0 / (d.NOISE_STD * math.sqrt(2.0)))
    assert abs((border == 0).mean() - p_zero) < 0.01 and abs((border == 1).mean() - p_one) < 0.01
    # Averaging the 4 draws of a digit brings it closer to the clean digit than any single draw.
    n = len(np.unique(source))
    draws = x.reshape(d.NOISY_TRAIN_COPIES, n, 40, 40, 3).mean(-1)[:, :, 6:34, 6:34]
    target = clean[source[:n]].astype(np.float64) / 255.0
    corr_one = np.corrcoef(draws[0].ravel(), target.ravel())[0, 1]
    corr_mean = np.corrcoef(draws.mean(0).ravel(), target.ravel())[0, 1]
    assert 0.3 < corr_one < corr_mean - 0.1, (corr_one, corr_mean)
    # Noise independent across draws and channels: uncorrelated on the (black) border.
    first, second = x[:n, :5], x[n:2 * n, :5]
    assert abs(np.corrcoef(first[..., 0].ravel(), second[..., 0].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(first[..., 0].ravel(), first[..., 1].ravel())[0, 1]) < 0.02


def test_noisy_digits_fixed_whatever_the_seed():
    from ibc_geo.data.datasets import digits as d

    first = build_dataset(make_cfg("noisy_digits", "", "seed", 0), "test")
    d.noisy_digit_splits.cache_clear()
    second = build_dataset(make_cfg("noisy_digits", "", "seed", 5), "test")
    assert second.images is not first.images and np.array_equal(second.images, first.images)


def test_add_noise_without_noise_is_the_clean_image():
    from ibc_geo.data.datasets.digits import add_noise

    clean = np.random.default_rng(0).integers(0, 256, (2, 5, 5), dtype=np.uint8)
    out = add_noise(clean, 0.0, np.random.default_rng(1))
    assert out.shape == (2, 5, 5, 3) and (out == clean[..., None]).all()


def test_validation_split_disjoint_and_deterministic(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=20, images_per_class=2)
    cfg = make_cfg("cub", root, "data.val_classes", 0.3, "seed", 1)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(val.class_ids) == 3 and len(train.class_ids) == 7
    assert not set(train.class_ids) & set(val.class_ids)
    assert set(train.class_ids) | set(val.class_ids) == set(range(1, 11))
    assert build_dataset(cfg, "val").class_ids == val.class_ids
    other = [build_dataset(make_cfg("cub", root, "data.val_classes", 3, "seed", s), "val").class_ids
             for s in range(2, 8)]
    assert any(ids != val.class_ids for ids in other)  # the seed matters
    assert build_dataset(make_cfg("cub", root, "data.val_classes", 3, "seed", 1), "val").class_ids == val.class_ids
    with pytest.raises(DatasetError, match="val_classes"):
        build_dataset(make_cfg("cub", root), "val")


def test_hold_out_rejects_too_many():
    split = Split(paths=list("abcd"), classes=[1, 2, 3, 4])
    with pytest.raises(DatasetError, match="at least 2"):
        hold_out_classes(split, 3, seed=0)


def test_imagefolder_val_folder(tmp_path):
    root = fixtures.make_imagefolder(str(tmp_path), num_classes=4, val_classes=2)
    val = build_dataset(make_cfg("imagefolder", root), "val")
    assert val.class_ids == ["class_004", "class_005"]
    with pytest.warns(RuntimeWarning, match="val_classes"):
        build_dataset(make_cfg("imagefolder", root, "data.val_classes", 2), "train")


# Bad input -------------------------------------------------------------------------------------

def test_missing_root_shows_layout_and_command(tmp_path):
    with pytest.raises(DatasetError) as e:
        build_dataset(make_cfg("sop", tmp_path / "nowhere"), "train")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "Ebay_train.txt" in msg and "tools/check_dataset.py" in msg
    with pytest.raises(DatasetError, match="data.root is empty"):
        build_dataset(make_cfg("cub", ""), "train")


@pytest.mark.parametrize("name,rel", [("cub", "image_class_labels.txt"), ("sop", "Ebay_test.txt"),
                                      ("inshop", "Eval/list_eval_partition.txt"), ("cars", "cars_annos.mat"),
                                      ("cub", "images")])
def test_missing_annotation_file(tmp_path, name, rel):
    root = MAKERS[name](str(tmp_path))
    target = os.path.join(root, rel)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    with pytest.raises(DatasetError) as e:
        build_dataset(make_cfg(name, root), "train")
    assert target in str(e.value) and "expects data.root" in str(e.value)


def test_root_one_level_off(tmp_path):
    root = fixtures.make_sop(str(tmp_path))
    os.rename(os.path.join(root, "bicycle_final"), os.path.join(root, "moved"))
    with pytest.raises(DatasetError, match="first image of the train split"):
        build_dataset(make_cfg("sop", root), "train")


@pytest.mark.parametrize("name", ["cub", "sop", "inshop", "cars"])
def test_a_root_one_level_up_or_down_is_named_in_the_error(tmp_path, name):
    root = MAKERS[name](str(tmp_path / "data"))  # <tmp>/data/<the dataset's folder>
    parent = os.path.dirname(root)
    with pytest.raises(DatasetError) as e:  # the folder above the dataset
        build_dataset(make_cfg(name, parent), "train")
    assert f"did you mean data.root {root}?" in str(e.value)
    os.makedirs(os.path.join(root, "extra"))  # the dataset's own folder: nothing to suggest
    inner = os.path.join(root, "extra")
    with pytest.raises(DatasetError) as e:  # one level too deep
        build_dataset(make_cfg(name, inner), "train")
    assert f"did you mean data.root {root}?" in str(e.value)
    shutil.copytree(root, os.path.join(parent, "copy"))  # two candidates below: no guess
    with pytest.raises(DatasetError) as e:
        build_dataset(make_cfg(name, parent), "train")
    assert "not found" in str(e.value) and "did you mean" not in str(e.value)


def test_duplicate_image_ids(tmp_path):
    root = fixtures.make_cub(str(tmp_path))
    path = os.path.join(root, "images.txt")
    lines = open(path).read().splitlines()
    lines[3] = lines[3].replace("4 ", "2 ", 1)
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"images.txt:4: duplicate image_id 2 \(first at line 2\)"):
        build_dataset(make_cfg("cub", root), "train")
    sop = fixtures.make_sop(str(tmp_path / "s"))
    path = os.path.join(sop, "Ebay_train.txt")
    lines = open(path).read().splitlines()
    lines.append("1 " + lines[2].split(" ", 1)[1])
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="duplicate image_id 1"):
        build_dataset(make_cfg("sop", sop), "train")


def test_sop_bad_header(tmp_path):
    root = fixtures.make_sop(str(tmp_path))
    path = os.path.join(root, "Ebay_test.txt")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetError, match="Ebay_test.txt:1: expected the header"):
        build_dataset(make_cfg("sop", root), "test")


def test_inshop_unknown_status_and_count(tmp_path):
    root = fixtures.make_inshop(str(tmp_path))
    path = os.path.join(root, "Eval", "list_eval_partition.txt")
    text = open(path).read()
    open(path, "w").write(text.replace("gallery", "galery", 1))
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:\d+: unknown evaluation_status 'galery'"):
        build_dataset(make_cfg("inshop", root), "test")
    lines = text.splitlines()
    open(path, "w").write("\n".join(["99"] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match="announces 99 images"):
        build_dataset(make_cfg("inshop", root), "test")


def test_inshop_img_unpacked_beside_eval_reads_the_same_images(tmp_path):
    import shutil

    root = fixtures.make_inshop(str(tmp_path))
    shipped = build_dataset(make_cfg("inshop", root), "test")
    shipped_paths, first = list(shipped.paths), np.asarray(shipped[0][0])
    shutil.move(os.path.join(root, "Img", "img"), os.path.join(root, "img"))  # img.zip unpacked at the top
    os.rmdir(os.path.join(root, "Img"))
    moved = build_dataset(make_cfg("inshop", root), "test")
    assert [os.path.relpath(p, root) for p in moved.paths] == [
        os.path.relpath(p, os.path.join(root, "Img")) for p in shipped_paths]
    assert moved.class_ids == shipped.class_ids and (moved.labels == shipped.labels).all()
    assert (moved.query_mask == shipped.query_mask).all()
    assert np.array_equal(np.asarray(moved[0][0]), first)  # the same image loads
    shutil.rmtree(os.path.join(root, "img"))
    with pytest.raises(DatasetError, match="Img"):  # neither: the error names the shipped folder
        build_dataset(make_cfg("inshop", root), "test")


def test_malformed_row(tmp_path):
    root = fixtures.make_cub(str(tmp_path))
    with open(os.path.join(root, "image_class_labels.txt"), "a") as f:
        f.write("13 1 extra\n")
    with pytest.raises(DatasetError, match="image_class_labels.txt:13: expected 2"):
        build_dataset(make_cfg("cub", root), "train")


def test_empty_class_folder(tmp_path):
    root = fixtures.make_imagefolder(str(tmp_path))
    os.makedirs(os.path.join(root, "train", "class_empty"))
    with pytest.raises(DatasetError, match="class_empty holds no images"):
        build_dataset(make_cfg("imagefolder", root), "train")


def test_single_image_class_warns_and_is_kept(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=6, images_per_class=[1, 4, 4, 4, 4, 4])
    with pytest.warns(RuntimeWarning, match="1 classes have a single image"):
        train = build_dataset(make_cfg("cub", root), "train")
    assert train.num_classes == 3 and np.bincount(train.labels).tolist() == [1, 4, 4]


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def test_corrupt_image_skipped_with_same_class_replacement(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=4, images_per_class=3)
    cfg = make_cfg("cub", root)
    train = build_dataset(cfg, "test")  # deterministic transforms
    train.on_corrupt = "skip"  # the training behaviour (evaluation splits never substitute)
    _truncate(train.paths[1])
    reference = train[2][0]
    with pytest.warns(RuntimeWarning, match="Species_003_1001_8.jpg"):
        image, label, index = train[1]
    assert (label, index) == (0, 1) and torch.equal(image, reference)  # the next image of class 3
    assert train.skipped == 1 and train.skipped_paths == [train.paths[1]]
    train[1]  # known bad: no second count
    assert train.skipped == 1
    for i in (0, 2):
        os.remove(train.paths[i])
    with pytest.warns(RuntimeWarning), pytest.raises(DatasetError, match="every image of class 3"):
        train[0]


def test_corrupt_image_error_mode(tmp_path):
    root = fixtures.make_cub(str(tmp_path))
    train = build_dataset(make_cfg("cub", root, "data.on_corrupt", "error"), "train")
    open(train.paths[0], "wb").write(b"not a jpeg")
    with pytest.raises(DatasetError, match=f"cannot read image {train.paths[0]}"):
        train[0]


def test_skip_count_crosses_worker_processes(tmp_path):
    root = fixtures.make_cub(str(tmp_path), num_classes=4, images_per_class=3)
    cfg = make_cfg("cub", root)
    train = build_dataset(cfg, "test")
    train.on_corrupt = "skip"  # the training behaviour (evaluation splits never substitute)
    _truncate(train.paths[4])
    loader = torch.utils.data.DataLoader(train, batch_size=2, num_workers=2)
    labels = torch.cat([y for _, y, _ in loader])
    assert labels.tolist() == train.labels.tolist() and train.skipped == 1


def test_dataset_direct_and_grayscale(tmp_path):
    from PIL import Image
    path = str(tmp_path / "g.png")
    Image.new("L", (5, 7), 128).save(path)
    ds = RetrievalDataset([path, path], ["b", "a"], name="x", split="test")
    image, label, index = ds[0]
    assert image.mode == "RGB" and label == 1 and ds.class_ids == ["a", "b"]
    with pytest.raises(DatasetError, match="empty"):
        RetrievalDataset([], [], name="x", split="train")
