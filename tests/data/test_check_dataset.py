"""tools/check_dataset.py: summary table, exit codes, missing and truncated images listed."""
import os
import subprocess
import sys

import pytest

from ibc_geo.testing import fixtures
from ibc_geo.cli import run
from ibc_geo.cli.check_dataset import main
from ibc_geo.data.check import check_dataset

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "check_dataset.py")


def test_full_cub_ok_and_missing_file(tmp_path, capsys):
    root = fixtures.make_cub(str(tmp_path), full=True)
    args = ["data.name", "cub", "data.root", root, "data.val_classes", "10"]
    assert main(["--no-decode"] + args) == 0
    out = capsys.readouterr().out
    assert "5864" in out and "5924" in out and "val (held out)" in out and "OK" in out
    victim = os.path.join(root, "images", "050.Species_050", sorted(os.listdir(os.path.join(root, "images", "050.Species_050")))[3])
    os.remove(victim)
    assert main(["--no-decode"] + args) == 1
    assert f"missing image {victim}" in capsys.readouterr().out


def test_truncated_and_empty_images_listed(tmp_path):
    root = fixtures.make_sop(str(tmp_path), num_classes=4, images_per_class=3)
    cfg = fixtures.fixture_config("sop", root)
    report = check_dataset(cfg, expected_counts=False)
    assert report.ok and report.files_checked == 12
    lines = open(os.path.join(root, "Ebay_test.txt")).read().splitlines()
    truncated, empty = (os.path.join(root, lines[i].split()[3]) for i in (2, 3))
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    open(empty, "wb").close()
    report = check_dataset(cfg, expected_counts=False)
    assert not report.ok
    assert [r.unreadable for r in report.rows] == [0, 2]
    text = "\n".join(report.problems)
    assert f"unreadable image {truncated}" in text and f"unreadable image {empty} (empty file)" in text
    assert check_dataset(cfg, decode=False, expected_counts=False).rows[1].unreadable == 1  # only the empty one


def test_subset_counts_flagged_unless_subset(tmp_path):
    root = fixtures.make_inshop(str(tmp_path), num_classes=6)
    cfg = fixtures.fixture_config("inshop", root)
    report = check_dataset(cfg)
    assert any("the complete dataset has 25882" in p for p in report.problems)
    assert [r.split for r in report.rows] == ["train", "test", "query", "gallery"]
    assert check_dataset(cfg, expected_counts=False).ok


def test_cli_exit_codes(tmp_path, capsys):
    # One real process for the entry point; the other exit codes in-process (imports are slow).
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    bad = subprocess.run([sys.executable, TOOL, "data.name", "cub", "data.root", str(tmp_path / "nope"),
                          "eval.selection", "test"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "dataset root (data.root) not found" in bad.stdout
    assert "images.txt" in bad.stdout
    root = fixtures.make_imagefolder(str(tmp_path))
    assert main(["data.name", "imagefolder", "data.root", root, "eval.selection", "test", "data.val_classes", "0"]) == 0
    assert "OK" in capsys.readouterr().out
    code = run(main, ["data.nme", "cub"])  # the CLI layer's one error handler
    assert code == 2 and "data.name" in capsys.readouterr().err
