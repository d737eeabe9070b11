"""Overrides for a training run small enough for a test."""

# A run small enough for a test: digits at 32 px, ResNet-18 from scratch, two iterations an epoch.
TINY = [
    "data.name", "digits", "data.image_size", "32", "data.resize_size", "32", "data.workers", "0",
    "data.random_erasing", "0.0", "data.val_classes", "2",
    "sampler.classes_per_batch", "3", "sampler.samples_per_class", "4",
    "model.backbone", "resnet18", "model.pretrained", "none", "model.embedding_dim", "32",
    "mpn.num_heads", "2", "train.epochs", "2", "train.iters_per_epoch", "2", "train.lr", "1e-3",
    "train.lr_drop_epochs", "[]", "train.log_every", "1", "eval.batch_size", "256", "eval.kmeans_iters", "5",
    "eval.selection", "val",
]


def train_killed_in_epoch(cfg, epoch, monkeypatch):
    """Train ``cfg`` until ``epoch`` begins, then stop it as a kill would (KeyboardInterrupt)."""
    import pytest

    from ibc_geo.engine import train
    from ibc_geo.engine import trainer as trainer_module

    original = trainer_module.Trainer._train_epoch

    def die(self, e, writer):
        if e == epoch:
            raise KeyboardInterrupt("killed")
        return original(self, e, writer)

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", original)
