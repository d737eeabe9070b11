"""The test-time embedder (backbone + L2 normalisation) as TorchScript or ONNX, checked on export.

The exported model maps a float32 ``[B, 3, S, S]`` batch, already preprocessed (resize, centre
crop, RGB / 255, normalised by ``mean`` / ``std``: see :func:`~ibc_geo.retrieval.embed.preprocessing`),
to ``[B, D]`` L2-normalised embeddings, any batch size. ``<file>.json`` beside it says so in
numbers (input name and size, preprocessing, embedding size, which checkpoint and config, the
hashes, and the check). The check runs the exported file (TorchScript through ``torch.jit.load``,
ONNX through onnxruntime when installed: ``pip install -e ".[export]"``) on a fixed batch of
images of two batch sizes and requires the embeddings to equal the PyTorch model's within
:data:`TOLERANCE`; otherwise :class:`~ibc_geo.retrieval.errors.ExportCheckError` and nothing is written.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ibc_geo.retrieval.errors import ExportCheckError
from ibc_geo.utils.io import atomic_write, atomic_write_json, check_output

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-5
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
ONNX_OPSET = 17


class NormalizedEmbedder(nn.Module):
    """``images -> F.normalize(backbone.embed(images))``: what retrieval compares (METHOD.md §2)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.embed(images).float(), dim=1)


def check_batch(cfg, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of preprocessed inputs: uniform RGB in [0, 1], normalised by ``data.mean``/``std``."""
    g = torch.Generator().manual_seed(seed)
    size = int(cfg.data.image_size)
    x = torch.rand(batch_size, 3, size, size, generator=g)
    mean = torch.tensor([float(v) for v in cfg.data.mean]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in cfg.data.std]).view(1, 3, 1, 1)
    return (x - mean) / std


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _run_torchscript(path: str, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 deprecates TorchScript; it still loads
        module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return module(x).numpy()


def _run_onnx(path: str, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def _write_torchscript(embedder: nn.Module, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        traced = torch.jit.trace(embedder, example, check_trace=False)
        torch.jit.save(traced, path)


def _write_onnx(embedder: nn.Module, example: torch.Tensor, path: str) -> None:
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
        try:  # the TorchScript-based exporter needs nothing but torch
            torch.onnx.export(embedder, (example,), path, dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(embedder, (example,), path, **kwargs)


def export_embedder(model: nn.Module, cfg, fmt: str, out: str, meta: Optional[dict] = None,
                    batch_sizes=(2, 3), overwrite: bool = True) -> dict:
    """Export ``model``'s backbone embedder to ``out`` in ``fmt`` (``torchscript`` or ``onnx``),
    check it, and write ``out + ".json"``. Returns that record.

    The check compares the exported file's embeddings of :func:`check_batch` (each of
    ``batch_sizes``; the first is the tracing example) with ``model``'s own; ONNX is only checked
    when onnxruntime is installed (the record says ``"checked": false`` otherwise). Both files go
    through :func:`~ibc_geo.utils.io.atomic_write`: existing ones are refused unless ``overwrite``.
    """
    from ibc_geo.retrieval.embed import preprocessing

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    embedder = NormalizedEmbedder(model.backbone).cpu().eval()
    example = check_batch(cfg, batch_sizes[0])
    out = os.fspath(out)
    check_output(out + ".json", overwrite=overwrite)
    record: dict = {}

    def write_and_check(tmp: str) -> None:
        with torch.no_grad():
            (_write_torchscript if fmt == "torchscript" else _write_onnx)(embedder, example, tmp)
        checked = fmt == "torchscript" or onnxruntime_available()
        max_diff = None
        if checked:
            run = _run_torchscript if fmt == "torchscript" else _run_onnx
            diffs = []
            for b in batch_sizes:
                x = check_batch(cfg, b, seed=b)
                with torch.no_grad():
                    want = embedder(x).numpy()
                got = run(tmp, x)
                if got.shape != want.shape:
                    raise ExportCheckError(f"the exported {fmt} model gives embeddings of shape {got.shape} for a batch "
                                           f"of {b}, the PyTorch model {want.shape}; nothing written to {out}")
                diffs.append(float(np.abs(got - want).max()))
            max_diff = max(diffs)
            if not max_diff <= TOLERANCE:
                raise ExportCheckError(f"the exported {fmt} model's embeddings differ from the PyTorch model's by up to "
                                       f"{max_diff:.3g} (> {TOLERANCE:g}); nothing written to {out}")
        size = int(cfg.data.image_size)
        record.update({
            "format": fmt,
            "file": os.path.basename(out),
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                      "layout": "NCHW", "color": "RGB"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", int(cfg.model.embedding_dim)], "dtype": "float32",
                       "l2_normalized": True, "similarity": "cosine = inner product"},
            "preprocessing": preprocessing(cfg),
            "embedding_dim": int(cfg.model.embedding_dim),
            "backbone": str(cfg.model.backbone),
            "check": {"checked": checked, "max_abs_diff": max_diff, "tolerance": TOLERANCE,
                      "batch_sizes": list(batch_sizes),
                      "runtime": ("torch.jit.load" if fmt == "torchscript" else
                                  "onnxruntime" if checked else "none: onnxruntime is not installed")},
            "torch": torch.__version__,
        })
        if fmt == "onnx":
            record["opset"] = ONNX_OPSET
        record.update(meta or {})

    atomic_write(out, write_and_check, overwrite=overwrite)
    atomic_write_json(out + ".json", record, overwrite=overwrite)
    return record
