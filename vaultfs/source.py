"""Reading a source tree: the scan (stat only) and the careful read of one file.

The scan walks a collection's directory with ``os.scandir`` on bytes paths (so
names that are not UTF-8 survive), never follows symlinks, and records every
kind of entry. It produces a `ScannedDir` skeleton; file contents are read
later by `read_small` / `hash_stream` so that the total is known for progress
and ETA before the slow part starts.

A file that vanishes, cannot be read, or changes while it is read becomes a
`Problem`; the caller reports it and leaves the file out of the version. Metadata the
scan cannot keep (an xattr it may not read, an inode flag no restore could give back,
`vaultfs.fsflags`) is counted by kind in `Scanner.not_kept`, and the snapshot reports
each kind once with its count.
"""

from __future__ import annotations

import errno
import hashlib
import marshal
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from vaultfs import fsflags
from vaultfs.fsutil import kind_of
from vaultfs.model import BlobId, Entry, Kind, TreeId, to_text
from vaultfs.output import display_path  # re-exported: the one escaping of names
from vaultfs.sparse import BlobPlaces, Extents, data_size, holes, tidy

if TYPE_CHECKING:  # only the scan's annotations: restore fetch and the mount need no pathspec
    from vaultfs.ignore import Rules, Scope

READ_CHUNK = 1024 * 1024
NotKept = Counter[str]  # kind of metadata not kept → how many times this scan met it


@dataclass(frozen=True, slots=True)
class Problem:
    """A source entry that could not be backed up as it is."""

    path: bytes  # relative to the collection root
    reason: str

    def display(self) -> str:
        return f"{display_path(self.path)}: {self.reason}"


class FileStat(NamedTuple):
    """The fields of a stat result vaultfs keeps for a scanned entry.

    A scan holds one per file until the version is written; an ``os.stat_result``
    is ~640 bytes (25k files: 16 MiB), this is less than half of that.
    """

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int

    @staticmethod
    def of(st: os.stat_result) -> FileStat:
        return FileStat(
            st.st_mode,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_rdev,
        )


StatLike = FileStat | os.stat_result


@dataclass(slots=True)
class ScannedFile:
    """A regular file seen by the scan; ``blob`` is filled by the files cache or by reading."""

    rel: bytes
    name: bytes
    st: StatLike
    xattrs: tuple[tuple[bytes, bytes], ...]
    flags: int = 0  # kept inode flags (`vaultfs.fsflags.KEPT`)
    blob: BlobId | None = None
    needs_read: bool = True
    skipped: bool = False
    link_of: ScannedFile | None = None  # second and later names of a hard-linked file
    sparse: Extents | None = None  # a file with holes: its data map (`data_map`)


@dataclass(slots=True)
class ScannedDir:
    """A directory seen by the scan.

    `signature` digests the stat data of its entries (`listing_signature`); None when
    the listing had problems or hard-linked files, whose entries depend on more than
    their own stat data. When it equals the signature the previous snapshot recorded
    (`unchanged`), every entry is as recorded then: the scan keeps only the
    subdirectories (to walk them) and reads no xattrs, and the snapshot reuses the
    recorded listing.
    """

    rel: bytes
    name: bytes
    st: StatLike
    xattrs: tuple[tuple[bytes, bytes], ...]  # () for the subdirectories of an unchanged dir
    flags: int = 0  # kept inode flags; 0 for the subdirectories of an unchanged dir
    children: list[ScannedDir | ScannedFile | Entry] = field(default_factory=list)
    unreadable: bool = False  # listing failed: left out of the version, reported
    signature: bytes | None = None
    unchanged: bool = False


KnownSignature = Callable[[bytes], bytes | None]  # a directory's path → its recorded signature


def listing_signature(rows: list[tuple[object, ...]]) -> bytes:
    """SHA-256 over (name, mode, ino, dev, nlink, uid, gid, size, mtime_ns, ctime_ns, rdev)
    of a directory's entries in name order. Any change to an entry (content: size,
    mtime or ctime; xattrs, owner, mode, links: ctime) changes it, as do added, removed
    and renamed names. ``marshal`` format 2 has no back-references, so equal rows give
    equal bytes (4x faster than repr); a different Python that wrote other bytes would
    only make one snapshot take the slow path. `_LISTING_KIND` names what a listing holds:
    a vaultfs that keeps more metadata than the one that wrote the memo (ACLs, xattrs of
    every namespace and inode flags since 2) changes it, so no listing without them is
    reused; each directory is listed anew once."""
    return hashlib.sha256(_LISTING_KIND + marshal.dumps(rows, 2)).digest()


