"""Using a trained model: embed images into a gallery file, search it, draw what was found, export.

* :mod:`~ibc_geo.retrieval.embed` (``tools/embed.py``): the embeddings of a checkpoint for a
  dataset split, a folder or a list of images, written by chunks into one ``.npz``
  (:mod:`~ibc_geo.retrieval.gallery` describes the file);
* :mod:`~ibc_geo.retrieval.search` (``tools/search.py``): exact or faiss-index k-NN search of a
  gallery, saved and reloaded indexes checked against their gallery;
* :mod:`~ibc_geo.retrieval.grid`: :func:`draw_retrieval_grid`, queries and their neighbours with
  green / red borders (numpy and Pillow only);
* :mod:`~ibc_geo.retrieval.export` (``tools/export.py``): the test-time embedder as TorchScript or
  ONNX, checked against the PyTorch model.

Names are imported lazily, so ``import ibc_geo.retrieval`` costs nothing (no torch, no faiss).
"""
from __future__ import annotations

import importlib

_NAMES = {
    "draw_retrieval_grid": "grid", "grid_size": "grid",
    "Gallery": "gallery", "EmbeddingWriter": "gallery", "load_gallery": "gallery", "write_embeddings": "gallery",
    "config_hash": "gallery",
    "SearchIndex": "search",
    "Embedder": "embed", "load_embedder": "embed", "embed_split": "embed", "embed_image_files": "embed",
    "embed_images": "embed", "preprocessing": "embed", "model_hash": "embed",
    "export_embedder": "export", "NormalizedEmbedder": "export",
    "list_images": "images",
    "RetrievalError": "errors", "ImageReadError": "errors", "EmptyInputError": "errors", "GalleryError": "errors",
    "IndexMismatchError": "errors", "ExportCheckError": "errors",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"ibc_geo.retrieval.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'ibc_geo.retrieval' has no attribute {name!r}")
