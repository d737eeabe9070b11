"""User mistakes end in one line naming the value or file, and numbers that mislead come with a warning."""
import numpy as np
import pytest
import torch
import torchvision

from ibc_geo.cli import eval as eval_tool
from ibc_geo.cli import run
from ibc_geo.cli.common import user_message
from ibc_geo.config import ConfigError, load_config
from ibc_geo.data import DatasetError, build_dataset, build_train_loader
from ibc_geo.evaluation import evaluate_embeddings


def test_a_foreign_checkpoint_is_named_not_a_traceback(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    torch.save(torch.zeros(3), tmp_path / "bare.pt")
    for name, what in (("tv.pth", "a state dict of another kind (keys such as conv1.weight"), ("bare.pt", "a Tensor")):
        code = run(eval_tool.main, ["--cfg", "configs/demo.yaml", "--ckpt", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and f"{tmp_path / name} is not an ibc_geo checkpoint: it holds {what}" in err
        assert "Traceback" not in err


def test_a_text_file_given_as_embeddings(tmp_path, capsys):
    (tmp_path / "e.txt").write_text("0.1 0.2\n")
    code = run(eval_tool.main, ["--embeddings", str(tmp_path / "e.txt"), "--labels", str(tmp_path / "e.txt")])
    assert code == 2 and "is not a .npy array (written by numpy.save)" in capsys.readouterr().err


def test_config_wording(tmp_path):
    (tmp_path / "b.yaml").write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml inherits _BASE_: nowhere.yaml, which is not found"):
        load_config(str(tmp_path / "b.yaml"))
    with pytest.raises(ConfigError, match=r"'eval.recall_k' in the command line takes a list, e.g. eval.recall_k \[5\]"):
        load_config(None, ["eval.recall_k", "5"])
    (tmp_path / "empty.yaml").write_text("")
    with pytest.warns(UserWarning, match="empty.yaml is empty: every key keeps its schema default"):
        load_config(str(tmp_path / "empty.yaml"))


def test_sampler_mistakes_and_small_classes():
    cfg = load_config("configs/demo.yaml", ["sampler.classes_per_batch", "6", "sampler.samples_per_class", "4"])
    train = build_dataset(cfg, "train")
    with pytest.raises(DatasetError, match="has 5 classes, fewer than sampler.classes_per_batch = 6"):
        build_train_loader(cfg, train)
    cfg = load_config("configs/demo.yaml", ["sampler.samples_per_class", "1000", "sampler.classes_per_batch", "2"])
    with pytest.warns(UserWarning, match="5 of 5 classes of the train split have fewer than"):
        build_train_loader(cfg, build_dataset(cfg, "train"))


def test_misleading_numbers_warn():
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"Recall@16 with only 9 items"):
        evaluate_embeddings(x, np.arange(10) % 2, recall_k=(1, 16), nmi=False)
    with pytest.warns(UserWarning, match="a single class"):
        evaluate_embeddings(x, np.zeros(10, dtype=int), recall_k=(1,), nmi=False)


def test_a_worker_traceback_is_reduced_to_the_message():
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\nibc_geo.data.errors.DatasetError: cannot "
                           "read image a.jpg (cub test, index 1): broken")
    assert user_message(wrapped) == "cannot read image a.jpg (cub test, index 1): broken"
