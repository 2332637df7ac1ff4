"""Object stores: where bands, catalogs, indexes and version records live.

`open_store` turns the configured ``[vault].store`` URL into a store wrapped
in `RetryingStore`. The S3 backend is imported only when an ``s3://`` URL is
opened, so ``import vaultfs.store`` does not pay for importing boto3.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vaultfs import testpoints
from vaultfs.config import RateSchedule, S3Settings
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
from vaultfs.store.limit import Bandwidth, shared
from vaultfs.store.local import LocalStore
from vaultfs.store.retry import RetryingStore

__all__ = [
    "ArchiveStore",
    "Bandwidth",
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

_FORMS = "expected file:///absolute/path or s3://bucket/prefix"


def open_store(
    url: str,
    s3: S3Settings,
    upload_limit: RateSchedule | None = None,
    download_limit: RateSchedule | None = None,
    *,
    quick: bool = False,
) -> ArchiveStore:
    """The store named by ``url``, wrapped in RetryingStore. ConfigError for a bad URL.

    Its transfers keep to the limits, with one bucket per direction shared by every
    store of the process (`vaultfs.store.limit`). Nothing is contacted here; call
    ``check_access()`` to find setup problems. ``quick`` (short commands that mostly
    read: ``restore fetch``): an S3 store's ranged GETs are signed without importing
    boto3 (`vaultfs.store.s3_quick`), ~0.25 s less start-up.
    """
    bandwidth = shared(upload_limit or RateSchedule(), download_limit or RateSchedule())
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (no ?query or #fragment)")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (three slashes for file://)")
        inner: ArchiveStore = LocalStore(Path(unquote(parts.path)), bandwidth)
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"[vault].store = {url!r}: {_FORMS} (the bucket name is missing)")
        bucket, prefix = parts.netloc, unquote(parts.path).strip("/")
        if quick:
            from vaultfs.store.s3_quick import QuickS3Store

            inner = QuickS3Store(bucket, prefix, s3, os.environ, bandwidth)
        else:
            from vaultfs.store.s3 import S3Store  # lazy: boto3 costs ~0.3 s to import

            inner = S3Store(bucket, prefix, s3, bandwidth=bandwidth)
    else:
        raise ConfigError(f"[vault].store = {url!r}: {_FORMS}")
    faults = testpoints.store_faults()  # tests only: VAULTFS_TESTPOINTS="store-faults=…"
    if faults is not None:
        from vaultfs.store.faults import FaultyStore

        return RetryingStore(FaultyStore(inner, *faults), attempts=14, base_delay=0.005, max_delay=0.1)
    return RetryingStore(inner)
