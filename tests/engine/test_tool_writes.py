"""What the tools write, as a user meets it (issue 22): never a file the user did not ask to
replace, never one of the command's inputs, never a run's own files; a folder that cannot be
written, a folder in place of a file or a full disk is one line naming the path and the cause.

Each case runs the tool's ``main`` as the command line does (``ibc_geo.cli.common.run``: the exit
code, the message on stderr) and compares the SHA-256 of what the user had before and after.
"""
import errno
import hashlib
import importlib
import os

import numpy as np
import pytest

from tiny_run import TINY


def cli(tool, *argv):
    from ibc_geo.cli.common import run

    return run(importlib.import_module(f"ibc_geo.cli.{tool}").main, [str(a) for a in argv])


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def hashes(folder):
    """SHA-256 of every file below ``folder``, by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = sha(path)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-epoch tiny run, its gallery ``G.npz`` (the test split) and saved ``emb.npy`` / ``lab.npy``
    inside the run folder, as a user may put them."""
    from ibc_geo.config import load_config
    from ibc_geo.engine import train

    out = tmp_path_factory.mktemp("run")
    train(load_config(None, TINY + ["train.epochs", "1", "output_dir", str(out)]))
    rng = np.random.default_rng(0)
    np.save(out / "emb.npy", rng.standard_normal((40, 8)).astype(np.float32))
    np.save(out / "lab.npy", np.arange(40) % 5)
    gallery = tmp_path_factory.mktemp("gallery") / "G.npz"
    assert cli("embed", "--cfg", out / "config.yaml", "--ckpt", out / "checkpoints" / "best.pt", "--split", "test",
               "--out", gallery) == 0
    return {"root": out, "cfg": out / "config.yaml", "best": out / "checkpoints" / "best.pt",
            "last": out / "checkpoints" / "last.pt", "metrics": out / "metrics.json", "gallery": gallery}


@pytest.fixture
def untouched(run_dir):
    """Asserts, after the test, that nothing in the run folder or the gallery changed."""
    before = hashes(run_dir["root"]), sha(run_dir["gallery"])
    yield
    assert (hashes(run_dir["root"]), sha(run_dir["gallery"])) == before


# 1. --out, --save-index, --grid of search; --out of embed and export ------------------------------

def test_search_save_index_onto_its_gallery_is_refused(run_dir, untouched, capsys):
    g = run_dir["gallery"]
    assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "3", "--save-index", g) == 2
    err = capsys.readouterr().err
    assert f"refusing to write {g}: it is an input of this command" in err and "Traceback" not in err
    assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "3", "--save-index", g, "--overwrite") == 2


@pytest.mark.parametrize("flag", ["--out", "--grid", "--save-index"])
def test_search_never_replaces_an_existing_file_without_overwrite(run_dir, tmp_path, capsys, flag):
    target = tmp_path / "mine.bin"
    target.write_bytes(b"the user's file")
    before = sha(target)
    g = run_dir["gallery"]
    assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "3", flag, target) == 2
    err = capsys.readouterr().err
    assert f"refusing to replace {target}: it exists (pass --overwrite to replace it)" in err
    assert sha(target) == before
    assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "3", flag, target, "--overwrite") == 0
    assert sha(target) != before


def test_embed_onto_a_checkpoint_is_refused(run_dir, untouched, capsys):
    best = run_dir["best"]
    for extra in ([], ["--overwrite"]):
        assert cli("embed", "--cfg", run_dir["cfg"], "--ckpt", best, "--split", "test", "--out", best, *extra) == 2
        err = capsys.readouterr().err
        assert f"refusing to write {best}" in err and "Traceback" not in err


