"""Logging set-up: `PARAKEET_LOG_FORMAT=text|json` and `PARAKEET_LOG_LEVEL` for the server's loggers, and in
JSON mode uvicorn's own loggers through the same formatter (python-json-logger), so that every line a worker
writes is one JSON object. Nothing here logs audio or transcript text."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
NEMO_LOGGER = "nemo_logger"  # NeMo's own logger (model loading); it installs its own text handler


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `log_format`: "json" (one object per line: time, level, pid, logger, message and
    the record's extra fields) or "text"."""
    if log_format == "json":
        return JsonFormatter(
            JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "process": "pid", "name": "logger"}
        )
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Send the `parakeet` loggers to stderr in `log_format` at `level`; in JSON mode uvicorn's and NeMo's
    loggers too (in text mode they keep their own formats, as they always printed them). NeMo installs its
    handler when it is imported, after this runs: `parakeet.engine.build.build_engine` calls this again then.
    Idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    names = ("parakeet", *UVICORN_LOGGERS, NEMO_LOGGER) if log_format == "json" else ("parakeet",)
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
    logging.getLogger("parakeet").setLevel(level)
