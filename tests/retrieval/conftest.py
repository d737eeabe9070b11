"""One tiny trained run, one tiny image folder and its embedded gallery, shared by tests/retrieval."""
import os

import pytest

from retrieval_util import ROOT, TINY, cli


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A ResNet-18 trained for one tiny epoch on digits: ``{"cfg": config.yaml, "ckpt": best.pt, "config": cfg}``."""
    from ibc_geo.config import load_config
    from ibc_geo.engine import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), TINY + ["train.epochs", "1", "output_dir", str(out)])
    train(cfg)
    return {"cfg": str(out / "config.yaml"), "ckpt": str(out / "checkpoints" / "best.pt"), "config": cfg}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """``class_000 .. class_003`` with 3 distinct class-coloured 16 px JPEGs each (train/ and test/ halves)."""
    from ibc_geo.testing.fixtures import make_imagefolder

    return make_imagefolder(str(tmp_path_factory.mktemp("images")), num_classes=4, images_per_class=3)


@pytest.fixture(scope="session")
def gallery(tiny_run, image_folder, tmp_path_factory):
    """The image folder embedded by the tiny run, labels from the folder names."""
    out = tmp_path_factory.mktemp("gallery") / "gallery.npz"
    assert cli("embed", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--images", image_folder,
               "--labels-from-folders", "--out", out) == 0
    return str(out)
