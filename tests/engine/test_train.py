"""End-to-end training on tiny data: outputs, exact resume, NaN stop, LR drop, selection, errors."""
import copy
import json
import math
import os

import pytest
import torch

import ibc_geo.engine.trainer as trainer_module
from ibc_geo.config import load_config
from ibc_geo.engine import CheckpointError, NonFiniteLossError, RunExistsError, evaluate_checkpoint, train
from ibc_geo.engine.checkpoint import load_checkpoint
from tiny_run import train_killed_in_epoch


def test_one_run_writes_every_output(tiny_cfg):
    cfg = tiny_cfg()
    result = train(cfg)
    out = cfg.output_dir
    for name in ("config.yaml", "log.txt", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert os.path.exists(os.path.join(out, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "precision@1", "nmi"):
        assert math.isfinite(saved["test"][key]) and 0.0 <= saved["test"][key] <= 1.0
    assert saved["selection"]["split"] == "val" and len(saved["selection"]["history"]) == 2
    state = torch.load(os.path.join(out, "checkpoints", "last.pt"), weights_only=True)
    assert state["epoch"] == 2 and "model" in state and "optimizer" in state
    # the written config reproduces the run's config
    assert load_config(os.path.join(out, "config.yaml")) == cfg
    with open(os.path.join(out, "log.txt")) as f:
        lines = [line[len("2026-12-01 10:00:00 "):] for line in f.read().splitlines()]  # after the date and time
    assert lines[0].startswith("training digits into") and any(l.startswith("epoch 1/2 |") for l in lines)
    assert lines[-2].startswith("test | recall@1 ") and lines[-1].startswith("done in")
    assert "metrics.json" in lines[-1] and "best.pt" in lines[-1]
    # best.pt: what selection and the LR-drop reload need, not the optimizer state.
    best = torch.load(os.path.join(out, "checkpoints", "best.pt"), weights_only=True)
    assert set(best) == {"model", "epoch", "best", "config"} and "optimizer" in state


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_after_a_kill_reaches_the_same_weights(tiny_cfg, monkeypatch, workers):
    # With workers, each epoch's loader seeds them from (seed, epoch): the resumed run rebuilds them.
    common = ("train.epochs", "3", "train.lr_drop_epochs", "[3]", "data.workers", workers)
    full = tiny_cfg(*common, out="full")
    train(full)

    killed = tiny_cfg(*common, out="killed")
    train_killed_in_epoch(killed, 2, monkeypatch)
    assert load_checkpoint(os.path.join(killed.output_dir, "checkpoints", "last.pt"))["epoch"] == 1

    resumed = tiny_cfg(*common, "train.resume", "true", out="killed")
    result = train(resumed)
    a = load_checkpoint(os.path.join(full.output_dir, "checkpoints", "last.pt"))
    b = load_checkpoint(os.path.join(resumed.output_dir, "checkpoints", "last.pt"))
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    with open(os.path.join(full.output_dir, "metrics.json")) as f:
        assert json.load(f)["test"] == result["test"]


def test_same_weights_with_any_number_of_workers(tiny_cfg):
    # Every sample is augmented on its own seed: the workers (persistent across the epochs) do not
    # change what the model sees.
    runs = []
    for workers in ("0", "2"):
        cfg = tiny_cfg("train.epochs", "2", "data.workers", workers, "data.random_erasing", "0.5",
                       out=f"workers{workers}")
        train(cfg)
        runs.append(load_checkpoint(os.path.join(cfg.output_dir, "checkpoints", "last.pt"))["model"])
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])


