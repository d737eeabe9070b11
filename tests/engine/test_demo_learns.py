"""The demo's promise, on a shortened schedule: training on digits 0-4 makes the backbone a
clearly better retriever of the unseen digits 5-9 than the same network untrained."""
import os

from ibc_geo.config import load_config
from ibc_geo.engine.evaluator import evaluate_initial_model
from ibc_geo.engine.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_training_beats_the_untrained_network(tmp_path):
    # Half the demo's schedule (6 of 12 epochs, no LR drop): about 40 s on 2 CPU cores.
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), [
        "output_dir", str(tmp_path / "demo"), "train.epochs", "6", "train.lr_drop_epochs", "[]",
        "eval.every", "6", "eval.nmi", "false",
    ])
    untrained = evaluate_initial_model(cfg)
    trained = train(cfg)["test"]
    # Measured (seed 0): untrained R@1 0.430, MAP@R 0.110; this half schedule 0.727 / 0.304;
    # the full demo 0.715 / 0.317.
    assert trained["recall@1"] > untrained["recall@1"] + 0.10, (untrained, trained)
    assert trained["map@r"] > untrained["map@r"] + 0.05, (untrained, trained)