_LISTING_KIND = b"vaultfs listing 2\0"


class Scanner:
    """Walks one source tree. Problems are collected in ``problems``."""

    def __init__(self, root: bytes, known: KnownSignature | None = None, rules: Rules | None = None) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.not_kept: NotKept = Counter()
        self.excluded: list[bytes] = []  # entries left out by `rules` (nothing below them was read)
        self._rules = rules
        self.files: list[ScannedFile] = []
        self._inodes: dict[tuple[int, int], ScannedFile] = {}
        self._known = known

    def scan(self) -> ScannedDir:
        st = FileStat.of(os.lstat(self.root))
        top = ScannedDir(b"", b"", st, *self._meta(self.root, b""))
        self._walk(top, self.root, self._rules.root_scope() if self._rules is not None else None)
        return top

    def _meta(self, path: bytes, rel: bytes) -> tuple[tuple[tuple[bytes, bytes], ...], int]:
        """The xattrs and kept inode flags of a regular file or directory."""
        return read_xattrs(path, self.problems, rel, self.not_kept), read_flags(path, self.not_kept)

    def _walk(self, node: ScannedDir, path: bytes, scope: Scope | None = None) -> None:
        try:
            with os.scandir(path) as it:
                names = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not node.rel:
                raise
            self.problems.append(Problem(node.rel, f"cannot list directory ({_why(e)})"))
            node.unreadable = True
            return
        problems_before = len(self.problems), self.not_kept.total()
        listing = self._stat_kept(node, names, scope)
        rows: list[tuple[object, ...]] = []
        linked = False
        for de, st in listing:
            rows.append(
                (
                    de.name,
                    st.st_mode,
                    st.st_ino,
                    st.st_dev,
                    st.st_nlink,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_rdev,
                )
            )
            linked = linked or (st.st_nlink > 1 and stat.S_ISREG(st.st_mode))
        if (len(self.problems), self.not_kept.total()) == problems_before and not linked:
            node.signature = listing_signature(rows)
            if self._known is not None and self._known(node.rel) == node.signature:
                node.unchanged = True
                for de, st in listing:
                    if stat.S_ISDIR(st.st_mode):
                        child = ScannedDir(_rel(node, de.name), de.name, FileStat.of(st), ())
                        node.children.append(child)
                        self._walk(child, path + b"/" + de.name, scope and scope.child(de.name))
                return
        for de, st in listing:
            self._add(node, path, de.name, st, scope)
        if (len(self.problems), self.not_kept.total()) != problems_before:
            # e.g. an xattr that could not be read: listed (and reported) again next time
            node.signature = None

    def _stat_kept(
        self, node: ScannedDir, names: list[os.DirEntry[bytes]], scope: Scope | None
    ) -> list[tuple[os.DirEntry[bytes], os.stat_result]]:
        """The entries of a directory with their lstat, less those the rules leave out
        (`vaultfs.ignore`: they are in no row of the signature, and nothing below them is
        listed)."""
        if scope is not None:
            scope.listed([de.name for de in names])
        listing = []
        for de in names:
            try:
                st = de.stat(follow_symlinks=False)
            except OSError as e:
                self.problems.append(Problem(_rel(node, de.name), _vanished_or(e)))
                continue
            if scope is not None and not scope.decide(de.name, st).kept:
                self.excluded.append(_rel(node, de.name))
                continue
            listing.append((de, st))
        return listing

    def _add(
        self, node: ScannedDir, path: bytes, name: bytes, st: os.stat_result, scope: Scope | None
    ) -> None:
        """Record one entry of a directory whose listing is built anew."""
        rel = _rel(node, name)
        full = path + b"/" + name
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            child = ScannedDir(rel, name, FileStat.of(st), *self._meta(full, rel))
            node.children.append(child)
            self._walk(child, full, scope and scope.child(name))
        elif stat.S_ISREG(mode):
            f = ScannedFile(rel, name, FileStat.of(st), *self._meta(full, rel))
            if st.st_nlink > 1:
                first = self._inodes.setdefault((st.st_dev, st.st_ino), f)
                if first is not f:
                    f.link_of = first
                    f.needs_read = False
            node.children.append(f)
            self.files.append(f)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(full)
            except OSError as e:
                self.problems.append(Problem(rel, _vanished_or(e)))
                return
            node.children.append(_entry(name, "symlink", st, target=target))
        else:
            kind: Kind = (
                "fifo"
                if stat.S_ISFIFO(mode)
                else "socket"
                if stat.S_ISSOCK(mode)
                else "chardev"
                if stat.S_ISCHR(mode)
                else "blockdev"
            )
            xattrs = read_xattrs(full, self.problems, rel, self.not_kept)
            node.children.append(_entry(name, kind, st, xattrs=xattrs))


