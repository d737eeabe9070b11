"""The user errors of the retrieval tools: each names the file and what was expected (exit code 2)."""
from __future__ import annotations

from ibc_geo.utils.errors import UserError


class RetrievalError(UserError, ValueError):
    """Bad input to embedding, search or export: a file that is missing, unreadable or does not fit."""


class ImageReadError(RetrievalError):
    """An image (a query, or one to embed) that is missing or cannot be decoded."""


class EmptyInputError(RetrievalError):
    """A folder or image list without a single image."""


class GalleryError(RetrievalError):
    """An embeddings file that is missing, malformed, or made by another model (other size, other weights)."""


class IndexMismatchError(RetrievalError):
    """A faiss index that is unreadable, was built on another gallery, or cannot be built as asked."""


class ExportCheckError(UserError, RuntimeError):
    """The exported model's embeddings differ from the PyTorch model's beyond the tolerance."""

    exit_code = 1
