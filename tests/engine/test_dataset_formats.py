"""One epoch on tiny generated data in each dataset's shipped on-disk format."""
import json
import math
import os

import pytest
import torch

from ibc_geo.testing import fixtures
from ibc_geo.engine import train

FORMATS = {
    "cub": lambda root: fixtures.make_cub(root, num_classes=10, images_per_class=4),
    "cars": lambda root: fixtures.make_cars(root, num_classes=10, images_per_class=4),
    "cars_devkit": lambda root: fixtures.make_cars(root, num_classes=10, images_per_class=4, devkit=True),
    "sop": lambda root: fixtures.make_sop(root, num_classes=10, images_per_class=4),
    "inshop": lambda root: fixtures.make_inshop(root, num_classes=10, images_per_class=4),
    "imagefolder": lambda root: fixtures.make_imagefolder(root, num_classes=10, images_per_class=4),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_one_epoch_in_each_format(tiny_cfg, tmp_path, fmt):
    root = FORMATS[fmt](str(tmp_path / "data"))
    cfg = tiny_cfg("data.name", fmt.split("_")[0], "data.root", root, "train.epochs", "1",
                   "eval.recall_k", "[1, 2]")
    result = train(cfg)
    for name in ("config.yaml", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert os.path.exists(os.path.join(cfg.output_dir, name)), name
    with open(os.path.join(cfg.output_dir, "metrics.json")) as f:
        test = json.load(f)["test"]
    assert all(math.isfinite(test[k]) for k in ("recall@1", "recall@2", "map@r", "nmi"))
    assert test == result["test"]
    if fmt == "inshop":  # queries search the gallery only
        assert test["num_queries"] < test["num_items"]
    state = torch.load(os.path.join(cfg.output_dir, "checkpoints", "best.pt"), weights_only=True)
    assert state["epoch"] == 1