def file_entry(f: ScannedFile, uname: str | None = None, gname: str | None = None) -> Entry:
    """The entry of a file the scan found and the file saver (or a files cache) gave a blob
    (`uname`, `gname`: the owners' names, which a hub's client records)."""
    st = f.st
    return Entry(
        name=f.name,
        kind="file",
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size,
        blob=f.blob,
        nlink=st.st_nlink,
        hardlink=f.link_of.rel if f.link_of is not None else None,
        xattrs=f.xattrs,
        flags=f.flags,
        sparse=f.sparse,
        uname=uname,
        gname=gname,
    )


def dir_entry(d: ScannedDir, sub: TreeId, uname: str | None = None, gname: str | None = None) -> Entry:
    """The entry of a scanned directory whose listing has the id `sub` (`uname`, `gname`: as
    for `file_entry`)."""
    st = d.st
    return Entry(
        name=d.name,
        kind="dir",
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        tree=sub,
        xattrs=d.xattrs,
        flags=d.flags,
        uname=uname,
        gname=gname,
    )


def kept_files(root: bytes, rules: Rules, unlisted: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(path below `root`, full path) of every regular file `rules` keep, in a scan's order,
    without reading anything but listings: what a snapshot would take. An excluded directory
    is not listed (the scope is asked before anything below it, as `Scanner` asks it); a
    directory that cannot be listed is added to `unlisted` (the root raises OSError)."""
    stack: list[tuple[bytes, bytes, Scope]] = [(root, b"", rules.root_scope())]
    while stack:
        path, rel, scope = stack.pop()
        try:
            with os.scandir(path) as it:
                names = sorted(it, key=lambda e: e.name)
        except OSError:
            if not rel:
                raise
            unlisted.append(rel)
            continue
        scope.listed([de.name for de in names])
        below: list[tuple[bytes, bytes, Scope]] = []
        for de in names:
            try:
                st = de.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since it was listed
            if not scope.decide(de.name, st).kept:
                continue
            sub, full = rel + b"/" + de.name if rel else de.name, path + b"/" + de.name
            if stat.S_ISDIR(st.st_mode):
                below.append((full, sub, scope.child(de.name)))
            elif stat.S_ISREG(st.st_mode):
                yield sub, full
        stack.extend(reversed(below))


def _rel(node: ScannedDir, name: bytes) -> bytes:
    return node.rel + b"/" + name if node.rel else name


def _entry(
    name: bytes,
    kind: Kind,
    st: os.stat_result,
    *,
    target: bytes | None = None,
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
) -> Entry:
    return Entry(
        name=name,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=len(target) if target is not None else 0,
        target=target,
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0,
        xattrs=xattrs,
    )


def read_xattrs(
    path: bytes, problems: list[Problem], rel: bytes, not_kept: NotKept
) -> tuple[tuple[bytes, bytes], ...]:
    """Every extended attribute of a path (not following symlinks): ``user.*``,
    ``trusted.*`` and ``security.*`` (which Linux lists and lets read only as root, or
    not at all), the POSIX ACLs (``system.posix_acl_access``/``_default``, kept in the
    kernel's binary form) and whatever else the source lists. A name this user may not
    read is counted in `not_kept` by namespace; other read errors are problems."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENOENT):
            return ()
        if e.errno in (errno.EPERM, errno.EACCES):
            not_kept[f"entries' extended attributes (cannot list: {_why(e)})"] += 1
            return ()
        problems.append(Problem(rel, f"cannot list extended attributes ({_why(e)})"))
        return ()
    if not names:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((os.fsencode(name), os.getxattr(path, name, follow_symlinks=False)))
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES):
                namespace = name.split(".", 1)[0]
                not_kept[f"xattr(s) in {display_path(namespace)}.* (cannot read: {_why(e)})"] += 1
            elif e.errno != errno.ENODATA:
                problems.append(
                    Problem(rel, f"cannot read extended attribute {display_path(name)} ({_why(e)})")
                )
    return tuple(out)


def read_flags(path: bytes, not_kept: NotKept) -> int:
    """The kept inode flags of a regular file or directory (`vaultfs.fsflags.KEPT`); the
    others, and flags that cannot be read, are counted in `not_kept`.

    The ioctl needs an open file: O_NONBLOCK, O_NOFOLLOW and an fstat check keep a FIFO or
    device swapped in since the scan's stat from being waited on or asked; nothing is read
    (no atime moves). A file that vanished meanwhile is the read's business, not this. A
    file under a lease is opened as `open_source` opens it: once the holder has let go.
    """
    how = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = _open_noatime(path, how)
        except BlockingIOError:  # a lease (a Samba client's oplock): wait for its break, as a read does
            fd = _open_leased(path, how & ~os.O_NONBLOCK)
    except NotRegularFile:  # a FIFO or device swapped in since the scan's stat: no flags
        return 0
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP):  # vanished, or a symlink now: no flags
            return 0
        not_kept[f"entries' inode flags (cannot open: {_why(e)})"] += 1
        return 0
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return 0
        flags = fsflags.get_flags(fd)
    except OSError as e:
        not_kept[f"entries' inode flags (cannot read: {_why(e)})"] += 1
        return 0
    finally:
        os.close(fd)
    for kind in fsflags.not_kept(flags):
        not_kept[kind] += 1
    return flags & fsflags.KEPT


