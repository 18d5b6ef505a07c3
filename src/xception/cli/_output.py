"""What the long-running commands share: warnings that do not break progress bars."""

from __future__ import annotations

import logging
import sys


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        tqdm.write(prefix + record.getMessage(), file=sys.stderr)


def setup_logging() -> None:
    """Route the library's messages (information and warnings) to stderr, above any progress bar."""
    logger = logging.getLogger("xception")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False

