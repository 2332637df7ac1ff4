"""Restore files of a version into a local directory (``vaultfs restore fetch``).

Safety contract: nothing is ever written outside the target directory,
whatever the catalog says. Every name is checked (no ``..``, ``.``, ``/``,
NUL or empty names, no duplicates in one directory) and every path is walked
component by component with directory file descriptors and ``O_NOFOLLOW``, so
neither a crafted name nor a symlink restored earlier can redirect a write.

Every file's content is verified against its SHA-256 before the file is
given its final name; a mismatch leaves no file behind and is reported.
Files are read in band order (band, offset) so each band is read once, front
to back.

Restore everything that can be restored: a file whose bytes cannot be read (its
band object missing or damaged, its blob not in the catalog, a frame that fails
its checksum) is listed in `RestoreResult.missing` and skipped, with no partial
file under its name, and the restore goes on with the next file. Whatever
happens, every directory written gets its recorded mode, owner and times at the
end (deepest first, so setting one does not disturb the times of its parent).

Metadata goes on in an order that keeps each step from undoing another: owner first
(chown clears set-uid bits and file capabilities), then xattrs (ACLs among them), mode
and times; kept inode flags (`vaultfs.fsflags`) before a file's content (``C`` and ``c``
only act on data written after them), a directory's at the end; ``i`` (immutable) and
``a`` (append only) strictly last, after every name, link and time (an immutable file
can be neither written, renamed, linked nor given times), and only once the restore
completed: one that fails part-way leaves what it wrote unsealed, so running it again
(which keeps what is already right) finishes it. What a run changes that an earlier one
sealed has its seal lifted first and set again at the end. Metadata the target refuses
(an xattr namespace without root, a flag its filesystem lacks) is counted by kind in
`RestoreResult.not_restored`, never dropped silently and never fatal.

The target directory itself gets the version root's mode, owner, mtime and
xattrs (`VersionInfo.root_meta`) only when the whole version is restored: it
then *is* the root. When only some paths are restored, the target is just the
place they are put in, and it is left as it was.
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from vaultfs import fsflags, testpoints
from vaultfs.errors import CorruptionError, UsageError, VaultError
from vaultfs.model import KIND_BITS, BandId, BlobId, Entry, TreeId, VersionInfo
from vaultfs.source import ChangedWhileReading, Problem, display_path, hash_stream, sparse_digest
from vaultfs.sparse import BlobPlaces, Extents
from vaultfs.store import ObjectArchived, ObjectNotFound
from vaultfs.vault import Vault
from vaultfs.walk import walk

_FILE_BASE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Opened for metadata only (owner, mode, times, flags): not followed, never blocking.
_OPEN_META = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RestoreProgress(Protocol):
    def reading(self, files_total: int, bytes_total: int) -> None: ...
    def advance(self, files: int, size: int) -> None: ...


@dataclass(slots=True)
class RestoreResult:
    version: VersionInfo
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, fifos, devices, hard links
    problems: list[Problem] = field(default_factory=list)  # restored, but not quite as recorded
    # Files not restored because their bytes could not be read or failed verification.
    missing: list[Problem] = field(default_factory=list)
    root_meta_applied: bool = False  # the target got the version root's mode, owner, times
    # Metadata the target refused (xattrs without root, flags its filesystem lacks): kind → count.
    not_restored: dict[str, int] = field(default_factory=dict)
    present: int = 0  # of `files`: already in the target with the recorded content (kept)


class UnsafeName(CorruptionError):
    """A catalog entry whose name or link path would leave the target directory."""


class _ContentUnreadable(Exception):
    """A file's bytes could not be read back whole and verified: it is skipped, not fatal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafeName(f"refusing unsafe name {name!r} from the catalog")
    return name


def split_path(path: bytes) -> tuple[bytes, ...]:
    """A relative path from a user or a catalog → checked components."""
    parts = tuple(p for p in path.split(b"/") if p not in (b"", b"."))
    for p in parts:
        check_name(p)
    return parts


def parse_selection(paths: list[str]) -> list[tuple[bytes, ...]]:
    out = []
    for p in paths:
        try:
            out.append(split_path(os.fsencode(p)))
        except UnsafeName:
            shown = display_path(p)
            raise UsageError(f"path '{shown}': use a path inside the collection, without '..'") from None
    return out


@dataclass(slots=True)
class _Item:
    parts: tuple[bytes, ...]
    entry: Entry