class ChangedWhileReading(Exception):
    """The file's size or times moved while it was read."""


class NotRegularFile(Exception):
    """At read time the path is no longer a regular file (replaced after the scan)."""

    def __init__(self, kind: str) -> None:
        self.reason = f"is not a regular file any more (now a {kind})"
        super().__init__(self.reason)


def open_source(path: bytes) -> tuple[int, os.stat_result]:
    """Open a source file to read, and its fstat; NotRegularFile if it is something else now.

    Between the scan and the read a file can be replaced by anything. A blocking open
    of a FIFO with no writer would wait forever, holding the vault lock; with
    O_NONBLOCK it returns at once, and the fstat right after says what was opened
    before a byte is read. The regular file then gets O_NONBLOCK cleared, so reading it
    behaves exactly as before. Symlinks are never followed, atime is not updated.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = _open_noatime(path, flags)
    except BlockingIOError:  # a lease (e.g. a Samba oplock): wait for its break, as before
        fd = _open_leased(path, flags & ~os.O_NONBLOCK)
    except OSError as e:
        kind = _kind_now(path) if e.errno in (errno.ELOOP, errno.ENXIO) else None
        if kind is not None and kind != "regular file":  # ELOOP: a symlink; ENXIO: a socket
            raise NotRegularFile(kind) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(kind_of(st.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _open_noatime(path: bytes | str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
        return os.open(path, flags)


def _open_leased(path: bytes, flags: int) -> int:
    """Open a file whose lease made the non-blocking open fail, waiting for the lease break.

    The path is pinned first with O_PATH (which opens nothing and breaks no lease) and
    checked to be a regular file; the blocking open goes through that handle, so it
    opens the same inode and cannot end up waiting on a FIFO swapped in meanwhile.
    """
    pinned = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(pinned)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(kind_of(st.st_mode))
        # Following this magic link is the point: it leads to the pinned inode itself.
        return _open_noatime(f"/proc/self/fd/{pinned}", flags & ~os.O_NOFOLLOW)
    finally:
        os.close(pinned)


def _kind_now(path: bytes) -> str | None:
    try:
        return kind_of(os.lstat(path).st_mode)
    except OSError:
        return None


def same_file_state(a: StatLike, b: StatLike) -> bool:
    return (
        a.st_ino == b.st_ino
        and a.st_size == b.st_size
        and a.st_mtime_ns == b.st_mtime_ns
        and a.st_ctime_ns == b.st_ctime_ns
    )


def read_small(fd: int, before: os.stat_result) -> tuple[memoryview, BlobId]:
    """Read a whole (small) file into one buffer; ChangedWhileReading if it moved meanwhile.

    The buffer is read into directly (no list of chunks joined into a second copy). No
    read past the end is needed to notice growth: a file that grows, shrinks or is
    rewritten changes its size or times, which the fstat after the read compares.
    """
    size = before.st_size
    buf = bytearray(size)
    view = memoryview(buf)
    n = 0
    while n < size:
        got = os.readv(fd, [view[n:]])
        if got == 0:
            break
        n += got
    if n != size or not same_file_state(before, os.fstat(fd)):
        raise ChangedWhileReading
    return view, BlobId(hashlib.sha256(buf).digest())


def read_into(fd: int) -> Callable[[memoryview, int], int]:
    """A reader for `BandWriter.add_blob_stream`: preadv straight into the frame buffer."""
    return lambda view, offset: os.preadv(fd, [view], offset)


def has_holes(st: os.stat_result) -> bool:
    """Whether a file may have holes: fewer bytes allocated than its size. (Compressed
    filesystems — ZFS, btrfs — say so of compressible files too; `data_map` then finds
    no hole with one lseek.)"""
    return st.st_blocks * 512 < st.st_size


def data_map(fd: int, size: int) -> Extents | None:
    """The data extents of an open file found with SEEK_DATA/SEEK_HOLE, or None when it
    has no hole (or the filesystem cannot say: it then reads as one extent of data).
    The map is `sparse.tidy`: whole 512-byte blocks, at most `sparse.MAX_EXTENTS` extents."""
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= size:
            return None
        extents: list[tuple[int, int]] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but a hole from pos to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            pos = end
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return tidy(extents, size)


def read_extents_into(fd: int, extents: Extents) -> Callable[[memoryview, int], int]:
    """A reader for `BandWriter.add_blob_stream` of a sparse file's blob: blob offsets are
    mapped to the file offsets of its data extents (a read never crosses an extent)."""
    places = BlobPlaces(extents)

    def read(view: memoryview, offset: int) -> int:
        for file_offset, n in places.ranges(offset, len(view)):
            return os.preadv(fd, [view[:n]], file_offset)
        return 0

    return read


def hash_extents(fd: int, before: os.stat_result, extents: Extents) -> BlobId:
    """SHA-256 of a sparse file's blob (its data extents, concatenated);
    ChangedWhileReading if the file moved or an extent came back short."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(READ_CHUNK))
    read = read_extents_into(fd, extents)
    n, total = 0, data_size(extents)
    while n < total:
        got = read(buf[: min(READ_CHUNK, total - n)], n)
        if not got:
            break
        h.update(buf[:got])
        n += got
    if n != total or not same_file_state(before, os.fstat(fd)):
        raise ChangedWhileReading
    return BlobId(h.digest())