def test_export_onto_the_resumable_checkpoint_is_refused(run_dir, untouched, capsys):
    last = run_dir["last"]
    assert cli("export", "--cfg", run_dir["cfg"], "--ckpt", last, "--format", "torchscript", "--out", last,
               "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"refusing to write {last}" in err and "Traceback" not in err


@pytest.mark.parametrize("tool, name, extra", [
    ("embed", "E.npz", ["--split", "test"]),
    ("export", "model.pt", ["--format", "torchscript"]),
])
def test_embed_and_export_never_replace_an_existing_file_without_overwrite(run_dir, tmp_path, capsys, tool, name,
                                                                           extra):
    target = tmp_path / name
    target.write_bytes(b"an older file of the user's")
    before = sha(target)
    args = ["--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], *extra, "--out", target]
    assert cli(tool, *args) == 2
    assert f"refusing to replace {target}" in capsys.readouterr().err and sha(target) == before
    assert not (tmp_path / f"{name}.json").exists()  # nothing written beside it either
    assert cli(tool, *args, "--overwrite") == 0 and sha(target) != before



# 2. evaluation never writes a run's metrics.json ---------------------------------------------------

def test_eval_of_embeddings_in_a_run_folder_keeps_its_metrics_json(run_dir, capsys):
    root = run_dir["root"]
    before = sha(run_dir["metrics"])
    try:
        assert cli("eval", "--embeddings", root / "emb.npy", "--labels", root / "lab.npy", "--recall-k", "1") == 0
        assert sha(run_dir["metrics"]) == before
        assert (root / "metrics_emb.json").is_file() and f"wrote {root / 'metrics_emb.json'}" in capsys.readouterr().out
        # again: the record exists now, and is replaced only when asked
        assert cli("eval", "--embeddings", root / "emb.npy", "--labels", root / "lab.npy", "--recall-k", "1") == 2
        assert f"refusing to replace {root / 'metrics_emb.json'}" in capsys.readouterr().err
    finally:
        (root / "metrics_emb.json").unlink(missing_ok=True)


def test_eval_out_onto_the_runs_metrics_json_is_refused_before_evaluating(run_dir, untouched, capsys):
    args = ["--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--out", run_dir["metrics"]]
    for extra in ([], ["--overwrite"]):
        assert cli("eval", *args, *extra) == 2
        captured = capsys.readouterr()
        assert f"refusing to write {run_dir['metrics']}" in captured.err
        assert "recall@1" not in captured.out  # refused before any metric was computed


def test_eval_of_a_copied_run_writes_beside_the_given_config(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir["root"], copy)
    original = hashes(run_dir["root"])
    assert cli("eval", "--cfg", copy / "config.yaml", "--ckpt", copy / "checkpoints" / "best.pt") == 0
    assert (copy / "metrics_test.json").is_file()
    assert hashes(run_dir["root"]) == original


# 9. read-only / forbidden output locations ---------------------------------------------------------

FORBIDDEN = "/sys/ibc_geo_test_output.json"  # sysfs: creating a file there is refused, even for root


@pytest.fixture
def forbidden():
    if os.access(os.path.dirname(FORBIDDEN), os.W_OK) and not os.path.exists(FORBIDDEN):
        try:
            open(FORBIDDEN, "w").close()
        except OSError:
            return FORBIDDEN
        os.remove(FORBIDDEN)
        pytest.skip("/sys is writable here")
    return FORBIDDEN


@pytest.mark.parametrize("tool", ["eval", "embed", "search", "export"])
def test_an_unwritable_output_folder_is_one_line_before_the_work(run_dir, untouched, forbidden, capsys, tool):
    args = {
        "eval": ["--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--out", forbidden],
        "embed": ["--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--split", "test", "--out", forbidden],
        "search": ["--gallery", run_dir["gallery"], "--query-ids", "0", "--k", "2", "--out", forbidden],
        "export": ["--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--format", "torchscript", "--out", forbidden],
    }[tool]
    assert cli(tool, *args) == 2
    captured = capsys.readouterr()
    assert f"error: cannot write {forbidden}: permission denied" in captured.err
    assert "Traceback" not in captured.err and "recall@1" not in captured.out and "query" not in captured.out


def test_a_read_only_file_system_names_the_path_and_the_cause(run_dir, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "r.json"
    assert cli("search", "--gallery", run_dir["gallery"], "--query-ids", "0", "--k", "2", "--out", out) == 2
    assert f"error: cannot write {out}: read-only file system" in capsys.readouterr().err


# 10. a folder where the output file should be --------------------------------------------------------

def test_embed_out_an_existing_folder_is_refused_before_the_work(run_dir, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    assert cli("embed", "--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--split", "test", "--out", folder) == 2
    err = capsys.readouterr().err
    assert f"cannot write {folder}: it is a folder, not a file" in err and "IsADirectoryError" not in err
    assert os.listdir(folder) == []


# 11. a full disk ------------------------------------------------------------------------------------

def test_embed_on_a_full_disk_is_one_line_and_leaves_no_temporary_folder(run_dir, tmp_path, capsys, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "E.npz"
    assert cli("embed", "--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--split", "test", "--out", out) == 2
    assert f"error: cannot write {out}: no space left on device" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no hidden temporary folder, no partial file


def test_a_checkpoint_on_a_full_disk_says_so(tmp_path, monkeypatch):
    # torch.save reports a full disk as "RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos"
    import shutil

    import torch

    from ibc_geo.engine.checkpoint import save_checkpoint
    from ibc_geo.utils.io import OutputError

    def enforce_fail(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", enforce_fail)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    path = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(OutputError, match=f"cannot write {path}: no space left on device"):
        save_checkpoint({"model": {}}, path)
    assert os.listdir(tmp_path / "checkpoints") == []


# 12. paths stored by embed --images -----------------------------------------------------------------

def test_embed_images_stores_absolute_paths_and_follows_no_link_loop(run_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from ibc_geo.retrieval.gallery import load_gallery

    images = tmp_path / "loop"
    (images / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(images / "a" / "x.jpg")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(images / "y.jpg")
    os.symlink("..", images / "a" / "back")  # a loop: loop/a/back -> loop
    os.symlink("y.jpg", images / "z.jpg")  # the same image under a second name
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "E.npz"
    assert cli("embed", "--cfg", run_dir["cfg"], "--ckpt", run_dir["best"], "--images", "loop", "--out", out) == 0
    gallery = load_gallery(str(out))
    assert len(gallery) == 2
    assert all(os.path.isabs(p) for p in gallery.paths)
    assert sorted(os.path.realpath(p) for p in gallery.paths) == sorted(
        [os.path.realpath(images / "a" / "x.jpg"), os.path.realpath(images / "y.jpg")])


def test_search_grid_onto_a_gallery_image_is_refused_even_with_overwrite(run_dir, tmp_path, capsys):
    """The gallery's images are inputs of --grid: their stored paths are never written."""
    g = run_dir["gallery"]
    with np.load(g) as data:
        image = str(data["paths"][2])
    assert cli("search", "--gallery", g, "--query-ids", "0", "--k", "3", "--grid", image, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"refusing to write {image}: it is an input of this command" in err and "Traceback" not in err
