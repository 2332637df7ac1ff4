"""The object store protocol: the one small interface every backend implements.

Backends (`local.py`, `s3.py`) only move bytes and classify their errors as
transient (worth retrying) or permanent. Features such as retrying live in
wrappers (`retry.py`) that implement the same protocol.

Keys are '/'-separated relative names such as ``bands/<id>.tar.zst``; the
backend adds its own prefix. Objects are write-once: nothing is rewritten in
place except by ``copy_to_class`` (same bytes, new storage class).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from vaultfs.errors import StoreSetupError, VaultError


class StoreError(VaultError):
    """A store request failed. ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class StoreRefused(StoreError, StoreSetupError):
    """The store refuses us for a reason in the configuration, not a passing fault.

    Refused or missing credentials, missing permissions, a bucket that does not
    exist, an endpoint that is not the S3 service meant. The same message and
    exit status (2, via StoreSetupError) whether ``init`` finds it in its access
    check or a later command meets it on any request. Never transient.
    """


class ObjectNotFound(StoreError):
    """The key does not exist."""


class ObjectExists(StoreError):
    """A conditional put (``if_none_match``) found the key already present."""


class ObjectArchived(StoreError):
    """The object is in an archive class and must be restored before reading."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    storage_class: str = "STANDARD"
    # Raw ``x-amz-restore`` header value, or None when no restore was asked for.
    restore: str | None = None


ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@runtime_checkable
class ObjectStore(Protocol):
    """What vaultfs needs from a place that keeps objects."""

    url: str

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """Store ``data`` at ``key``. With ``if_none_match`` raise ObjectExists if present."""
        ...

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
        storage_class: str = "STANDARD",
    ) -> None:
        """Upload a local file, verified end to end against its SHA-256 (multipart when large),
        into ``storage_class`` where the store has classes (S3; a local store has one)."""
        ...

    def get(self, key: str) -> bytes:
        """Whole object. ObjectNotFound, ObjectArchived."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer only at the end of the object)."""
        ...

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Download a whole object into a local file."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size and storage state of one object. ObjectNotFound."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; absent keys are not an error."""
        ...

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort unfinished multipart uploads under ``prefix``; return how many."""
        ...

    def check_access(self) -> None:
        """Raise StoreSetupError with advice when the store cannot be used at all."""
        ...


@runtime_checkable
class ArchiveStore(ObjectStore, Protocol):
    """A store whose objects can move to an archive class (S3 Deep Archive) and back.

    Added with the store backends: the design (§9) needs these two calls through
    the retry wrapper, so they are part of a protocol rather than S3-only methods.
    """

    def copy_to_class(self, key: str, storage_class: str) -> None:
        """Rewrite ``key`` in place with the same bytes in ``storage_class``. ObjectNotFound."""
        ...

    def restore(self, key: str, days: int, tier: str) -> None:
        """Ask for a temporary readable copy of an archived object for ``days``.

        Returns once the request is accepted; ``head(key).restore`` shows progress.
        A restore already in progress is not an error.
        """
        ...
