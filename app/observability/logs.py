"""Every log record in one shape: a JSON object per line in production, a readable line in
development (METERKIT_LOG_FORMAT: json, text, or auto = json when METERKIT_ENV=production).

The stdlib `logging` with a small formatter of ours (orjson, already a dependency) rather than a
logging library: every module already logs through `logging.getLogger("meterkit...")`, uvicorn
does too, and a formatter on the root handler puts all of it in the same shape.

A record's fields: `ts` (UTC, ISO 8601), `level`, `logger`, `msg`; `request_id` (and `key_id`,
`tenant_id` once known) when written while a request is served; `exc` (the traceback) for an
error; and a request's own line (logger `meterkit.access`) adds `method`, `route`, `operation`,
`operation_name`, `status`, `duration_ms`. Never a key, a secret or a body: the access line is
built from the fields above only, and no meterkit message formats a secret."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from app.observability.context import CURRENT

ACCESS = logging.getLogger("meterkit.access")

# Attributes every LogRecord has: anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_ACCESS_FIELDS = ("method", "route", "operation", "operation_name", "status", "duration_ms")
_ROOT_HANDLER_NAME = "meterkit"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.__dict__.items():
        if name not in _STANDARD and not name.startswith("_"):
            out[name] = value
    if "request_id" not in out:
        info = CURRENT.get()
        if info is not None:
            out["request_id"] = info.request_id
            if info.key_id:
                out["key_id"] = info.key_id
            if info.tenant_id:
                out["tenant_id"] = info.tenant_id
    return out


def _timestamp(created: float) -> str:
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((created - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """Development: `04:03:01 INFO meterkit.access POST /graphql 200 3.1 ms  request_id=...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}  "
        line += record.getMessage()
        fields = _fields(record)
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and v != "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_format(settings: Any) -> str:
    fmt = str(settings.log_format)
    if fmt == "auto":
        return "json" if settings.env == "production" else "text"
    return fmt


def configure(settings: Any) -> None:
    """One handler on the root logger, to stderr, in the chosen format; uvicorn's loggers propagate
    to it (`meterkit serve` gives uvicorn no logging config of its own). Idempotent: a second app in
    the same process replaces the handler instead of adding one."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _ROOT_HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_ROOT_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format(settings) == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    ACCESS.setLevel(logging.INFO if settings.access_log else logging.WARNING)


def access(
    method: str,
    route: str,
    operation: str | None,
    operation_name: str | None,
    status: int,
    duration_ms: float,
    request_id: str,
    key_id: str | None,
    tenant_id: str | None,
) -> None:
    """The request's one line (logger meterkit.access, INFO; 5xx at ERROR)."""
    level = logging.ERROR if status >= 500 else logging.INFO
    if not ACCESS.isEnabledFor(level):
        return
    msg = f"{method} {route}" + (f" {operation}" if operation else "") + f" {status} {duration_ms:.1f} ms"
    extra: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(duration_ms, 3),
        "request_id": request_id,
    }
    if operation:
        extra["operation"] = operation
    if operation_name:
        extra["operation_name"] = operation_name
    if key_id:
        extra["key_id"] = key_id
    if tenant_id:
        extra["tenant_id"] = tenant_id
    ACCESS.log(level, msg, extra=extra)


__all__ = ["ACCESS", "JsonFormatter", "TextFormatter", "access", "configure", "log_format"]
