"""Object stores: where bands, catalogs, indexes and version records live.

`open_store` turns the configured ``[vault].store`` URL into a store wrapped
in `RetryingStore`. The S3 backend is imported only when an ``s3://`` URL is
opened, so ``import vaultfs.store`` does not pay for importing boto3.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from vaultfs.config import S3Settings
from vaultfs.errors import ConfigError
from vaultfs.store.base import (
    ArchiveStore,
    ObjectArchived,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ProgressCallback,
    StoreError,
    StoreRefused,
)
from vaultfs.store.local import LocalStore
from vaultfs.store.retry import RetryingStore

__all__ = [
    "ArchiveStore",
    "LocalStore",
    "ObjectArchived",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ProgressCallback",
    "RetryingStore",
    "StoreError",
    "StoreRefused",
    "open_store",
]

_test_faults: tuple[float, int] | None = None  # issue 5: see enable_test_faults


def enable_test_faults(spec: str) -> None:
    """For tests (``VAULTFS_TEST_FAULTS=rate:seed``, read by vaultfs.cli): every store opened
    afterwards is a FaultyStore failing about ``rate`` of its calls with transient errors,
    under a RetryingStore with more attempts and millisecond backoff. ConfigError if bad."""
    global _test_faults
    rate, _, seed = spec.partition(":")
    try:
        _test_faults = (float(rate), int(seed or "0"))
    except ValueError:
        raise ConfigError(f"VAULTFS_TEST_FAULTS={spec!r}: expected RATE:SEED, e.g. 0.3:7") from None


_FORMS = "expected file:///absolute/path or s3://bucket/prefix"


def open_store(url: str, s3: S3Settings) -> ArchiveStore:
    """The store named by ``url``, wrapped in RetryingStore. ConfigError for a bad URL.

    Nothing is contacted here; call ``check_access()`` to find setup problems.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (no ?query or #fragment)")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (three slashes for file://)")
        inner: ArchiveStore = LocalStore(Path(unquote(parts.path)))
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (the bucket name is missing)")
        from vaultfs.store.s3 import S3Store  # lazy: boto3 costs ~0.3 s to import

        inner = S3Store(parts.netloc, unquote(parts.path).strip("/"), s3)
    else:
        raise ConfigError(f"[vault].store = {url!r}: {_FORMS}")
    if _test_faults is not None:  # issue 5: fault injection for tests
        from vaultfs.store.faults import FaultyStore

        return RetryingStore(FaultyStore(inner, *_test_faults), attempts=14, base_delay=0.005,
                             max_delay=0.1)
    return RetryingStore(inner)