def test_nan_loss_stops_with_epoch_iteration_and_term(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("train.epochs", "3")
    original = trainer_module.IntraBatchLoss.forward

    def nan_in_epoch_2(self, labels, backbone_logits, mpn_logits=None):
        terms = original(self, labels, backbone_logits, mpn_logits)
        if nan_in_epoch_2.calls >= 2:  # two iterations an epoch: the third call is epoch 2, iteration 1
            terms["mpn"] = terms["mpn"] * float("nan")
        nan_in_epoch_2.calls += 1
        return terms

    nan_in_epoch_2.calls = 0
    monkeypatch.setattr(trainer_module.IntraBatchLoss, "forward", nan_in_epoch_2)
    last = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    message = str(e.value)
    assert "'mpn'" in message and "epoch 2" in message and "iteration 1" in message
    assert load_checkpoint(last)["epoch"] == 1  # intact, readable, from the last finished epoch
    assert f"{last} (epoch 1) is kept intact" in message


def test_nan_loss_in_the_first_epoch_names_no_checkpoint(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("train.epochs", "1")
    original = trainer_module.IntraBatchLoss.forward

    def nan(self, labels, backbone_logits, mpn_logits=None):
        terms = original(self, labels, backbone_logits, mpn_logits)
        terms["backbone"] = terms["backbone"] * float("inf")
        return terms

    monkeypatch.setattr(trainer_module.IntraBatchLoss, "forward", nan)
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg)
    assert "'backbone' is inf at epoch 1, iteration 1" in str(e.value)
    assert "no checkpoint was written yet" in str(e.value) and "last.pt" not in str(e.value)
    assert not os.path.exists(os.path.join(cfg.output_dir, "checkpoints", "last.pt"))


def scripted_val_recall(values):
    """``run_evaluation`` whose val Recall@1 is the next of ``values`` (the test split stays real)."""
    scores = iter(values)
    real_evaluate = trainer_module.run_evaluation

    def scripted(cfg_, model, dataset, device, **kwargs):
        evaluation = real_evaluate(cfg_, model, dataset, device, **kwargs)
        if dataset.split == "val":
            evaluation.metrics["recall@1"] = next(scores)
        return evaluation

    return scripted


@pytest.mark.parametrize("cumulative", [False, True])
def test_lr_drops_reload_the_best_weights_and_keep_the_optimizer_state(tiny_cfg, monkeypatch, cumulative):
    # The official schedule scaled down: drops at epochs 3 and 5 of 6 (paper: 31 and 51 of 70).
    cfg = tiny_cfg("train.epochs", "6", "train.lr_drop_epochs", "[3, 5]", "train.lr", "1e-3",
                   "train.lr_drop_cumulative", str(cumulative).lower())
    scripted = scripted_val_recall([0.9, 0.5, 0.7, 0.95, 0.6, 0.1])  # best: epoch 1, then 4

    lr, reloaded, opt_before, opt_after = {}, {}, {}, {}
    original = trainer_module.Trainer._train_epoch

    def spy(self, epoch, writer):
        lr[epoch] = [g["lr"] for g in self.optimizer.param_groups]
        if epoch in (3, 5):
            best = load_checkpoint(self.ckpt_dir / "best.pt")
            reloaded[epoch] = best["epoch"], all(
                torch.equal(v, best["model"][k]) for k, v in self.model.state_dict().items())
        opt_before[epoch] = copy.deepcopy(self.optimizer.state_dict()["state"])
        result = original(self, epoch, writer)
        opt_after[epoch] = copy.deepcopy(self.optimizer.state_dict()["state"])
        return result

    monkeypatch.setattr(trainer_module, "run_evaluation", scripted)
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", spy)
    result = train(cfg)
    second = 1e-5 if cumulative else 1e-4  # official: base / 10 after both drops
    for epoch, want in {1: 1e-3, 2: 1e-3, 3: 1e-4, 4: 1e-4, 5: second, 6: second}.items():
        assert lr[epoch] == pytest.approx([want] * len(lr[epoch])), epoch
    # Each drop reloads the best weights so far: epoch 1's at epoch 3, epoch 4's at epoch 5 ...
    assert reloaded == {3: (1, True), 5: (4, True)}
    # ... but keeps the optimizer state of the run (RAdam's step counts and moments go on).
    for epoch in (3, 5):
        before, after = opt_before[epoch], opt_after[epoch - 1]
        assert before.keys() == after.keys()
        for i in before:
            for name, value in before[i].items():
                assert torch.equal(value, after[i][name]), (epoch, i, name)
    steps = {float(s["step"]) for s in opt_before[3].values()}
    assert steps == {4.0}  # two epochs of two iterations, not best.pt's (epoch 1: 2 steps)
    best = load_checkpoint(os.path.join(cfg.output_dir, "checkpoints", "best.pt"))
    assert best["epoch"] == 4 and result["selection"]["best_epoch"] == 4


def test_lr_drop_reloads_exactly_the_best_checkpoint_weights(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("train.epochs", "3", "train.lr_drop_epochs", "[3]", "train.lr", "1e-3")
    scripted = scripted_val_recall([0.9, 0.5, 0.7])  # epoch 1 is the best before the drop at epoch 3

    seen = {}
    original = trainer_module.Trainer._train_epoch

    def spy(self, epoch, writer):
        if epoch == 3:
            seen["weights"] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return original(self, epoch, writer)

    monkeypatch.setattr(trainer_module, "run_evaluation", scripted)
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", spy)
    train(cfg)
    best = load_checkpoint(os.path.join(cfg.output_dir, "checkpoints", "best.pt"))
    assert best["epoch"] == 1
    for key, value in best["model"].items():
        assert torch.equal(seen["weights"][key], value), key


def test_radam_weight_decay_is_decoupled(tiny_cfg):
    from ibc_geo.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("train.weight_decay", "0.01"))
    trainer._build(None)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.RAdam)
    assert group["decoupled_weight_decay"] is True and group["weight_decay"] == 0.01
    # One step with a zero gradient: decoupled decay alone moves p to p * (1 - lr * wd).
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.RAdam([p], lr=0.1, weight_decay=0.01, decoupled_weight_decay=True)
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 0.01))


