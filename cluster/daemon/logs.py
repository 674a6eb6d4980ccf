"""The daemon's log lines: one per record on stderr, as ``key=value`` pairs or JSON objects.

``meshlimit node --log-format kv`` (the default) writes ``ts=... level=info
logger=meshlimit.daemon msg="node ready" node=n1``: easy to read and to grep;
``--log-format json`` writes the same fields as one JSON object a line, for log
pipelines (Loki, Elasticsearch, Cloud Logging) that parse JSON. Fields passed with
``extra={...}`` follow the message in both; an exception's traceback goes in ``exc``.
``--log-level`` (``debug``, ``info``, ``warning``, ``error``) sets the threshold of
meshlimit's loggers; other libraries' loggers are left alone.
"""

from __future__ import annotations

import json
import logging
import sys
import time

#: ``--log-format`` choices.
FORMATS = ("kv", "json")
#: ``--log-level`` choices, and their logging levels.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, object]:
    """A record as ordered fields: time, level, logger, message, extras, exception."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    fields: dict[str, object] = {
        "ts": f"{ts}.{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..." key=value ...``: one line per record.

    Values with spaces, quotes or ``=`` are JSON-quoted.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record, self)
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    """The same fields as one JSON object per line; values JSON can't hold become text."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_fields(record, self), default=str, ensure_ascii=False)


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t\\') or not text.isprintable():
        return json.dumps(text)
    return text


def setup_logging(level: int | str = logging.INFO, log_format: str = "kv") -> None:
    """Send meshlimit's loggers to stderr, one line a record, at ``level`` and up."""
    if isinstance(level, str):
        level = LEVELS[level]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    root = logging.getLogger("meshlimit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
