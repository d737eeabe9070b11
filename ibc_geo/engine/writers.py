"""What a training run writes besides its checkpoints, in one object (after detectron2's
``default_writers``): log lines (console and ``log.txt``), TensorBoard, ``metrics.json``.

Only the main process writes (rank 0 under ``torch.distributed``); on the other ranks every
method is a no-op, so the trainer calls them unconditionally. Models and metric functions return
values and never touch a writer.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Mapping, Optional

from ibc_geo.utils.io import atomic_write_json, output_error
from ibc_geo.utils.run_dir import RunDir
from ibc_geo.utils.runtime import is_main_process

logger = logging.getLogger("ibc_geo")


class RunWriters:
    """The writers of the run folder ``run_dir``; ``main_process`` defaults to rank 0."""

    def __init__(self, run_dir: RunDir, main_process: Optional[bool] = None) -> None:
        self.run_dir = run_dir
        self.enabled = is_main_process() if main_process is None else bool(main_process)
        self._tensorboard = None

    def __enter__(self) -> "RunWriters":
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir.root))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ---------------------------------------------------------------------------- log lines
    def line(self, text: str) -> None:
        """One line to the console (the ``ibc_geo`` logger) and to ``log.txt``, there with its date
        and time."""
        if not self.enabled:
            return
        logger.info(text)
        try:
            with open(self.run_dir.log, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {text}\n")
        except OSError as e:  # a full disk, a folder turned read-only: one line naming the file
            raise output_error(self.run_dir.log, e) from None

    # ---------------------------------------------------------------------------- TensorBoard
    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tensorboard is not None:
            self._tensorboard.add_scalar(tag, value, step)

    def image(self, tag: str, image: Any, step: int, dataformats: str = "CHW") -> None:
        if self._tensorboard is not None:
            self._tensorboard.add_image(tag, image, step, dataformats=dataformats)

    def embedding(self, embeddings: Any, labels: Any, thumbnails: Any, step: int, tag: str) -> None:
        """TensorBoard's embedding projector: points with their labels and image thumbnails."""
        if self._tensorboard is not None:
            self._tensorboard.add_embedding(embeddings, metadata=labels, label_img=thumbnails,
                                            global_step=step, tag=tag)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure (closed afterwards, also where nothing is written)."""
        if self._tensorboard is not None:
            self._tensorboard.add_figure(tag, figure, step, close=True)
        else:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        if self._tensorboard is not None:
            self._tensorboard.add_hparams(dict(hparams), dict(metrics), run_name="hparams")

    # ---------------------------------------------------------------------------- metrics.json
    def metrics(self, record: Mapping[str, Any]) -> None:
        """The run's final record, ``metrics.json`` (atomically: its presence marks the run finished)."""
        if self.enabled:
            atomic_write_json(self.run_dir.metrics, dict(record))
