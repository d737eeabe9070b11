"""Decoded images as the network sees them: 8-bit RGB of the image's real contrast."""
from __future__ import annotations

import numpy as np
from PIL import Image

#: Bit depth of the integer modes PIL gives high-bit-depth images (16-bit PNG and TIFF: ``I;16*``).
_HIGH_BIT_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, rescaling high-bit-depth and float images instead of clipping.

    PIL's ``convert("RGB")`` clips 16-bit (``I;16*``) and 32-bit (``I``) grey values at 255, so a
    16-bit PNG turns white. Here ``I;16*`` is scaled by 255 / 65535; ``I`` by 255 / 65535 when its
    values fit in 16 bits, else by its maximum; ``F`` (float) by 255 when in [0, 1], else by its
    maximum. Other modes (L, P, RGBA, CMYK, ...) go through ``convert("RGB")``.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_BIT_MODES or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = a.max() if a.size else 0.0
        if img.mode in _HIGH_BIT_MODES or (img.mode == "I" and 0 <= a.min() and top <= 65535):
            scale = 65535.0
        elif img.mode == "F" and 0 <= a.min() and top <= 1.0:
            scale = 1.0
        else:
            scale = max(top, 1e-12)
        grey = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")
