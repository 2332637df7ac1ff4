"""A store in a local directory (``file:///abs/path``): one file per key.

Writes are atomic: bytes go to a temporary file in the destination directory
(name starting with ``TEMP_PREFIX``), are fsynced, and are then renamed into
place (or hard-linked, for ``if_none_match``, so that "create if absent" is a
single atomic step even between processes). Readers therefore see either no
object or the whole object. Temporary files left behind by a crash are what
``abort_incomplete_uploads`` removes, and ``list`` never shows them.

There is one storage class, ``STANDARD``; ``copy_to_class`` and ``restore``
are accepted and do nothing.

Files are created 0600 and directories 0700 whatever the umask: a band is a
readable tar stream of the owner's files, so no other user of the machine may
read it (the same holds for the copies `get_to_file` makes in the state dir).

Concurrency: every method is safe to call from several threads; nothing is
cached in memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vaultfs.errors import CorruptionError, StoreSetupError
from vaultfs.fsutil import DIR_MODE, fsync_path, make_private_dirs, open_private
from vaultfs.store.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ProgressCallback,
    StoreError,
)
from vaultfs.store.limit import Bandwidth, Limiter

TEMP_PREFIX = ".vaultfs-tmp-"
_CHUNK = 4 * 1024 * 1024
_LIMITED_CHUNK = 256 * 1024  # pieces of a copy that keeps to a bandwidth limit


class LocalStore:
    """Objects as files under ``root``; key ``a/b`` is the file ``root/a/b``."""

    def __init__(self, root: Path, bandwidth: Bandwidth | None = None) -> None:
        if not root.is_absolute():
            raise StoreSetupError(f"store directory {root} is not absolute: use file:///abs/path")
        self.root = root
        self.bandwidth = bandwidth or Bandwidth()  # copies keep to the limits; links move nothing
        self.url = f"file://{root}"

    # -- paths --------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; refuses keys that could escape ``root`` or hit temp names."""
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\0" in key
            or any(p in ("", ".", "..") for p in parts)
            or parts[-1].startswith(TEMP_PREFIX)
        ):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _write_temp(self, final: Path, chunks: Iterator[bytes]) -> tuple[Path, int]:
        """Write ``chunks`` to a fsynced temp file beside ``final``; return it and its size."""
        make_private_dirs(final.parent)
        tmp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        size = 0
        try:
            with open_private(tmp) as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def _publish(self, tmp: Path, final: Path, *, if_none_match: bool, key: str) -> None:
        """Move ``tmp`` to ``final`` atomically (link+unlink when it must not exist yet)."""
        try:
            if if_none_match:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    raise ObjectExists(f"object {key} already exists in {self.url}") from None
            else:
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(final.parent)

    # -- the protocol -------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """Atomically store ``data``; ObjectExists if ``if_none_match`` and the key exists."""
        final = self._path(key)
        with _os_errors(key, self.url):
            self.bandwidth.up.take(len(data))
            tmp, _ = self._write_temp(final, iter((data,)))
            self._publish(tmp, final, if_none_match=if_none_match, key=key)

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
        storage_class: str = "STANDARD",
    ) -> None:
        """Copy ``path`` in, re-read what was written and check it against ``sha256``.

        CorruptionError (nothing published) when the written bytes do not hash to
        ``sha256`` — the source changed since it was hashed, or the disk lies.
        A local store has one class: ``storage_class`` is not used.
        """
        final = self._path(key)
        if self._link_in(path, final, key, sha256, progress):
            return
        # The source is opened outside _os_errors: a missing source is not a missing object.
        with open(path, "rb") as src, _os_errors(key, self.url):
            tmp, _ = self._write_temp(final, _read_chunks(src, progress, self.bandwidth.up))
            try:
                digest = hashlib.sha256()
                with open(tmp, "rb") as f:
                    for chunk in _read_chunks(f, None, None):
                        digest.update(chunk)
                if digest.digest() != sha256:
                    raise CorruptionError(
                        f"copy of {path} to {self.url}/{key} does not match its SHA-256 "
                        f"(expected {sha256.hex()}, wrote {digest.hexdigest()}): "
                        "the file changed while it was read, or the disk is failing"
                    )
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._publish(tmp, final, if_none_match=False, key=key)

    def _link_in(
        self, path: Path, final: Path, key: str, sha256: bytes, progress: ProgressCallback | None
    ) -> bool:
        """Publish ``path`` by hard-linking it when it is on the store's filesystem.

        Nothing is copied, so there is no copy to verify: the store's object *is*
        the spool file, whose SHA-256 the band writer computed from the bytes it
        wrote (and `vaultfs check --read-data` re-verifies later). Re-hashing it
        here would cost a full read of every band for nothing; the copy path
        (another filesystem) and S3 do verify what they transferred.
        Returns False (copy instead) across filesystems or where links are refused.
        """
        with _os_errors(key, self.url):
            make_private_dirs(final.parent)
        tmp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            os.link(path, tmp)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return False
            raise
        try:
            with _os_errors(key, self.url):
                self._publish(tmp, final, if_none_match=False, key=key)
        finally:
            tmp.unlink(missing_ok=True)
        if progress is not None:
            progress(os.stat(final).st_size)
        return True

    def get(self, key: str) -> bytes:
        """Whole object. ObjectNotFound."""
        with _os_errors(key, self.url):
            data = self._path(key).read_bytes()
        self.bandwidth.down.take(len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; fewer at the end, ``b""`` at or past it."""
        if start < 0 or length < 0:
            raise ValueError(f"bad range start={start} length={length}")
        with _os_errors(key, self.url):
            fd = os.open(self._path(key), os.O_RDONLY)
            try:
                parts: list[bytes] = []
                done = 0
                while done < length:
                    chunk = os.pread(fd, min(length - done, _CHUNK), start + done)
                    if not chunk:
                        break
                    self.bandwidth.down.take(len(chunk))
                    parts.append(chunk)
                    done += len(chunk)
                return b"".join(parts)
            finally:
                os.close(fd)

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        """Copy the object to ``path`` atomically (temp file beside it, then rename)."""
        src_path = self._path(key)
        with _os_errors(key, self.url), open(src_path, "rb") as src:
            make_private_dirs(path.parent)
            tmp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            try:
                with open_private(tmp) as dst:
                    for chunk in _read_chunks(src, progress, self.bandwidth.down):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    def head(self, key: str) -> ObjectInfo:
        """Size of one object; storage class is always STANDARD. ObjectNotFound."""
        with _os_errors(key, self.url):
            st = self._path(key).stat()
        return ObjectInfo(key=key, size=st.st_size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (plain string prefix), in byte order of key."""
        # Walk only the deepest directory that the prefix names completely.
        base_dir = prefix.rpartition("/")[0]
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue  # deleted while listing
                found.append(ObjectInfo(key=key, size=size))
        found.sort(key=lambda info: info.key.encode())
        yield from found

    def delete(self, key: str) -> None:
        """Remove the object; an absent key is not an error."""
        with _os_errors(key, self.url):
            self._path(key).unlink(missing_ok=True)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Remove temporary files (from interrupted writes) under ``prefix``; return how many.

        Like its S3 counterpart this also cancels writes in progress, so call it
        only while holding the vault's lock.
        """
        base_dir = prefix.rpartition("/")[0]
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        count = 0
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                rel = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
                if not rel.startswith(prefix) and not prefix.startswith(rel):
                    continue
                try:
                    os.unlink(os.path.join(dirpath, name))
                    count += 1
                except FileNotFoundError:
                    pass
        return count

    def copy_to_class(self, key: str, storage_class: str) -> None:
        """No-op: a directory has one class. ObjectNotFound if the key is absent."""
        self.head(key)

    def restore(self, key: str, days: int, tier: str) -> None:
        """No-op: local objects are always readable. ObjectNotFound if the key is absent."""
        self.head(key)

    def check_access(self) -> None:
        """Create ``root`` if its parent exists; StoreSetupError unless it is a writable dir
        on a filesystem with hard links (needed for ``if_none_match``)."""
        root = self.root
        if not root.exists():
            parent = root.parent
            if not parent.is_dir():
                raise StoreSetupError(
                    f"store directory {root} does not exist and neither does {parent}: "
                    "create it, or fix [vault].store"
                )
            try:
                root.mkdir(mode=DIR_MODE)
            except FileExistsError:
                pass
            except OSError as e:
                raise StoreSetupError(
                    f"cannot create store directory {root} ({e.strerror}): create it yourself "
                    f"with write access for this user, or fix [vault].store"
                ) from None
        if not root.is_dir():
            raise StoreSetupError(f"store path {root} is not a directory: fix [vault].store")
        probe = root / f"{TEMP_PREFIX}probe-{secrets.token_hex(4)}"
        linked = probe.with_name(probe.name + "-link")
        try:
            try:
                probe.touch(exist_ok=False)
            except OSError as e:
                raise StoreSetupError(
                    f"cannot write to store directory {root} ({e.strerror}): "
                    "give this user write access, or fix [vault].store"
                ) from None
            try:
                os.link(probe, linked)
            except OSError as e:
                raise StoreSetupError(
                    f"the filesystem of {root} cannot make hard links ({e.strerror}), which "
                    "vaultfs needs for atomic writes: use ext4, xfs, btrfs or NFS"
                ) from None
        finally:
            probe.unlink(missing_ok=True)
            linked.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


def _read_chunks(f: BinaryIO, progress: ProgressCallback | None, limiter: Limiter | None) -> Iterator[bytes]:
    """`f` in pieces, each charged to `limiter` (if any) before it is handed on."""
    size = _LIMITED_CHUNK if limiter is not None and limiter.schedule.entries else _CHUNK
    while chunk := f.read(size):
        if limiter is not None:
            limiter.take(len(chunk))
        yield chunk
        if progress is not None:
            progress(len(chunk))


@contextmanager
def _os_errors(key: str, url: str) -> Iterator[None]:
    """Turn OSError into store errors: missing → ObjectNotFound, EAGAIN etc. → transient."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ObjectNotFound(f"object {key} not found in {url}") from None
    except OSError as exc:
        transient = exc.errno in (errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT)
        raise StoreError(f"{url}/{key}: {exc.strerror or exc}", transient=transient) from exc
