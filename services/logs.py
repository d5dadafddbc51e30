"""Structured logging: one configuration call at start-up, key=value or JSON lines."""

import logging
import sys
from collections.abc import Mapping

import structlog
from structlog.types import EventDict, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class _Fields:
    """A processor adding the same fields to every line (a worker's index)."""

    def __init__(self, fields: Mapping[str, object]) -> None:
        self._fields = dict(fields)

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        for key, value in self._fields.items():
            event.setdefault(key, value)
        return event


def configure(
    level: str = "info", fmt: str = "console", fields: Mapping[str, object] | None = None
) -> None:
    """Route structlog and stdlib logging (grpc, asyncio) to stderr in one format; every
    line carries ``fields`` (on any thread, unlike context variables)."""
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.append(_Fields(fields))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
