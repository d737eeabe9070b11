"""tools/embed.py -> tools/search.py -> tools/export.py on a tiny trained run, as a user runs them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from retrieval_util import ROOT, cli


def load_json(path):
    with open(path) as f:
        return json.load(f)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_split_embeddings_are_evaluations_and_search_agrees_with_knn(tiny_run, tmp_path, capsys):
    """--split val embeds exactly what evaluation extracts; each member's nearest other items are
    evaluation's kNN, exactly (indices and similarities)."""
    import torch

    from ibc_geo.data import build_dataset, build_eval_loader, build_transforms
    from ibc_geo.engine.checkpoint import load_checkpoint
    from ibc_geo.engine.evaluator import model_from_checkpoint
    from ibc_geo.evaluation import extract_embeddings
    from ibc_geo.evaluation.knn import knn_search

    out = tmp_path / "val.npz"
    assert cli("embed", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--split", "val", "--out", out) == 0
    z = np.load(out)
    cfg = tiny_run["config"]
    model = model_from_checkpoint(cfg, load_checkpoint(tiny_run["ckpt"]), tiny_run["ckpt"], "val")
    dataset = build_dataset(cfg, "val", build_transforms(cfg, train=False))
    want, labels = extract_embeddings(model, build_eval_loader(cfg, dataset), torch.device("cpu"))
    assert z["embeddings"].dtype == np.float32 and np.array_equal(z["embeddings"], want)
    assert np.array_equal(z["labels"], labels) and list(z["paths"]) == dataset.paths
    assert str(z["source"]) == "split:val" and len(str(z["config_hash"])) == 16

    n, k = len(want), 3
    capsys.readouterr()
    assert cli("search", "--gallery", out, "--query-ids", *range(n), "--k", k, "--out", tmp_path / "r.json") == 0
    result = load_json(tmp_path / "r.json")
    sims, ids = knn_search(want, want, k, exclude_self=True)
    got_ids = np.array([[nb["id"] for nb in q["neighbours"]] for q in result["queries"]])
    got_sims = np.array([[nb["similarity"] for nb in q["neighbours"]] for q in result["queries"]], dtype=np.float32)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_sims, sims)
    assert all(q["id"] == i and i not in [nb["id"] for nb in q["neighbours"]] for i, q in enumerate(result["queries"]))


def test_image_gallery_and_indexes_saved_and_reloaded(gallery, image_folder, tmp_path, capsys):
    z = np.load(gallery)
    assert z["embeddings"].shape == (12, 32)
    assert np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-6)
    assert sorted(set(z["class_names"])) == ["class_000", "class_001", "class_002", "class_003"]
    assert all(z["class_names"][lab] == os.path.basename(os.path.dirname(p)) for p, lab in zip(z["paths"], z["labels"]))

    ids = list(range(12))
    assert cli("search", "--gallery", gallery, "--query-ids", *ids, "--k", 4, "--out", tmp_path / "exact.json") == 0
    exact = load_json(tmp_path / "exact.json")["queries"]
    for factory, params in (("Flat", ""), ("HNSW32", ""), ("IVF2,Flat", "nprobe=2")):
        saved, loaded = tmp_path / f"{factory}.json", tmp_path / f"{factory}.loaded.json"
        index = tmp_path / f"{factory}.index"
        extra = ["--params", params] if params else []
        assert cli("search", "--gallery", gallery, "--query-ids", *ids, "--k", 4, "--index", factory, *extra,
                   "--save-index", index, "--out", saved) == 0
        assert os.path.isfile(index) and load_json(str(index) + ".json")["factory"] == factory
        assert cli("search", "--gallery", gallery, "--query-ids", *ids, "--k", 4, "--load-index", index,
                   "--out", loaded) == 0
        assert load_json(saved)["queries"] == load_json(loaded)["queries"], factory
        # 12 items: every index here finds the exact neighbours
        assert [[nb["id"] for nb in q["neighbours"]] for q in load_json(saved)["queries"]] == \
               [[nb["id"] for nb in q["neighbours"]] for q in exact], factory
    out = capsys.readouterr().out
    assert "query " in out and "class_00" in out