def test_val_selection_reads_the_test_split_only_at_the_end(tiny_cfg, monkeypatch):
    calls = []
    real = trainer_module.build_dataset

    def record(cfg, split, transform=None):
        calls.append(split)
        return real(cfg, split, transform)

    monkeypatch.setattr(trainer_module, "build_dataset", record)
    train(tiny_cfg("train.epochs", "2"))
    assert calls[0] == "train" and calls[-1] == "test" and calls.count("test") == 1
    assert set(calls[1:-1]) == {"val"}


def test_test_selection_reuses_the_best_evaluation_exactly(tiny_cfg, monkeypatch):
    splits = []
    real = trainer_module.run_evaluation

    def record(cfg_, model, dataset, device, **kwargs):
        splits.append(dataset.split)
        return real(cfg_, model, dataset, device, **kwargs)

    monkeypatch.setattr(trainer_module, "run_evaluation", record)
    cfg = tiny_cfg("train.epochs", "2", "eval.every", "1", "eval.selection", "test", "data.val_classes", "0")
    result = train(cfg)
    assert splits == ["test", "test"]  # one per evaluation, none again at the end
    best = result["selection"]["best_epoch"]
    chosen = next(h for h in result["selection"]["history"] if h["epoch"] == best)
    assert result["test"] == {k: v for k, v in chosen.items() if k not in ("epoch", "attention")}  # attention: per evaluation
    again = evaluate_checkpoint(cfg, os.path.join(cfg.output_dir, "checkpoints", "best.pt"), "test")
    assert all(again[k] == result["test"][k] for k in ("recall@1", "recall@2", "map@r", "nmi"))


