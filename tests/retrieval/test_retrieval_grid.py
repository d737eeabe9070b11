"""draw_retrieval_grid: size from k and the thumbnail size, frames green / red exactly where labels match."""
import numpy as np
import pytest
import torch
from PIL import Image

from ibc_geo.retrieval.grid import (EMPTY, GREEN, NEUTRAL, QUERY, RED, cell_box, draw_retrieval_grid, grid_size,
                                    to_pil)


def solid(colour, size=(10, 10)):
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize("q,k,thumb,border,gap", [(1, 1, 8, 2, 3), (3, 5, 16, 4, 4), (2, 7, 33, 0, 0)])
def test_size_follows_from_k_and_thumbnail(q, k, thumb, border, gap):
    picture = draw_retrieval_grid([solid((9, 9, 9))] * q, [[solid((50, 60, 70))] * k] * q, thumb=thumb, border=border,
                                  gap=gap)
    cell = thumb + 2 * border
    assert picture.size == grid_size(q, k, thumb, border, gap) == ((k + 1) * cell + (k + 4) * gap, q * cell + (q + 1) * gap)
    assert picture.mode == "RGB"
    right = cell_box(q - 1, k, thumb, border, gap)
    assert right[2] + gap == picture.size[0] and right[3] + gap == picture.size[1]


def test_frames_are_green_exactly_where_labels_match():
    rng = np.random.default_rng(0)
    q, k, thumb, border = 4, 6, 12, 3
    query_labels = rng.integers(0, 3, q)
    neighbour_labels = rng.integers(0, 3, (q, k))
    correct = neighbour_labels == query_labels[:, None]
    assert correct.any() and (~correct).any()
    picture = np.asarray(draw_retrieval_grid([solid((0, 0, 0))] * q, [[solid((255, 255, 0))] * k] * q, correct,
                                             thumb=thumb, border=border))
    colours = {GREEN: [], RED: []}
    for r in range(q):
        left, top, right, bottom = cell_box(r, 0, thumb, border)
        assert tuple(picture[top, left]) == QUERY and tuple(picture[top + border, left + border]) == (0, 0, 0)
        for j in range(k):
            left, top, right, bottom = cell_box(r, j + 1, thumb, border)
            frame = np.concatenate([picture[top:top + border, left:right].reshape(-1, 3),
                                    picture[bottom - border:bottom, left:right].reshape(-1, 3),
                                    picture[top:bottom, left:left + border].reshape(-1, 3),
                                    picture[top:bottom, right - border:right].reshape(-1, 3)])
            colour = GREEN if correct[r, j] else RED
            assert (frame == colour).all()
            colours[colour].append((r, j))
            inside = picture[top + border:bottom - border, left + border:right - border]
            assert (inside == (255, 255, 0)).all()
    assert sorted(colours[GREEN]) == sorted(map(tuple, np.argwhere(correct)))


def test_no_labels_grey_frames_missing_neighbour_empty_and_array_output():
    picture = draw_retrieval_grid([solid((1, 2, 3))], [[solid((200, 0, 0)), None]], None, thumb=10, border=2, as_array=True)
    assert isinstance(picture, np.ndarray) and picture.dtype == np.uint8 and picture.shape == (14 + 2 * 4, 3 * 14 + 6 * 4, 3)
    left, top, right, bottom = cell_box(0, 1, 10, 2)
    assert tuple(picture[top, left]) == NEUTRAL
    left, top, right, bottom = cell_box(0, 2, 10, 2)
    assert (picture[top:bottom, left:right] == EMPTY).all()


def test_inputs_of_every_kind_and_normalised_tensors():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = np.full((6, 6, 3), (10, 120, 240), np.uint8)
    normalised = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / \
        torch.tensor(std).view(3, 1, 1)
    assert np.abs(np.asarray(to_pil(normalised, mean, std)).astype(int) - rgb).max() <= 1
    assert np.array_equal(np.asarray(to_pil(rgb)), rgb)
    assert np.asarray(to_pil(np.full((4, 4), 7, np.uint8))).shape == (4, 4, 3)
    assert np.array_equal(np.asarray(to_pil(np.moveaxis(rgb, -1, 0))), rgb)  # CHW numpy
    # a wide image keeps its aspect ratio, centred on white
    wide = draw_retrieval_grid([solid((0, 0, 0), (40, 10))], [[rgb]], thumb=20, border=0, gap=0, as_array=True)
    assert tuple(wide[0, 0]) == (255, 255, 255) and tuple(wide[10, 10]) == (0, 0, 0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same number"):
        draw_retrieval_grid([solid(0)] * 2, [[solid(0)], [solid(0), solid(0)]])
    with pytest.raises(ValueError, match=r"\[1, 2\] bool matrix"):
        draw_retrieval_grid([solid(0)], [[solid(0), solid(0)]], correct=[[True]])
    with pytest.raises(ValueError, match="rows of neighbours"):
        draw_retrieval_grid([solid(0)], [])
