"""What every tool does around its work: logging to the console, and errors as messages, not traces."""
from __future__ import annotations

import logging
import sys
from typing import Callable


def setup_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr, so that stdout stays clean for ``--print-config`` and tables."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU features at INFO


def user_errors() -> dict:
    """Error types caused by the user's input, mapped to exit codes."""
    from ibc_geo.config import ConfigError
    from ibc_geo.engine import CheckpointError, NonFiniteLossError, RunExistsError
    from ibc_geo.modeling import PretrainedWeightsError

    errors = {ConfigError: 2, RunExistsError: 2, CheckpointError: 2, PretrainedWeightsError: 2,
              FileNotFoundError: 2, NonFiniteLossError: 1}
    try:
        from ibc_geo.data import DatasetError

        errors[DatasetError] = 2
    except ImportError:
        pass
    return errors


def run_tool(main: Callable[[], object]) -> None:
    """Run ``main()``; a user error prints ``error: ...`` and exits with its code (2, or 1 for NaN)."""
    setup_logging()
    errors = user_errors()
    try:
        main()
    except tuple(errors) as e:
        code = next(c for t, c in errors.items() if isinstance(e, t))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(code)