class Contents(Protocol):
    """Where a restore reads a version's listings and file contents: the vault itself, or
    a hub client's session with its hub (`vaultfs.hub.client`). `iter_blob` verifies the
    SHA-256 before its last chunk and raises CorruptionError when it cannot deliver."""

    def tree(self, tree: TreeId) -> tuple[Entry, ...]: ...
    def iter_blob(self, blob: BlobId) -> Iterator[bytes]: ...
    def blob_order(self, blob: BlobId) -> tuple[str, int]: ...


class Restorer:
    def __init__(
        self, vault: Contents, version: VersionInfo, target: Path, *, overwrite: bool = False
    ) -> None:
        self.vault = vault
        self.version = version
        self.target = target
        self.overwrite = overwrite
        self.result = RestoreResult(version)
        self._sealing: list[tuple[tuple[bytes, ...], int]] = []  # +i/+a: set after everything
        self.present: set[tuple[bytes, ...]] = set()  # files already there, content as recorded

    def run(
        self, selection: list[tuple[bytes, ...]], progress: RestoreProgress | None = None
    ) -> RestoreResult:
        try:
            self.target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VaultError(f"cannot create {self.target}: {e.strerror}") from None
        items = list(self._select(selection))
        dirs = [i for i in items if i.entry.kind == "dir"]
        files = [i for i in items if i.entry.kind == "file" and i.entry.hardlink is None]
        links = [i for i in items if i.entry.kind == "file" and i.entry.hardlink is not None]
        others = [i for i in items if i.entry.kind not in ("dir", "file")]
        made: list[_Item] = []  # directories that exist now: their metadata is set at the end
        completed = False
        root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._check_existing(root_fd, items)
            self._lift_root_seal(root_fd, whole=not selection)
        except BaseException:
            os.close(root_fd)
            raise
        try:
            for item in dirs:
                self._mkdir(root_fd, item)
                made.append(item)
            self._write_all(root_fd, files, links, others, progress)
            completed = True
        finally:
            try:
                self._finish(root_fd, made, completed=completed, whole=not selection)
            finally:
                os.close(root_fd)
        return self.result

    def _write_all(
        self,
        root_fd: int,
        files: list[_Item],
        links: list[_Item],
        others: list[_Item],
        progress: RestoreProgress | None,
    ) -> None:
        """Files in band order (one pass over each band), then hard links, then the rest."""
        restored: set[tuple[bytes, ...]] = set()
        files.sort(key=self._band_order)
        if progress:
            progress.reading(len(files), sum(i.entry.size for i in files))
        for item in files:
            if self._write_file(root_fd, item):
                restored.add(item.parts)
            testpoints.reach("extract-file-written")
            if progress:
                progress.advance(1, item.entry.size)
        for item in links:
            self._link(root_fd, item, restored)
        for item in others:
            self._special(root_fd, item)

    def _finish(self, root_fd: int, made: list[_Item], *, completed: bool, whole: bool) -> None:
        """Directories' metadata deepest first, also when the restore failed part-way (no
        directory is left at 0700 untimed). Only a `completed` restore goes on: the root's
        metadata (`whole`: the whole version was restored; its mtime must not move again),
        then +i and +a, after which nothing may change. A failed restore seals nothing:
        what it wrote stays changeable, so running it again (which keeps what is already
        right, `_check_existing`) finishes it."""
        for item in sorted(made, key=lambda i: len(i.parts), reverse=True):
            self._dir_metadata(root_fd, item)
        if not completed:
            return
        if whole:
            self._root_metadata(root_fd)
        for parts, flags in self._sealing:
            self._seal(root_fd, parts, flags)

    def _select(self, selection: list[tuple[bytes, ...]]) -> Iterator[_Item]:
        return select(self.vault, self.version.root, selection, self.version)

    def _root_metadata(self, root_fd: int) -> None:
        """The whole version was restored: the target takes the source root's metadata."""
        meta = self.version.root_meta
        if meta is None:  # a record from before vaultfs kept it
            return
        try:
            self._metadata_at(root_fd, (), meta.entry(self.version.root))
        except OSError as err:
            self.result.problems.append(
                Problem(b"", f"mode, owner or times of {self.target} not set ({err.strerror})")
            )
            return
        self.result.root_meta_applied = True

    def _lift_root_seal(self, root_fd: int, *, whole: bool) -> None:
        """A target sealed with +i/+a (a whole version with a sealed root restored into it
        before) can take no new name, so its seal is lifted before anything is written.
        Restoring the whole version gives it the root's recorded flags at the end; restoring
        some paths puts its own seal back."""
        try:
            lifted = _lift_seal(root_fd)
        except OSError as err:
            raise _seal_not_lifted(str(self.target), err) from None
        if lifted and not whole:
            self._sealing.append(((), lifted))

    def _band_order(self, item: _Item) -> tuple[str, int]:
        return self.vault.blob_order(item.entry.blob) if item.entry.blob else ("", 0)

    # ---- writing -----------------------------------------------------------------------

    def _parent(self, root_fd: int, parts: tuple[bytes, ...]) -> int:
        """An fd of the directory holding ``parts[-1]``, reached without following symlinks."""
        fd = os.dup(root_fd)
        for name in parts[:-1]:
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def _problem(self, item: _Item, reason: str) -> None:
        self.result.problems.append(Problem(b"/".join(item.parts), reason))

    def _mkdir(self, root_fd: int, item: _Item) -> None:
        """A directory of the version, at 0700 until `_finish` gives it its metadata."""
        fd = self._parent(root_fd, item.parts)
        try:
            if not self._existing_dir(fd, item):
                os.mkdir(item.parts[-1], 0o700, dir_fd=fd)
                self.result.dirs += 1
        finally:
            os.close(fd)

    def _existing_dir(self, dfd: int, item: _Item) -> bool:
        """True: a directory is at the item's path already and is used, its seal (+i/+a)
        lifted, since it could take no new name (`_finish` sets the recorded flags). False:
        nothing is there (now: with --overwrite, a non-directory in the way is removed;
        without, `_check_existing` refused it)."""
        name, path = item.parts[-1], b"/".join(item.parts)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            if not self.overwrite:  # put there since `_check_existing` looked
                raise VaultError(
                    f"{self.target / display_path(path)} exists and is not a directory: "
                    "restore into an empty directory"
                )
            _unlink_quiet(name, dfd, path)
            return False
        try:
            fd = os.open(name, _OPEN_META | os.O_DIRECTORY, dir_fd=dfd)
            try:
                _lift_seal(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise _seal_not_lifted(str(self.target / display_path(path)), err) from None
        return True

    def _check_existing(self, root_fd: int, items: list[_Item]) -> None:
        """Before anything is written: what the target already holds at the paths to be
        restored. A file with the recorded content is kept (`present`: only its metadata is
        set), a directory is used; anything else in the way is refused in one error, unless
        `overwrite`. A directory where the version has none is refused even then: a restore
        never deletes a directory (nor what it holds)."""
        differ: list[tuple[bytes, ...]] = []
        dirs: list[tuple[bytes, ...]] = []
        for item in items:
            found = self._found(root_fd, item)
            if found == "same" and item.entry.kind == "file":
                self.present.add(item.parts)
            elif found == "differs":
                differ.append(item.parts)
            elif found == "dir":
                dirs.append(item.parts)
        what = f"{self.version.collection}@v{self.version.number}"
        if dirs:
            raise UsageError(
                f"{len(dirs)} directory(ies) in {self.target} stand where {what} has a file, "
                f"link or special file (the first: {display_path(b'/'.join(dirs[0]))}); nothing "
                "was written: move them out of the way (a restore never deletes a directory)"
            )
        if differ and not self.overwrite:
            raise UsageError(
                f"{len(differ)} file(s) in {self.target} differ from what {what} holds (the "
                f"first: {display_path(b'/'.join(differ[0]))}); nothing was written: restore "
                "into an empty directory, or add --overwrite to replace them"
            )

    def _found(self, root_fd: int, item: _Item) -> Literal["same", "differs", "dir"] | None:
        """What the target holds at the item's path. None: nothing, or nothing the restore
        touches (a socket's path is left alone, `_special`; under a parent that is not a
        directory, the parent is the one reported). "same": what would be written
        (`_as_recorded`). "differs": something else, which --overwrite replaces. "dir": a
        directory where the version has something else."""
        e, name = item.entry, item.parts[-1]
        if e.kind == "socket":
            return None
        try:
            dfd = self._parent(root_fd, item.parts)
        except OSError:
            return None  # no parent yet, or not a directory (reported as itself)
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and e.kind != "dir":
                return "dir"
            return "same" if _as_recorded(dfd, name, st, e) else "differs"
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)

    def _write_file(self, root_fd: int, item: _Item) -> bool:
        e = item.entry
        assert e.blob is not None
        name = item.parts[-1]
        if item.parts in self.present:
            return self._keep_present(root_fd, item)
        tmp = b".vaultfs-restore-" + name[:200]
        path, tmp_path = b"/".join(item.parts), b"/".join((*item.parts[:-1], tmp))
        dfd = self._parent(root_fd, item.parts)
        try:
            _unlink_quiet(tmp, dfd, tmp_path)
            fd = os.open(tmp, _FILE_BASE_FLAGS, 0o600, dir_fd=dfd)
            try:
                self._set_flags(fd, e.flags & ~fsflags.SEALING)  # before the data (C, c)
                self._copy_content(fd, e)
                self._apply_metadata(fd, e, item.parts)
            except BaseException:
                os.close(fd)
                _unlink_quiet(tmp, dfd, tmp_path)
                raise
            os.close(fd)
            _replace_nofollow(tmp, name, dfd, path)
        except _ContentUnreadable as err:
            self.result.missing.append(Problem(b"/".join(item.parts), err.reason))
            return False
        finally:
            os.close(dfd)
        self.result.files += 1
        self.result.bytes += e.size
        return True

    def _keep_present(self, root_fd: int, item: _Item) -> bool:
        """A file already there with the recorded content: kept, given the recorded
        metadata, and counted as restored (its SHA-256 was checked). Metadata the target
        refuses is a problem of this file, not the end of the restore."""
        try:
            self._metadata_at(root_fd, item.parts, item.entry)
        except OSError as err:
            self._problem(item, f"kept (content as recorded), but its metadata not set ({err.strerror})")
        self.result.files += 1
        self.result.bytes += item.entry.size
        self.result.present += 1
        return True

    def _copy_content(self, fd: int, e: Entry) -> None:
        """Write a file's verified bytes to `fd`. Any vault error while reading them (band
        object missing or archived, blob or band not in the catalog, a damaged frame, a
        SHA-256 mismatch) means this file cannot be restored now: `_ContentUnreadable`.
        Errors of the target (a full disk, a name in the way) stay fatal, and so do the
        store's refusals and exhausted retries: they would fail every file the same way.

        A sparse file gets each data extent written at its offset and its size set with
        ftruncate: what lies between is left unwritten, so it is a hole again."""
        assert e.blob is not None
        size, written = e.blob_size, 0
        place = _extent_writer(fd, e.sparse)
        try:
            for chunk in self.vault.iter_blob(e.blob):
                place(chunk, written)
                written += len(chunk)
        except (CorruptionError, ObjectNotFound, ObjectArchived) as err:
            raise _ContentUnreadable(err.message) from None
        if written != size:
            raise _ContentUnreadable(f"read {written} bytes back, the catalog says {size}")
        if e.sparse is not None:
            os.ftruncate(fd, e.size)

    def _apply_metadata(self, fd: int, e: Entry, parts: tuple[bytes, ...]) -> None:
        """Owner, xattrs, mode and times of an open file or directory (see the module
        docstring for the order); its +i/+a are noted for the end."""
        if os.geteuid() == 0:
            os.fchown(fd, *owner_ids(e))
        self._set_xattrs(fd, e)
        os.fchmod(fd, e.mode)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        if e.flags & fsflags.SEALING:
            self._sealing.append((parts, e.flags & fsflags.SEALING))

    def _set_xattrs(self, where: int | bytes, e: Entry) -> None:
        for key, value in e.xattrs:
            try:
                if isinstance(where, int):
                    os.setxattr(where, key, value)
                else:
                    os.setxattr(where, key, value, follow_symlinks=False)
            except OSError as err:
                namespace = display_path(key.split(b".", 1)[0])
                self._not_restored(f"xattr(s) in {namespace}.* ({err.strerror})")

    def _set_flags(self, fd: int, flags: int, mask: int = fsflags.KEPT & ~fsflags.SEALING) -> None:
        """Give an open file or directory the kept inode flags of `mask` (only when it
        has some: a file without flags costs no ioctl)."""
        if not flags:
            return
        try:
            fsflags.set_flags(fd, flags, mask)
        except OSError as err:
            self._not_restored(f"inode flag(s) {fsflags.letters(flags)} ({err.strerror})")

    def _seal(self, root_fd: int, parts: tuple[bytes, ...], flags: int) -> None:
        """Set +i/+a on a restored path, the very last change made to it."""
        try:
            fd = self._open_at(root_fd, parts)
        except OSError as err:
            self._not_restored(f"inode flag(s) {fsflags.letters(flags)} ({err.strerror})")
            return
        try:
            self._set_flags(fd, flags, fsflags.SEALING)
        finally:
            os.close(fd)

    def _not_restored(self, kind: str) -> None:
        self.result.not_restored[kind] = self.result.not_restored.get(kind, 0) + 1

    def _link(self, root_fd: int, item: _Item, restored: set[tuple[bytes, ...]]) -> None:
        e = item.entry
        assert e.hardlink is not None
        target = split_path(e.hardlink)
        if target in restored:
            src = self._parent(root_fd, target)
            dst = self._parent(root_fd, item.parts)
            try:
                _unlink_quiet(item.parts[-1], dst, b"/".join(item.parts))
                os.link(target[-1], item.parts[-1], src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
                restored.add(item.parts)
                self.result.others += 1
            finally:
                os.close(src)
                os.close(dst)
        elif self._write_file(root_fd, _Item(item.parts, _without_link(e))):
            restored.add(item.parts)

    def _special(self, root_fd: int, item: _Item) -> None:
        e = item.entry
        name = item.parts[-1]
        if e.kind == "socket":  # it belongs to the program that made it: its path is left alone
            self._problem(item, "socket not restored (sockets are recreated by their programs)")
            return
        dfd = self._parent(root_fd, item.parts)
        try:
            _unlink_quiet(name, dfd, b"/".join(item.parts))
            if e.kind == "symlink":
                assert e.target is not None
                os.symlink(e.target, name, dir_fd=dfd)
            elif e.kind == "fifo":
                os.mkfifo(name, 0o600, dir_fd=dfd)
            else:
                try:
                    os.mknod(name, KIND_BITS[e.kind] | 0o600, e.rdev, dir_fd=dfd)
                except PermissionError:
                    self._problem(item, "device node not restored: needs root")
                    return
            if os.geteuid() == 0:
                os.chown(name, *owner_ids(e), dir_fd=dfd, follow_symlinks=False)
            if e.kind != "symlink":
                self._set_xattrs(_proc_path(dfd, name), e)
                os.chmod(name, e.mode, dir_fd=dfd)
            os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)
            self.result.others += 1
        finally:
            os.close(dfd)

    def _dir_metadata(self, root_fd: int, item: _Item) -> None:
        """Give a restored directory its recorded metadata; a failure is reported, and the
        other directories still get theirs."""
        try:
            self._metadata_at(root_fd, item.parts, item.entry)
        except OSError as err:
            self._problem(item, f"directory's mode, owner or times not set ({err.strerror})")

    def _open_at(self, root_fd: int, parts: tuple[bytes, ...], extra: int = 0) -> int:
        """An fd of the file or directory at `parts` in the target (the target itself at
        ``()``), reached without following symlinks. Only metadata is changed through it."""
        if not parts:
            return os.dup(root_fd)
        dfd = self._parent(root_fd, parts)
        try:
            return os.open(parts[-1], _OPEN_META | extra, dir_fd=dfd)
        finally:
            os.close(dfd)

    def _metadata_at(self, root_fd: int, parts: tuple[bytes, ...], e: Entry) -> None:
        """Give a file or directory already in place (a file kept, a directory, the target)
        its recorded metadata: kept inode flags, then `_apply_metadata`. A seal it has from
        an earlier restore (+i/+a) is lifted first, as it would refuse every change; the
        recorded seal is set again at the end (`_finish`). OSError."""
        fd = self._open_at(root_fd, parts, os.O_DIRECTORY if e.kind == "dir" else 0)
        try:
            _lift_seal(fd)
            self._set_flags(fd, e.flags & ~fsflags.SEALING)
            self._apply_metadata(fd, e, parts)
        finally:
            os.close(fd)