def sparse_digest(fd: int, before: os.stat_result, extents: Extents) -> BlobId | None:
    """The blob an open file would have with the data map `extents` (`hash_extents`); None
    when it holds anything but zeros outside them (then it is other content). Only the
    data the filesystem reports outside `extents` is read."""
    blob = hash_extents(fd, before, extents)
    for off, length in holes(extents, before.st_size):
        pos, end = off, off + length
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: only a hole from here to the end
                    raise
                break
            stop = min(end, os.lseek(fd, pos, os.SEEK_HOLE))
            while pos < stop:
                chunk = os.pread(fd, min(READ_CHUNK, stop - pos), pos)
                if not chunk:
                    raise ChangedWhileReading
                if chunk.count(0) != len(chunk):
                    return None
                pos += len(chunk)
    return blob


def hash_stream(fd: int, before: os.stat_result) -> BlobId:
    """SHA-256 of a large file read in chunks; ChangedWhileReading if it moved."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(READ_CHUNK))
    n = 0
    while n <= before.st_size:
        got = os.preadv(fd, [buf], n)
        if not got:
            break
        h.update(buf[:got])
        n += got
    if n != before.st_size or not same_file_state(before, os.fstat(fd)):
        raise ChangedWhileReading
    return BlobId(h.digest())


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _vanished_or(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "vanished during the scan"
    return f"cannot read ({_why(e)})"


__all__ = [
    "ChangedWhileReading",
    "NotKept",
    "NotRegularFile",
    "Problem",
    "ScannedDir",
    "ScannedFile",
    "Scanner",
    "data_map",
    "dir_entry",
    "display_path",
    "file_entry",
    "has_holes",
    "hash_extents",
    "hash_stream",
    "kept_files",
    "open_source",
    "read_extents_into",
    "read_into",
    "read_small",
    "same_file_state",
    "sparse_digest",
    "to_text",
]
