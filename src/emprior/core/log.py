"""One logger for every command: to stderr and, when Snakemake gives one, to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str = "emprior", log_file: str | Path | None = None) -> logging.Logger:
    logger = logging.getLogger(name)
    if not getattr(logger, "_emprior_configured", False):
        logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
        logger._emprior_configured = True  # type: ignore[attr-defined]
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in logger.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter(_FORMAT))
            logger.addHandler(fh)
    return logger
