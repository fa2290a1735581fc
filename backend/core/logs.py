"""Logging set-up: one line per event, as text or as JSON lines (LOG_FORMAT=json).

Every log record of a process that called :func:`configure` has its credentials masked
(:func:`redact`): a URL's password (``redis://:***@host``) and the values of the secret
settings. It happens when the record is made, so it holds for every handler, ours, RQ's and
gunicorn's alike, and for tracebacks; uncaught exceptions are masked the same way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from urllib.parse import unquote

#: Fields that log calls pass with ``extra=`` and that JSON lines carry as keys of their own.
EVENT_FIELDS = ("job_id", "attempt", "worker", "task", "status")

# The userinfo of a URL: scheme://user:password@ or scheme://token@. The password (or a
# lone token, which Redis and many brokers take as the password) is what gets masked. It runs
# to the last "@" before a host, and may hold "@", ":", quotes and "/" (Azure's access keys are
# pasted with an unencoded "/"). Three bounds keep it linear and off ordinary text:
# - at most 256 characters each for the user and the password: with no bound, each "x://" of
#   a tenant's message scanned to the text's end (64 KB of "a://" took 4 s a log record);
# - the user part (before the first ":") holds no "/", "?", "#" or quote, so an "@" after a
#   URL's path is no userinfo's end (git+https://host/repo.git@v1.2, http://h/a?next=/b@c);
# - a quote in the password is not one that closes a JSON or Python string (followed by
#   ",", ":", "}", "]", ")" or ";"), so the next field's "bob@example.com" stays;
# and what follows the "@" must look like host[:port] ending at "/", "?", "#", whitespace, a
# quote, ",", ";", a closing bracket or the text's end.
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    # (an "@" within the 513 characters a userinfo can span, checked first: 5 times faster)
    r"(?=[^\s@]{0,513}@)(?P<userinfo>[^\s:/?#\"']{0,256}(?::(?:[^\s\"']|[\"'](?![,:}\]);])){0,256})?)"
    r"@(?=(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%]+)(?::[0-9]*)?(?:[/?#\s\"',;)\]}>]|$))"
)
# A secret passed as a parameter: ?password=..., &token=..., REDIS_PASSWORD=..., api_key=...
# A quoted value is masked to its closing quote, any other to the next space, "&" or "#".
_SECRET_PARAMETER = re.compile(
    r"(?i)(?P<key>\b\w*(?:password|passwd|pwd|pass|token|secret|api_?key)=)"
    r"(?P<value>\"[^\"]*\"?|'[^']*'?|[^\s&#]+)"
)
MASK = "***"
#: Settings whose values are secrets: masked wherever they appear in a log line.
SECRET_SETTINGS = (
    "INTERNAL_SERVICE_TOKEN",
    "WEBHOOK_SECRET",
    "HEALTHCHECK_API_KEY",
    "REDIS_PASSWORD",
    "REDIS_SENTINEL_PASSWORD",
)
#: Settings holding URLs whose passwords are masked as values too.
URL_SETTINGS = ("REDIS_URL", "DATABASE_URL")
# Shorter values are not masked as text: "abc" would mask every "abc" in every line (and
# the start-up check refuses secrets that short outside development anyway).
_MIN_MASKED_LENGTH = 8
_secret_values: tuple[str, ...] = ()


def _mask_userinfo(match: re.Match) -> str:
    userinfo = match.group("userinfo")
    if ":" in userinfo:
        return f"{match.group('scheme')}{userinfo.split(':', 1)[0]}:{MASK}@"
    if not userinfo:
        return match.group(0)
    return f"{match.group('scheme')}{MASK}@"


def redact(text: str) -> str:
    """``text`` with credentials masked: ``scheme://user:pw@host`` becomes ``scheme://user:***@host``,
    ``?password=pw`` (and ``token=``, ``secret=``, ``api_key=``... anywhere) becomes
    ``?password=***``, and the values of the secret settings (:func:`remember_secrets`) become
    ``***``."""
    if not isinstance(text, str):
        text = str(text)
    # The known values first: a pattern masks a secret only where it sits as a pattern expects.
    for value in _secret_values:
        if value in text:
            text = text.replace(value, MASK)
    if "@" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _SECRET_PARAMETER.sub(lambda match: f"{match.group('key')}{MASK}", text)


def remember_secrets(settings: dict | None = None) -> None:
    """Mask the values of the secret settings (from ``settings`` and the environment) in logs."""
    from backend.core.secrets_check import url_passwords
    from backend.core.settings import parse_api_keys

    found: set[str] = set()
    sources = [os.environ, settings or {}]
    for source in sources:
        for name in SECRET_SETTINGS:
            value = source.get(name)
            if value:
                found.add(str(value))
        # A URL's password, as written and decoded: a driver's error may quote either, in
        # a form no pattern recognises (a bare "password authentication failed for ...").
        for name in URL_SETTINGS:
            for password in url_passwords(source.get(name)):
                found.update({password, unquote(password)})
        try:
            found.update(parse_api_keys(source.get("API_KEYS")))
        except ValueError:
            # A malformed list: mask each piece of it that could be a key.
            found.update(part for entry in str(source.get("API_KEYS")).split(",") for part in entry.split(":"))
    global _secret_values
    # Longest first, so that a secret containing another is masked whole.
    _secret_values = tuple(sorted((v for v in found if len(v) >= _MIN_MASKED_LENGTH), key=len, reverse=True))


def _redacting_factory(base):
    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it would
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    make_record._jobservice = True
    return make_record


def _redacting_excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _redacting_thread_excepthook(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _redacting_excepthook(args.exc_type, args.exc_value, args.exc_traceback)


def install_redaction(settings: dict | None = None) -> None:
    """Mask credentials in every log record and uncaught traceback of this process."""
    remember_secrets(settings)
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_jobservice", False):
        logging.setLogRecordFactory(_redacting_factory(factory))
    # Only in place of Python's own hooks: one that a host installed (a test runner, an error
    # reporter) stays theirs.
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _redacting_excepthook
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _redacting_thread_excepthook


def job_fields(job, **more) -> dict:
    """``extra=`` for a log line about ``job``: its id, attempt, worker, task and status."""
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "worker": job.worker,
        "task": job.task,
        "status": job.status,
        **more,
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if getattr(record, name, None) is not None:
                entry[name] = getattr(record, name)
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


# Every control character but the newline: C0 (\r moves the cursor back over a line, \x1b starts
# a terminal escape sequence), DEL, C1 (\x85 is a line break to some readers) and the Unicode
# line and paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\t": "\\t", "\r": "\\r"}
#: What each line after a record's first starts with in the text format: a record starts with
#: its timestamp, so a message's or traceback's further lines can never pass for one.
CONTINUATION = "  | "


def _escape_control(match: re.Match) -> str:
    char = match.group(0)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_text_line(text: str) -> str:
    """``text`` as one record of the text log: control characters escaped as ``\\x1b``,
    ``\\r``..., and each line after the first indented by :data:`CONTINUATION`."""
    return _CONTROLS.sub(_escape_control, text).replace("\n", "\n" + CONTINUATION)


class TextFormatter(logging.Formatter):
    """The text format, a record never passing for several: a tenant's error message (a task raising with
    whatever text it was given) may contain newlines, carriage returns and terminal escapes,
    and written raw it could print a whole fake record, or recolour and overwrite the ones
    around it. The JSON format needs none of this: json.dumps escapes every control character.
    """

    def format(self, record: logging.LogRecord) -> str:
        return escape_text_line(super().format(record))


def writes_info(level: str) -> bool:
    """Whether a process logging at ``level`` (LOG_LEVEL: a name such as ``WARNING``, or a number)
    writes INFO records; a level it does not know counts as INFO, the default."""
    text = str(level).strip().upper()
    number = int(text) if text.isdigit() else logging.getLevelNamesMapping().get(text, logging.INFO)
    return number <= logging.INFO


def configure(*, fmt: str = "text", level: str = "INFO", settings: dict | None = None) -> None:
    """Send the service's logs to stderr, once per process, with credentials masked."""
    install_redaction(settings)
    root = logging.getLogger()
    if any(getattr(h, "_jobservice", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._jobservice = True
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
