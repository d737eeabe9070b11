"""Compare a state dict with a module's own, key by key."""
from __future__ import annotations

from typing import Optional

import torch


def _show(keys: list[str], most: int = 8) -> str:
    return ", ".join(keys[:most]) + (f", ... ({len(keys)} in all)" if len(keys) > most else "")


def state_dict_mismatch(module: torch.nn.Module, state: dict) -> Optional[str]:
    """``None`` when ``state`` loads strictly into ``module``; else the missing, unexpected and
    mis-shaped keys, in words."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if not (missing or unexpected or shapes):
        return None
    return (f"missing keys [{_show(missing)}]; unexpected keys [{_show(unexpected)}]; "
            f"mismatched shapes [{_show(shapes)}]")