def owner_ids(e: Entry) -> tuple[int, int]:
    """The owner a restore gives an entry: by name when the entry records one (a hub
    client's entries do) that this machine knows, as tar does; else by number."""
    uid = _uid_named(e.uname) if e.uname is not None else None
    gid = _gid_named(e.gname) if e.gname is not None else None
    return (e.uid if uid is None else uid, e.gid if gid is None else gid)


@functools.lru_cache(maxsize=256)
def _uid_named(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


@functools.lru_cache(maxsize=256)
def _gid_named(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _extent_writer(fd: int, extents: Extents | None) -> Callable[[bytes, int], None]:
    """Write a chunk of a blob, found at `blob_offset` in it, where it belongs in the file:
    appended for a dense file, at its data extents' offsets for a sparse one."""
    if extents is None:
        return lambda chunk, blob_offset: _write_all(fd, memoryview(chunk))
    places = BlobPlaces(extents)

    def place(chunk: bytes, blob_offset: int) -> None:
        view = memoryview(chunk)
        for file_offset, n in places.ranges(blob_offset, len(chunk)):
            piece, view = view[:n], view[n:]
            done = 0
            while done < n:
                done += os.pwrite(fd, piece[done:], file_offset + done)

    return place


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _without_link(e: Entry) -> Entry:
    from dataclasses import replace

    return replace(e, hardlink=None)


def _unlink_quiet(name: bytes, dir_fd: int, path: bytes) -> None:
    """Remove what is at `name` (`path` in the target), if anything: never a directory."""
    try:
        _unsealed(lambda: os.unlink(name, dir_fd=dir_fd), name, dir_fd, path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise VaultError(
            f"{display_path(path)} exists as a directory: restore into an empty directory"
        ) from None


def _replace_nofollow(src: bytes, dst: bytes, dir_fd: int, path: bytes) -> None:
    try:
        _unsealed(lambda: os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd), dst, dir_fd, path)
    except OSError as e:
        if e.errno in (errno.EISDIR, errno.ENOTEMPTY):
            raise VaultError(
                f"{display_path(path)} exists as a directory: restore into an empty directory"
            ) from None
        raise


def _unsealed(replace: Callable[[], None], name: bytes, dir_fd: int, path: bytes) -> None:
    """Run `replace`, which unlinks `name` or renames onto it. A file there sealed with
    +i/+a (by an earlier restore) refuses that with EPERM: the seal belongs to the file
    being replaced, so it is lifted and `replace` runs again. A refusal that stays is one
    line (`VaultError`)."""
    try:
        replace()
        return
    except PermissionError as err:
        refused = err
    try:
        if _lift_seal_at(name, dir_fd):
            replace()
            return
    except PermissionError as err:
        refused = err
    raise VaultError(
        f"cannot replace {display_path(path)} in the target ({refused.strerror}): if `lsattr` shows "
        "it immutable or append-only (i, a), restore as root or run `chattr -i -a` on it"
    )


def _lift_seal(fd: int) -> int:
    """Clear +i/+a of an open file or directory; what was lifted (0: nothing, also where
    its flags cannot be read: a restore wrote none there). OSError if lifting fails."""
    try:
        sealed = fsflags.get_flags(fd) & fsflags.SEALING
    except OSError:
        return 0
    if sealed:
        fsflags.set_flags(fd, 0, fsflags.SEALING)
    return sealed


def _lift_seal_at(name: bytes, dir_fd: int) -> bool:
    """Clear +i/+a of the regular file at `name` (only regular files and directories carry
    inode flags, and opening a device is not neutral); whether it had any. OSError."""
    if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        return False
    fd = os.open(name, _OPEN_META, dir_fd=dir_fd)
    try:
        return _lift_seal(fd) != 0
    finally:
        os.close(fd)


def _seal_not_lifted(where: str, err: OSError) -> VaultError:
    return VaultError(
        f"{where} is immutable or append-only (chattr +i/+a) and that cannot be lifted "
        f"({err.strerror}): restore as root, or run `chattr -i -a` on it"
    )


def _as_recorded(dir_fd: int, name: bytes, st: os.stat_result, e: Entry) -> bool:
    """Whether what is at `name` (`st`, not followed) is what a restore of `e` would put
    there: the same kind (by `model.KIND_BITS`; `Entry.mode` holds permission bits only),
    and a file's content, a symlink's target, a device's number as recorded."""
    if stat.S_IFMT(st.st_mode) != KIND_BITS[e.kind]:
        return False
    if e.kind == "file":
        return st.st_size == e.size and _sha256_at(dir_fd, name, e) == e.blob
    if e.kind == "symlink":
        return os.readlink(name, dir_fd=dir_fd) == e.target
    if e.kind in ("chardev", "blockdev"):
        return st.st_rdev == e.rdev
    return True  # a directory (its entries are items of their own), a FIFO


def _sha256_at(dir_fd: int, name: bytes, e: Entry) -> BlobId | None:
    """The blob a regular file in the target would have as `e` records it (its SHA-256,
    or a sparse entry's data extents'); None: it changed while being read, or holds data
    where `e` has holes."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        return hash_stream(fd, st) if e.sparse is None else sparse_digest(fd, st, e.sparse)
    except ChangedWhileReading:
        return None
    finally:
        os.close(fd)


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/" % dir_fd + name


def _listing(vault: Contents, tree: TreeId) -> dict[bytes, Entry]:
    """A directory's entries by name, every name checked, duplicates refused."""
    out: dict[bytes, Entry] = {}
    for e in vault.tree(tree):
        check_name(e.name)
        if e.name in out:
            raise UnsafeName(f"tree {tree.hex()[:16]} lists {e.name!r} twice")
        out[e.name] = e
    return out


def _walk(vault: Contents, tree: TreeId, prefix: tuple[bytes, ...]) -> Iterator[_Item]:
    """Every entry under `tree`, each listing's names checked first (`_listing`)."""
    for parts, e in walk(lambda t: _listing(vault, t).values(), tree, prefix):
        yield _Item(parts, e)


def select(
    vault: Contents,
    root: TreeId,
    selection: list[tuple[bytes, ...]],
    version: VersionInfo | None = None,
) -> Iterator[_Item]:
    """Every entry under ``root`` (or under the selected paths, with their parents)."""
    if not selection:
        yield from _walk(vault, root, ())
        return
    where = f"{version.collection}@v{version.number}" if version else "this version"
    for parts in selection:
        entries = _listing(vault, root)
        prefix: tuple[bytes, ...] = ()
        found: Entry | None = None
        for i, name in enumerate(parts):
            found = entries.get(name)
            if found is None:
                raise UsageError(f"{display_path(b'/'.join(parts))} is not in {where}")
            prefix = (*prefix, name)
            if i < len(parts) - 1:
                if found.kind != "dir" or found.tree is None:
                    raise UsageError(f"{display_path(b'/'.join(prefix))} is not a directory")
                yield _Item(prefix, found)  # parents, so they exist with their metadata
                entries = _listing(vault, found.tree)
        if found is None:
            continue
        yield _Item(prefix, found)
        if found.kind == "dir" and found.tree is not None:
            yield from _walk(vault, found.tree, prefix)


def selected_entries(vault: Vault, root: TreeId, selection: list[tuple[bytes, ...]]) -> Iterator[Entry]:
    """The entries a restore of ``selection`` (everything when empty) would write."""
    return (item.entry for item in select(vault, root, selection))


def bands_needed(
    vault: Vault,
    root: TreeId,
    selection: list[tuple[bytes, ...]],
    *,
    skip_unknown: bool = False,
) -> dict[BandId, int]:
    """Band → bytes of content that restoring ``selection`` of the tree needs from it.

    A blob recorded as lost needs no band (there is none to restore; ``restore fetch``
    lists its files). A blob the catalog does not know otherwise is an error, unless
    `skip_unknown` (``restore fetch``, which restores the other files and lists that one
    as missing)."""
    needed: dict[BandId, int] = {}
    seen: set[bytes] = set()
    for entry in selected_entries(vault, root, selection):
        if entry.kind != "file" or entry.blob is None or entry.blob in seen:
            continue
        seen.add(entry.blob)
        ref = vault.catalog.blob(entry.blob)
        if ref is None:
            if skip_unknown or vault.catalog.lost_blob(entry.blob) is not None:
                continue
            raise CorruptionError(f"blob {entry.blob.hex()[:16]} is not in the catalog: run `vaultfs check`")
        needed[ref.band] = needed.get(ref.band, 0) + ref.size
    return needed


def fetch(
    vault: Vault,
    collection: str,
    number: int | None,
    paths: list[str],
    target: Path,
    progress: RestoreProgress | None = None,
    *,
    overwrite: bool = False,
) -> RestoreResult:
    """``vaultfs restore fetch``: write the selected paths of a version under ``target``
    (files already there that differ: refused, unless `overwrite`)."""
    version = vault.resolve_version(collection, number)
    selection = parse_selection(paths)
    return Restorer(vault, version, target, overwrite=overwrite).run(selection, progress)