def test_refuses_a_finished_run_unless_resume_or_overwrite(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    train(cfg)
    with pytest.raises(RunExistsError, match="train.resume"):
        train(cfg)
    stale = [os.path.join(cfg.output_dir, name) for name in ("metrics_test.json", "metrics_init_test.json")]
    for path in stale:  # what tools/eval.py writes beside a run
        with open(path, "w") as f:
            f.write("{}")
    keep = os.path.join(cfg.output_dir, "notes.txt")
    with open(keep, "w") as f:
        f.write("mine")
    result = train(tiny_cfg("train.epochs", "1", "train.overwrite", "true"))
    assert result["epochs"] == 1
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(keep)


def test_resume_with_another_config_lists_the_keys(tiny_cfg):
    train(tiny_cfg("train.epochs", "1"))
    with pytest.raises(CheckpointError, match="mpn.num_heads"):
        train(tiny_cfg("train.epochs", "2", "train.resume", "true", "mpn.num_heads", "4"))


def test_evaluate_checkpoint_and_architecture_mismatch(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    result = train(cfg)
    ckpt = os.path.join(cfg.output_dir, "checkpoints", "best.pt")
    metrics = evaluate_checkpoint(cfg, ckpt, "test")
    assert metrics["recall@1"] == pytest.approx(result["test"]["recall@1"])
    other = tiny_cfg("model.backbone", "resnet34", out="other")
    with pytest.raises(CheckpointError, match="model.backbone"):
        evaluate_checkpoint(other, ckpt, "test")


@pytest.mark.parametrize("topology", ["none", "knn", "self"])
def test_other_topologies_train(tiny_cfg, topology):
    result = train(tiny_cfg("graph.topology", topology, "graph.k", "3", "train.epochs", "1"))
    assert math.isfinite(result["test"]["recall@1"])


def _scalars_and_images(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


@pytest.mark.parametrize("topology", ["full", "same_class"])
def test_tensorboard_logs_losses_metrics_pictures_and_attention_statistics(tiny_cfg, topology):
    cfg = tiny_cfg("graph.topology", topology, "train.epochs", "2")
    train(cfg)
    acc, scalars, images = _scalars_and_images(cfg.output_dir)
    for tag in ("loss/total", "loss/backbone", "loss/mpn", "lr", "selection_val/recall@1", "selection_val/map@r",
                "selection_val/nmi", "test/recall@1", "attention/entropy_layer0", "attention/same_class_layer0",
                "attention/entropy_layer0_uniform", "attention/same_class_layer0_uniform",
                "attention/mass_on_nodes_layer0", "attention/logit_std_layer0"):
        assert tag in scalars, tag
    # One step axis, the global iteration (2 epochs x 2 iterations): evaluations at 2 and 4.
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]  # train.log_every 1
    assert [e.step for e in acc.Scalars("selection_val/recall@1")] == [2, 4]
    assert [e.step for e in acc.Scalars("attention/entropy_layer0")] == [2, 4]
    for tag in scalars:
        if tag.startswith("test/"):
            assert len(acc.Scalars(tag)) == 1 and acc.Scalars(tag)[0].step == 4, tag  # logged once
    # The batch figure: an RGB picture of at least 300 x 300 pixels at each evaluation.
    assert "graph/batch" in images
    pictures = acc.Images("graph/batch")
    assert [p.step for p in pictures] == [2, 4] and pictures[0].width >= 300 and pictures[0].height >= 300
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(pictures[0].encoded_image_string)).mode in ("RGB", "RGBA")
    # The retrieval picture (8 queries of the whole split x top-8, green / red frames, two caption
    # lines: rank and cosine, class) at each evaluation, and the embedding projector of the test split.
    from ibc_geo.engine.retrieval_grid import CAPTION_LINE, grid_size

    retrieval = acc.Images("retrieval/top8")
    assert [p.step for p in retrieval] == [2, 4]
    assert (retrieval[0].width, retrieval[0].height) == grid_size(8, 8, thumb=64, caption=2 * CAPTION_LINE + 2)
    projector = os.path.join(cfg.output_dir, "projector_config.pbtxt")
    assert os.path.exists(projector) and "test_embeddings" in open(projector).read()
    share = acc.Scalars("attention/same_class_layer0")[-1].value
    entropy = acc.Scalars("attention/entropy_layer0")[-1].value
    uniform_share = acc.Scalars("attention/same_class_layer0_uniform")[-1].value
    uniform_entropy = acc.Scalars("attention/entropy_layer0_uniform")[-1].value
    if topology == "same_class":  # every edge joins a class: all attention over nodes stays in the class
        assert share == pytest.approx(1.0, abs=1e-6) and uniform_share == pytest.approx(1.0)
    else:  # the fixed batch of the val split: 2 classes x 4 samples, uniform attention gives 4/8 = 0.5
        assert 0.0 < share < 1.0 and uniform_share == pytest.approx(0.5)
        assert 0.0 < entropy <= uniform_entropy + 1e-6 and uniform_entropy == pytest.approx(math.log(8))
    # metrics.json keeps the selected model's attention on the same batch, the last values logged
    # (2 iterations an epoch: the selected epoch e was logged at step 2e).
    record = json.load(open(os.path.join(cfg.output_dir, "metrics.json")))["attention"][0]
    logged = {name: {e.step: e.value for e in acc.Scalars(f"attention/{name}_layer0")}
              for name in ("same_class", "entropy", "logit_std")}
    step = 2 * json.load(open(os.path.join(cfg.output_dir, "metrics.json")))["selection"]["best_epoch"]
    for name in ("same_class", "entropy", "logit_std"):
        assert record[name] == pytest.approx(logged[name][step], rel=1e-5, abs=1e-7), name
    assert record["logit_std"] >= 0.0 and set(record) >= {"entropy_uniform", "same_class_uniform", "mass_on_nodes"}


def test_without_a_terminal_the_run_prints_a_summary_and_progress_lines(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tiny_run import TINY

    out = str(tmp_path / "run")
    r = subprocess.run([sys.executable, os.path.join(root, "tools", "train.py"), *TINY, "train.epochs", "1",
                        "train.iters_per_epoch", "4", "train.log_every", "2", "output_dir", out],
                       capture_output=True, text=True, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    err = r.stderr  # logs go to stderr; stdout stays clean
    for fragment in ("training digits into", "device cpu", "data: train", "batch 3 x 4 = 12, 4 iterations an epoch",
                     "model: resnet18 backbone", "MPN 1 layer(s) x 2 heads",
                     "epoch 1/1 iter 2/4 | loss", "it/s | ETA epoch", "epoch 1/1 iter 4/4",
                     "epoch time", "done in"):
        assert fragment in err, fragment
