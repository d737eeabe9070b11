"""Devices, AMP dtypes, processes, seeding and the RNG states a checkpoint carries for an exact resume."""
from __future__ import annotations

import random
import sys
from typing import Optional, Union

import numpy as np
import torch

#: ``train.amp_dtype`` names -> torch dtypes (the one mapping; training and extraction use it).
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(amp_dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """A name of :data:`AMP_DTYPES` or a torch dtype -> the torch dtype; ``None`` stays ``None`` (AMP off)."""
    if amp_dtype is None or isinstance(amp_dtype, torch.dtype):
        return amp_dtype
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)} or a torch.dtype, got {amp_dtype!r}")
    return AMP_DTYPES[amp_dtype]


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) of the initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that writes a run's files."""
    return distributed_rank()[0] == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device; use `device cpu` or `auto`")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's: resumable with other GPU counts
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def progress_enabled() -> bool:
    """tqdm bars only on a terminal (logs stay clean in CI and under nohup), and only on rank 0."""
    return sys.stderr.isatty() and is_main_process()
