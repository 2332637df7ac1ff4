"""`RetryingStore`: the one place that retries whole store operations.

Backends classify each failure; this wrapper retries those marked
``transient`` with capped exponential backoff and full jitter, and never
retries permanent ones. (botocore also retries single HTTP requests; this
covers what it cannot: a body that breaks mid-read, a multipart upload whose
part failed after botocore gave up, a local EAGAIN.)

Retrying must not change what callers see:
* progress callbacks report each byte once, however many attempts it took;
* ``list`` resumes after the last key already yielded;
* a conditional put (``if_none_match``) whose earlier attempt may have
  succeeded without us hearing the answer treats ObjectExists as success when
  the stored bytes equal ours.

Concurrency: stateless apart from the random generator used for jitter
(``random.Random`` is thread-safe for this use); safe to share between threads.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from vaultfs.store.base import (
    ArchiveStore,
    ObjectExists,
    ObjectInfo,
    ObjectStore,
    ProgressCallback,
    StoreError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class _OncePerByte:
    """Forward progress so that retried bytes are not counted twice."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress
        self.reported = 0  # highest total ever reported
        self.current = 0  # total of the attempt in flight

    def new_attempt(self) -> None:
        self.current = 0

    def __call__(self, n: int) -> None:
        self.current += n
        if self.current > self.reported:
            self.progress(self.current - self.reported)
            self.reported = self.current


class RetryingStore:
    """Wraps any ObjectStore; retries transient StoreErrors up to ``attempts`` times in all."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self._rng = rng or random.Random()
        self.retries = 0  # how many retries were made, for tests and statistics

    def _delay(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(failures-1))]."""
        return self._rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))

    def _run(self, what: str, op: Callable[[int], T]) -> T:
        """Call ``op(attempt)`` until it succeeds, fails permanently, or attempts run out."""
        for attempt in range(1, self.attempts + 1):
            try:
                return op(attempt)
            except StoreError as e:
                if not e.transient:
                    raise
                if attempt == self.attempts:
                    raise self._exhausted(e) from e
                delay = self._delay(attempt)
                log.info(
                    "%s failed (%s); retry %d/%d in %.1fs", what, e.message, attempt, self.attempts - 1, delay
                )
                self.retries += 1
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _exhausted(self, last: StoreError) -> StoreError:
        """The error to raise once every attempt has failed.

        Its message must not promise another try (a backend's wording may read
        as if one follows): it says how many attempts failed and what to do.
        Permanent (transient=False), so no outer layer retries it again.
        """
        return StoreError(
            f"{last.message} (gave up after {self.attempts} attempts: check the network "
            "and the store, then run the command again; it resumes where it stopped)"
        )

    # -- the protocol ---------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """As ObjectStore.put; see the module docstring for conditional puts."""

        def op(attempt: int) -> None:
            try:
                self.inner.put(key, data, if_none_match=if_none_match)
            except ObjectExists:
                # An earlier attempt may have written the object and lost the answer.
                if attempt > 1 and self._run(f"GET {key}", lambda _: self.inner.get(key)) == data:
                    return
                raise

        self._run(f"PUT {key}", op)

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
        storage_class: str = "STANDARD",
    ) -> None:
        once = _OncePerByte(progress) if progress is not None else None

        def op(_attempt: int) -> None:
            if once is not None:
                once.new_attempt()
            self.inner.put_file(key, path, sha256=sha256, progress=once, storage_class=storage_class)

        self._run(f"PUT {key} from {path}", op)

    def get(self, key: str) -> bytes:
        return self._run(f"GET {key}", lambda _: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._run(f"GET {key}", lambda _: self.inner.get_range(key, start, length))

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        once = _OncePerByte(progress) if progress is not None else None

        def op(_attempt: int) -> None:
            if once is not None:
                once.new_attempt()
            self.inner.get_to_file(key, path, once)

        self._run(f"GET {key} to {path}", op)

    def head(self, key: str) -> ObjectInfo:
        return self._run(f"HEAD {key}", lambda _: self.inner.head(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """As ObjectStore.list; a listing that breaks resumes after the last key yielded."""
        last: bytes | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.key.encode() <= last:
                        continue
                    yield info
                    last = info.key.encode()
                return
            except StoreError as e:
                if not e.transient:
                    raise
                if attempt == self.attempts:
                    raise self._exhausted(e) from e
                delay = self._delay(attempt)
                log.info(
                    "LIST %s failed (%s); retry %d/%d in %.1fs",
                    prefix,
                    e.message,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self.retries += 1
                self.sleep(delay)

    def delete(self, key: str) -> None:
        self._run(f"DELETE {key}", lambda _: self.inner.delete(key))

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return self._run(f"ABORT {prefix}", lambda _: self.inner.abort_incomplete_uploads(prefix))

    def check_access(self) -> None:
        """Not retried: backends already use short, bounded retries here."""
        self.inner.check_access()

    def copy_to_class(self, key: str, storage_class: str) -> None:
        inner = archive_store(self.inner)
        self._run(f"COPY {key}", lambda _: inner.copy_to_class(key, storage_class))

    def restore(self, key: str, days: int, tier: str) -> None:
        inner = archive_store(self.inner)
        self._run(f"RESTORE {key}", lambda _: inner.restore(key, days, tier))

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r})"


def archive_store(store: ObjectStore) -> ArchiveStore:
    """``store`` as an ArchiveStore, or a permanent StoreError if it has no archive classes."""
    if not isinstance(store, ArchiveStore):
        raise StoreError(f"store {store.url} has no archive storage classes")
    return store
