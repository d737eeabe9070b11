"""The retrieval picture (``tools/search.py --grid``); it lives in :mod:`ibc_geo.engine.retrieval_grid`
so that the trainer's TensorBoard pictures use the same drawing."""
from ibc_geo.engine.retrieval_grid import (  # noqa: F401
    BACKGROUND,
    EMPTY,
    GREEN,
    NEUTRAL,
    QUERY,
    QUERY_GAPS,
    RED,
    cell_box,
    draw_retrieval_grid,
    grid_size,
    thumbnail,
    to_pil,
)
