"""structlog set-up: console for people, JSON lines for machines."""

from __future__ import annotations

import logging
import sys

import structlog

from flowact.schemas.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    """Route structlog and the standard library's logging to stderr in the chosen format."""
    level = getattr(logging, settings.level.upper())
    renderer = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