def test_query_images_and_grid(tiny_run, gallery, tmp_path, capsys):
    from ibc_geo.retrieval.grid import GREEN, QUERY, RED, cell_box, grid_size

    z = np.load(gallery)
    queries = [str(z["paths"][0]), str(z["paths"][7])]
    k, thumb = 4, 20  # 3 images a class: the 4th neighbour is of another class
    assert cli("search", "--gallery", gallery, "--query", *queries, "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"],
               "--labels-from-folders", "--k", k, "--grid", tmp_path / "g.png", "--thumb", thumb,
               "--out", tmp_path / "r.json") == 0
    result = load_json(tmp_path / "r.json")["queries"]
    for q, own in zip(result, (0, 7)):  # a gallery image as a query finds itself first
        assert q["neighbours"][0]["id"] == own and q["neighbours"][0]["similarity"] > 0.9999
        assert q["label"] == z["class_names"][z["labels"][own]]
    image = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert image.shape[1::-1] == grid_size(2, k, thumb) == ((k + 1) * (thumb + 8) + (k + 4) * 4, 2 * (thumb + 8) + 3 * 4)
    seen = set()
    for r, q in enumerate(result):
        left, top, _, _ = cell_box(r, 0, thumb)
        assert tuple(image[top + 1, left + 1]) == QUERY
        for j, nb in enumerate(q["neighbours"]):
            match = z["labels"][nb["id"]] == z["labels"][[0, 7][r]]
            left, top, right, bottom = cell_box(r, j + 1, thumb)
            frame = [image[top + 1, left + 1], image[bottom - 2, right - 2], image[top + 1, (left + right) // 2]]
            assert all(tuple(p) == (GREEN if match else RED) for p in frame)
            assert nb["correct"] == bool(match)
            seen.add(bool(match))
    assert seen == {True, False}  # both colours were checked


def test_chunked_embedding_equals_unchunked(tiny_run, image_folder, tmp_path):
    from ibc_geo.config import load_config
    from ibc_geo.retrieval.embed import embed_image_files, load_embedder
    from ibc_geo.retrieval.images import list_images

    cfg = load_config(tiny_run["cfg"], ["eval.batch_size", "4"])
    embedder = load_embedder(cfg, tiny_run["ckpt"])
    paths = list_images(image_folder)
    one = embed_image_files(embedder, paths, str(tmp_path / "one.npz"), "images", True, chunk_size=1000)
    many = embed_image_files(embedder, paths, str(tmp_path / "many.npz"), "images", True, chunk_size=5)
    assert one["chunks"] == 1 and many["chunks"] == 2
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "many.npz")
    assert a.files == b.files
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    assert sorted(os.listdir(tmp_path)) == ["many.npz", "one.npz"]  # no temporary files left


def _preprocessed(cfg, paths):
    import torch

    from ibc_geo.data import build_transforms
    from ibc_geo.retrieval.images import read_image

    transform = build_transforms(cfg, train=False)
    return torch.stack([transform(read_image(p)) for p in paths])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_equals_the_model(fmt, tiny_run, gallery, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"embedder.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert cli("export", "--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"], "--format", fmt, "--out", out) == 0
    record = load_json(str(out) + ".json")
    cfg = tiny_run["config"]
    assert record["input"]["shape"] == ["batch", 3, 32, 32] and record["preprocessing"]["mean"] == list(cfg.data.mean)
    assert record["preprocessing"]["std"] == list(cfg.data.std) and record["check"]["checked"] is True
    z = np.load(gallery)
    assert record["model_hash"] == str(z["model_hash"])
    x = _preprocessed(cfg, [str(p) for p in z["paths"]])
    if fmt == "torchscript":
        import torch

        with torch.no_grad():
            got = torch.jit.load(str(out)).eval()(x).numpy()
    else:
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert got.shape == z["embeddings"].shape
    assert np.abs(got - z["embeddings"]).max() <= 1e-5


def _assert_refused(code, capsys, *names):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for name in names:
        assert str(name) in err[0], (name, err[0])
    return err[0]


def test_bad_inputs_exit_2_and_write_nothing(tiny_run, gallery, image_folder, tmp_path, capsys):
    from ibc_geo.retrieval.gallery import write_embeddings

    model = ["--cfg", tiny_run["cfg"], "--ckpt", tiny_run["ckpt"]]
    out = tmp_path / "out"
    out.mkdir()
    writes = ["--grid", out / "g.png", "--out", out / "r.json"]
    capsys.readouterr()

    # a missing, and an unreadable, query image
    missing = tmp_path / "nowhere.jpg"
    _assert_refused(cli("search", "--gallery", gallery, "--query", missing, *model, *writes), capsys, missing)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a JPEG")
    _assert_refused(cli("search", "--gallery", gallery, "--query", broken, *model, *writes), capsys, broken)

    # a gallery of another embedding size
    other = tmp_path / "other_size.npz"
    write_embeddings(str(other), np.eye(3, 64, dtype=np.float32), ["a", "b", "c"])
    query = str(np.load(gallery)["paths"][0])
    msg = _assert_refused(cli("search", "--gallery", other, "--query", query, *model, *writes), capsys, other)
    assert "64" in msg and "32" in msg

    # an index of another gallery (same size and dimension, other embeddings)
    z = np.load(gallery)
    shuffled = tmp_path / "shuffled.npz"
    write_embeddings(str(shuffled), z["embeddings"][::-1], list(z["paths"][::-1]))
    index = tmp_path / "shuffled.index"
    assert cli("search", "--gallery", shuffled, "--query-ids", 0, "--k", 2, "--index", "HNSW32",
               "--save-index", index) == 0
    capsys.readouterr()
    _assert_refused(cli("search", "--gallery", gallery, "--query-ids", 0, "--k", 2, "--load-index", index, *writes),
                    capsys, index, gallery)

    # an empty folder, and a folder with an unreadable image
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    _assert_refused(cli("embed", *model, "--images", empty, "--out", out / "e.npz"), capsys, empty)
    bad_folder = tmp_path / "bad_folder"
    bad_folder.mkdir()
    Image.new("RGB", (8, 8)).save(bad_folder / "good.png")
    (bad_folder / "bad.png").write_bytes(b"\x89PNG truncated")
    _assert_refused(cli("embed", *model, "--images", bad_folder, "--out", out / "e.npz"), capsys, bad_folder / "bad.png")

    # a checkpoint from another config: embed and export
    other_cfg = ["model.embedding_dim", "64"]
    msg = _assert_refused(cli("embed", *model, "--images", image_folder, "--out", out / "e.npz", *other_cfg), capsys,
                          tiny_run["ckpt"])
    assert "model.embedding_dim" in msg
    _assert_refused(cli("export", *model, "--format", "torchscript", "--out", out / "m.pt", *other_cfg), capsys,
                    tiny_run["ckpt"])

    # not a gallery file at all
    _assert_refused(cli("search", "--gallery", broken, "--query-ids", 0, *writes), capsys, broken)
    assert files_under(out) == []


def test_search_tool_runs_as_a_script(gallery, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "search.py"), "--gallery", gallery,
                        "--query-ids", "3", "--k", "2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("query ") and len(r.stdout.strip().splitlines()) == 3
