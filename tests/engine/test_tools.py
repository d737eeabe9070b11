"""tools/train.py and tools/eval.py as a user runs them."""
import json
import os
import subprocess
import sys

from tiny_run import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_train_then_eval_checkpoint_and_init(tmp_path):
    out = str(tmp_path / "run")
    args = ["--cfg", "configs/demo.yaml", *TINY, "train.epochs", "1", "output_dir", out]
    r = tool("train.py", *args)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "metrics.json")) as f:
        trained = json.load(f)["test"]

    r = tool("eval.py", *args, "--ckpt", os.path.join(out, "checkpoints", "best.pt"),
             "--out", str(tmp_path / "eval.json"))
    assert r.returncode == 0, r.stderr
    assert "recall@1" in r.stdout
    with open(tmp_path / "eval.json") as f:
        evaluated = json.load(f)
    assert evaluated["recall@1"] == trained["recall@1"] and evaluated["map@r"] == trained["map@r"]
    assert evaluated["dataset"] == "digits" and evaluated["split"] == "test"

    r = tool("eval.py", *args, "--init", "--out", str(tmp_path / "init.json"))
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "init.json") as f:
        assert 0.0 <= json.load(f)["recall@1"] <= 1.0

    # by default the evaluation lands beside the run's own metrics.json, never over it
    r = tool("eval.py", *args, "--ckpt", os.path.join(out, "checkpoints", "best.pt"))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "metrics_test.json")) as f:
        assert json.load(f)["recall@1"] == trained["recall@1"]
    with open(os.path.join(out, "metrics.json")) as f:
        assert "selection" in json.load(f)

    # a finished run is not overwritten by accident
    r = tool("train.py", *args)
    assert r.returncode == 2 and "train.resume" in r.stderr and "Traceback" not in r.stderr


def test_eval_checkpoint_of_another_architecture_is_a_message(tmp_path):
    out = str(tmp_path / "run")
    base = ["--cfg", "configs/demo.yaml", *TINY, "train.epochs", "1", "output_dir", out]
    assert tool("train.py", *base).returncode == 0
    r = tool("eval.py", *base, "model.embedding_dim", "64", "--ckpt", os.path.join(out, "checkpoints", "last.pt"))
    assert r.returncode == 2 and "model.embedding_dim" in r.stderr and "Traceback" not in r.stderr


def test_eval_default_output_never_marks_a_run_finished(tmp_path):
    from ibc_geo.cli.eval import default_checkpoint_output

    empty = tmp_path / "fresh"  # even where no run is yet, evaluation writes its own record
    assert default_checkpoint_output(str(empty), "test") == str(empty / "metrics_test.json")
    killed = tmp_path / "killed"  # an interrupted run: checkpoints, no metrics.json yet
    (killed / "checkpoints").mkdir(parents=True)
    assert default_checkpoint_output(str(killed), "val") == str(killed / "metrics_val.json")
