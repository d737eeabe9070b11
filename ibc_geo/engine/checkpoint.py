"""Checkpoints: written atomically (temporary file, then rename), loaded with ``weights_only=True``."""
from __future__ import annotations

import os
import torch

from ibc_geo.utils.errors import UserError
from ibc_geo.config import config_differences  # noqa: F401  (re-exported for the engine)
from ibc_geo.utils.io import atomic_write
from ibc_geo.utils.state import state_dict_mismatch

# Keys that may differ between a checkpoint's config and the config resuming or evaluating it:
# where things live and how fast they run, not what is trained.
RUNTIME_KEYS = (
    "output_dir", "device", "data.root", "data.workers", "train.resume", "train.overwrite",
    "train.epochs", "train.log_every", "eval.batch_size", "eval.chunk_size",
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, or from another architecture or config."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Save ``state`` so that a crash at any moment leaves either the old or the new file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def checkpoint_bytes(model: torch.nn.Module, optimizer_states: int = 2) -> int:
    """About the size of ``last.pt`` plus ``best.pt`` plus one temporary copy: the weights four times
    and ``optimizer_states`` tensors per parameter (RAdam keeps two) twice."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * weights + 2 * optimizer_states * params + (1 << 20)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        what = (f"a {type(state).__name__}" if not isinstance(state, dict)
                else f"a state dict of another kind (keys such as {', '.join(list(map(str, state))[:3])})")
        raise CheckpointError(
            f"{path} is not an ibc_geo checkpoint: it holds {what}; expected a run's checkpoints/best.pt "
            f"or last.pt (a dict with 'model' and 'config'). Backbone weights go to model.pretrained instead")
    return state


def load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` that reports missing, unexpected and mis-shaped keys instead of a trace."""
    problem = state_dict_mismatch(model, state)
    if problem:
        raise CheckpointError(
            f"checkpoint {source} does not fit the configured model (another architecture or config?): {problem}"
        )
    model.load_state_dict(state)
