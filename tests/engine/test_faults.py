"""Fault injection: what a run survives, and what it refuses, as a user meets it.

kill -9 mid-epoch then resume, Ctrl-C, a checkpoint truncated mid-write, divergence after the first
checkpoint, a corrupt test image at evaluation, an output_dir holding someone else's files.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import ibc_geo.engine.trainer as trainer_module
from ibc_geo.engine import NonFiniteLossError, RunExistsError, train
from ibc_geo.engine.checkpoint import load_checkpoint
from ibc_geo.testing import fixtures
from tiny_run import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "tools", "train.py")


def train_process(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, TRAIN, *TINY, "output_dir", out, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=240):
    start = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)


LONG = ("train.epochs", "3", "train.iters_per_epoch", "6", "eval.every", "3")


def run_to_the_end(out, *extra):
    proc = train_process(out, *extra)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    # All three runs are processes with the same environment: bitwise equality holds for one thread
    # count (a CPU conv sums in a different order on 1 thread than on 8).
    full = str(tmp_path / "full")
    run_to_the_end(full, *LONG)
    out = str(tmp_path / "killed")
    proc = train_process(out, *LONG)
    wait_for(os.path.join(out, "checkpoints", "last.pt"), proc)  # epoch 1 done, epoch 2 running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["epoch"] in (1, 2)
    run_to_the_end(out, *LONG, "train.resume", "true")
    a = load_checkpoint(os.path.join(full, "checkpoints", "last.pt"))
    b = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_ctrl_c_says_how_to_resume(tmp_path):
    out = str(tmp_path / "run")
    proc = train_process(out, *LONG)
    wait_for(os.path.join(out, "checkpoints", "last.pt"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "error: interrupted; " in err and "last.pt holds the last finished epoch" in err
    assert f"--cfg {out}/config.yaml train.resume true" in err


def test_a_checkpoint_truncated_mid_write_is_refused_by_name(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    train(cfg)
    last = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 2)
    from ibc_geo.engine import CheckpointError

    with pytest.raises(CheckpointError, match="last.pt"):
        train(tiny_cfg("train.epochs", "2", "train.resume", "true"))


def test_divergence_after_the_first_checkpoint_keeps_it(tiny_cfg, monkeypatch):
    # The weights (not the loss) turn NaN in the last step of epoch 2: the loss of that step was
    # finite, so only the check before writing a checkpoint can catch it.
    cfg = tiny_cfg("train.epochs", "3")
    original = trainer_module.Trainer._train_epoch

    def poison(self, epoch, writer):
        result = original(self, epoch, writer)
        if epoch == 2:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", poison)
    last = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    state = load_checkpoint(last)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    message = str(e.value)
    assert "NaN or infinite values after epoch 2" in message and "last.pt was not written" in message
    assert f"{last} (epoch 1) is kept intact" in message


def test_a_diverged_model_at_evaluation_gives_the_divergence_message(tiny_cfg, monkeypatch):
    from ibc_geo.utils.errors import DivergedError

    cfg = tiny_cfg("train.epochs", "1")
    original = trainer_module.Trainer._evaluate

    def diverge_then_evaluate(self, epoch, writer):
        with torch.no_grad():
            self.model.backbone.embedding.weight.fill_(float("inf"))
        return original(self, epoch, writer)

    monkeypatch.setattr(trainer_module.Trainer, "_evaluate", diverge_then_evaluate)
    with pytest.raises(DivergedError, match="NaN or infinite: the model has diverged"):
        train(cfg)


def corrupt_one_test_image(root):
    test_dir = os.path.join(root, "test")
    cls = sorted(os.listdir(test_dir))[0]
    path = os.path.join(test_dir, cls, sorted(os.listdir(os.path.join(test_dir, cls)))[0])
    with open(path, "wb") as f:
        f.write(b"not an image")
    return path


def test_a_corrupt_test_image_stops_the_evaluation_or_is_dropped_and_recorded(tmp_path):
    from ibc_geo.config import load_config
    from ibc_geo.engine import evaluate_initial_model
    from ibc_geo.data import DatasetError

    root = fixtures.make_imagefolder(str(tmp_path), num_classes=8, images_per_class=4)
    bad = corrupt_one_test_image(root)
    pairs = ["data.name", "imagefolder", "data.root", root, "data.val_classes", "0", "eval.selection", "test",
             "data.image_size", "32", "data.resize_size", "32", "model.backbone", "resnet18",
             "model.pretrained", "none", "model.embedding_dim", "16", "data.workers", "0",
             "sampler.classes_per_batch", "2", "sampler.samples_per_class", "2", "eval.kmeans_iters", "5",
             "output_dir", str(tmp_path / "out")]
    with pytest.raises(DatasetError, match="eval.on_corrupt drop") as e:
        evaluate_initial_model(load_config(None, pairs), "test")
    assert bad in str(e.value)
    metrics = evaluate_initial_model(load_config(None, pairs + ["eval.on_corrupt", "drop"]), "test")
    assert metrics["dropped_images"] == [bad] and metrics["num_dropped"] == 1
    assert metrics["num_items"] == 4 * 4 - 1  # four test classes of four, one left out


def test_an_output_dir_with_someone_elses_files(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    out = cfg.output_dir
    os.makedirs(os.path.join(out, "checkpoints"))
    theirs = [os.path.join(out, "notes.txt"), os.path.join(out, "checkpoints", "model_v2.bin")]
    for p in theirs:
        with open(p, "w") as f:
            f.write("not ibc_geo's")
    train(cfg)  # nothing of a run here: it trains, and leaves their files alone
    assert all(os.path.exists(p) for p in theirs)
    # A run is there now: refused without a flag, naming what it found ...
    with pytest.raises(RunExistsError, match="metrics.json"):
        train(cfg)
    # ... resume of a finished run without last.pt is refused, not wiped ...
    os.remove(os.path.join(out, "checkpoints", "last.pt"))
    with pytest.raises(RunExistsError, match="a finished run"):
        train(tiny_cfg("train.epochs", "1", "train.resume", "true"))
    assert os.path.exists(os.path.join(out, "metrics.json"))
    # ... and overwrite deletes the run's files only.
    train(tiny_cfg("train.epochs", "1", "train.overwrite", "true"))
    assert all(os.path.exists(p) for p in theirs)
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["epochs"] == 1
