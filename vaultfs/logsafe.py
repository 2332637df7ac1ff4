"""Logs that never show a credential, with ``--debug`` too.

botocore logs every request at DEBUG, signed headers included (``Authorization``
with the access key id, ``X-Amz-Security-Token``), and urllib3 logs request
lines, which for a presigned URL carry ``X-Amz-Credential`` and
``X-Amz-Signature``. Two defences, both applied by `install` to every handler
the command line and the mount set up:

* the HTTP libraries' loggers stay at INFO or above whatever ``--debug`` says:
  their DEBUG output is mostly those requests, and vaultfs's own debug lines say
  what was asked of the store;
* every formatted line (message and traceback) goes through `redact`, which
  removes signed header values and query parameters, and every credential value
  the S3 store registered with `add_secret` when it resolved its credentials.
"""

from __future__ import annotations

import logging
import re
import threading

# Loggers whose DEBUG lines carry requests (headers, signed URLs, credential lookups).
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")
REDACTED = "[redacted]"

_SIGNED = re.compile(
    r"(?i)(authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
    r"|aws_access_key_id|aws_secret_access_key|aws_session_token|security_token"
    r"|access_key|secret_key|token)"
    r"(['\"]?\s*[:=]\s*b?['\"]?)([^'\"&\s,}]+)"
)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def add_secret(value: str | None) -> None:
    """Never show `value` in a log line (credentials, once resolved)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` without signed header values, signed query parameters and known secrets."""
    text = _SIGNED.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats with another formatter, then `redact`s the whole line (tracebacks too)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def install(logger: logging.Logger | None = None) -> None:
    """Make every handler of `logger` (the root logger) redact, and quiet the HTTP
    libraries' loggers to INFO. Call after adding handlers."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
    for name in QUIET_LIBRARIES:
        lib = logging.getLogger(name)
        if lib.getEffectiveLevel() < logging.INFO:
            lib.setLevel(logging.INFO)
