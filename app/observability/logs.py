"""Every log record in one shape: a JSON object per line in production, a readable line in
development (METERKIT_LOG_FORMAT: json, text, or auto = json when METERKIT_ENV=production).

The stdlib `logging` with a small formatter of ours (orjson, already a dependency) rather than a
logging library: every module already logs through `logging.getLogger("meterkit...")`, uvicorn
does too, and a formatter on the root handler puts all of it in the same shape.

A record's fields: `ts` (UTC, ISO 8601), `level`, `logger`, `msg`; `request_id` (and `key_id`,
`tenant_id` once known) when written while a request is served; `exc` (the traceback) for an
error; and a request's own line (logger `meterkit.access`) adds `method`, `route`, `operation`,
`operation_name`, `status`, `duration_ms`. Never a key, a secret or a body: the access line is
built from the fields above only, and no meterkit message formats a secret.

The cost on the metered call (bench/observability.py): the thread that logs (the event loop, for
the access line) only builds the record and puts it on a queue; the `Writer` handler's own thread
formats the records and writes them in batches, one write per batch (`writer`). The access line's
record is built directly from a template (`access`), not by `Logger.log`, which looks up the
caller's frame, thread and process for every record."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from app.observability.context import CURRENT

ACCESS = logging.getLogger("meterkit.access")

# Attributes every LogRecord has: anything else on a record came in through `extra=`.
_TEMPLATE = logging.LogRecord("meterkit.access", logging.INFO, "", 0, "", None, None)
_STANDARD = frozenset(vars(_TEMPLATE)) | {"message", "asctime"}
_ROOT_HANDLER_NAME = "meterkit"
# When the logging module was loaded (what relativeCreated counts from), on the time.time() scale.
_LOGGING_STARTED = _TEMPLATE.created - _TEMPLATE.relativeCreated / 1000


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] | None = record.__dict__.get("_meterkit_fields")  # the access line's, ready
    if out is None:
        out = {}
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


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text (one strftime a second)


def _timestamp(created: float) -> str:
    global _second
    whole = int(created)
    second, text = _second  # one tuple, replaced whole: a reader in another thread sees a pair
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((created - whole) * 1000):03d}Z"


def _message(record: logging.LogRecord) -> str:
    # `message`: set by the Writer in the logging thread (its arguments may change after).
    msg = record.__dict__.get("message")
    return record.getMessage() if msg is None else str(msg)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return self.format_bytes(record).decode()

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        data.update(_fields(record))
        if record.exc_text:
            data["exc"] = record.exc_text
        elif record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = record.stack_info
        return orjson.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """Development: `04:03:01 INFO meterkit.access POST /graphql 200 3.1 ms  request_id=...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}  "
        line += _message(record)
        fields = _fields(record)
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and v != "")
        if record.exc_text:
            line += "\n" + record.exc_text
        elif record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        return self.format(record).encode("utf-8", "replace")


class Writer(logging.Handler):
    """The root handler of a server: `handle` (in the thread that logs) fixes what must be read
    there (the message with its arguments, the traceback, the request being served) and puts the
    record on a queue; a thread of its own formats and writes. So the event loop never waits on
    stderr: a slow or stalled reader of the log stream (a full pipe to a collector) costs it
    nothing. Past MAX_QUEUED records waiting, records are dropped, and how many is written once
    the stream takes lines again."""

    MAX_QUEUED = 10_000
    BATCH = 256  # records per write
    LINGER = 0.02  # seconds a write waits for more records after the first

    def __init__(self, stream: TextIO, formatter: JsonFormatter | TextFormatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._format = formatter.format_bytes
        self.stream = stream
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="meterkit-log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe, and the writing thread is the only writer.
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        d = record.__dict__
        try:
            if "_meterkit_fields" not in d:  # the access line has all of this already
                d["message"] = record.getMessage()
                if record.exc_info and not record.exc_text:
                    record.exc_text = self.formatter.formatException(record.exc_info)  # type: ignore[union-attr]
                if "request_id" not in d and (info := CURRENT.get()) is not None:
                    d["request_id"] = info.request_id
                    if info.key_id:
                        d["key_id"] = info.key_id
                    if info.tenant_id:
                        d["tenant_id"] = info.tenant_id
        except Exception:  # noqa: BLE001  (as logging does: a broken record is reported, not raised)
            self.handleError(record)
            return
        if self._queue.qsize() >= self.MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.put(record)

    def flush(self) -> None:
        """Wait (up to 5 s) until every record queued so far is written."""
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait(5)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5)
        super().close()

    def _run(self) -> None:
        q, fmt = self._queue, self._format
        reported = 0
        behind = False
        while True:
            batch = [q.get()]
            if not behind and batch[0] is not None and not isinstance(batch[0], threading.Event):
                # Records that arrive meanwhile join this write. A put wakes this thread only while
                # it waits in get(): woken per record, it took the GIL from the event loop once per
                # request (py-spy: a tenth of the loop's samples at the put, under the LLM proxy's
                # load); now at most once per LINGER.
                time.sleep(self.LINGER)
            while len(batch) < self.BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            behind = len(batch) == self.BATCH  # more waiting: write on without lingering
            lines: list[bytes] = []
            if self.dropped != reported:
                lost, reported = self.dropped - reported, self.dropped
                lines.append(fmt(_dropped(lost)) + b"\n")
            stop = False
            waiting: list[threading.Event] = []
            for item in batch:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    try:
                        lines.append(fmt(item) + b"\n")
                    except Exception:  # noqa: BLE001
                        self.handleError(item)
            if lines:
                self._write(b"".join(lines))
            for event in waiting:
                event.set()
            if stop:
                return

    def _write(self, data: bytes) -> None:
        try:
            raw = getattr(self.stream, "buffer", None)
            if raw is None:
                self.stream.write(data.decode("utf-8", "replace"))
                self.stream.flush()
            else:
                self.stream.flush()  # anything written to the text layer first goes first
                raw.write(data)
                raw.flush()
        except (OSError, ValueError):  # a closed stream: nothing to write to (a record cannot say it)
            pass


def _dropped(count: int) -> logging.LogRecord:
    return logging.LogRecord(
        "meterkit.logs",
        logging.WARNING,
        __file__,
        0,
        "%d log records dropped: the log stream did not keep up",
        (count,),
        None,
    )


def log_format(settings: Any) -> str:
    fmt = str(settings.log_format)
    if fmt == "auto":
        return "json" if settings.env == "production" else "text"
    return fmt


def configure(settings: Any, stream: TextIO | None = None) -> Writer:
    """One handler on the root logger, to stderr (or `stream`), in the chosen format; uvicorn's
    loggers propagate to it (`meterkit serve` gives uvicorn no logging config of its own).
    Idempotent: a second app in the same process replaces the handler instead of adding one."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _ROOT_HANDLER_NAME:
            root.removeHandler(handler)
            handler.close()
    handler = Writer(stream or sys.stderr, JsonFormatter() if log_format(settings) == "json" else TextFormatter())
    handler.set_name(_ROOT_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    ACCESS.setLevel(logging.INFO if settings.access_log else logging.WARNING)
    return handler


_new_record = logging.LogRecord.__new__
_template = vars(_TEMPLATE)


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
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(duration_ms, 3),
        "request_id": request_id,
    }
    if operation:
        fields["operation"] = operation
    if operation_name:
        fields["operation_name"] = operation_name
    if key_id:
        fields["key_id"] = key_id
    if tenant_id:
        fields["tenant_id"] = tenant_id
    msg = f"{method} {route}" + (f" {operation}" if operation else "") + f" {status} {duration_ms:.1f} ms"
    # The record as Logger.log would make it, without its lookups of the caller's frame, thread and
    # process (a third of the line's cost): the template's standard attributes, this line's own.
    record = _new_record(logging.LogRecord)
    d = record.__dict__
    d.update(_template)
    now = time.time()
    d["created"] = now
    d["msecs"] = (now - int(now)) * 1000
    d["relativeCreated"] = (now - _LOGGING_STARTED) * 1000
    d["thread"] = threading.get_ident()
    if level != logging.INFO:
        d["levelno"], d["levelname"] = level, logging.getLevelName(level)
    d["msg"] = d["message"] = msg
    d.update(fields)  # as `extra=` would: each field an attribute (other formatters, caplog)
    d["_meterkit_fields"] = fields
    ACCESS.handle(record)


__all__ = ["ACCESS", "JsonFormatter", "TextFormatter", "Writer", "access", "configure", "log_format"]
