"""Decoding: high-bit-depth and float images keep their contrast (PIL's convert("RGB") clips them)."""
import os

import numpy as np
import pytest
from PIL import Image

from ibc_geo.data import build_dataset, build_transforms
from ibc_geo.data.check import check_dataset
from ibc_geo.data.image import to_rgb
from ibc_geo.testing import fixtures


def gradient16(h=40, w=50):
    return (np.arange(h * w).reshape(h, w) * (65535 // (h * w - 1))).astype(np.uint16)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    a = gradient16()
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)  # a real 16-bit grey PNG
    with Image.open(path) as img:
        assert img.mode.startswith("I")
        clipped = np.asarray(img.convert("RGB"), dtype=np.float64).mean()
        rgb = to_rgb(img)
    got = np.asarray(rgb, dtype=np.float64)
    assert rgb.mode == "RGB" and got.shape == (40, 50, 3)
    expected = a.astype(np.float64) * 255 / 65535
    assert abs(got.mean() - expected.mean()) < 0.5 and np.abs(got[..., 0] - expected).max() <= 0.5 + 1e-9
    assert clipped > 250  # what PIL alone does: nearly white


@pytest.mark.parametrize("values, scale", [(np.linspace(0, 1, 600), 1.0), (np.linspace(0, 1000, 600), 1000.0)])
def test_float_images(values, scale):
    img = Image.fromarray(values.reshape(20, 30).astype(np.float32), mode="F")
    got = np.asarray(to_rgb(img), dtype=np.float64)[..., 1]
    assert np.abs(got - np.rint(values.reshape(20, 30) * 255 / scale)).max() <= 1


def test_32_bit_integer_mode_with_16_bit_values():
    a = gradient16().astype(np.int32)
    got = np.asarray(to_rgb(Image.fromarray(a, mode="I")), dtype=np.float64)[..., 2]
    assert abs(got.mean() - (a * 255 / 65535).mean()) < 0.5


def test_dataset_and_checker_read_a_16_bit_folder(tmp_path):
    root = fixtures.make_imagefolder(str(tmp_path), num_classes=4, images_per_class=3)
    a = gradient16(32, 32)
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".jpg"):
                Image.fromarray(a).save(os.path.join(dirpath, name[:-4] + ".png"))
                os.remove(os.path.join(dirpath, name))
    cfg = fixtures.fixture_config("imagefolder", root)
    ds = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    img = ds.load_image(0)
    assert abs(np.asarray(img, dtype=np.float64).mean() - (a.astype(np.float64) * 255 / 65535).mean()) < 0.5
    assert check_dataset(cfg, expected_counts=False).ok
