"""pyfuse3 `Operations` over a `VaultView`: translation and errno only.

Each handler asks `vaultfs.mount.view` and converts the answer; `errno_of` is the one
place where errors become errno values. Only `FUSEError` may leave a handler
(any other exception would end the mount): `_edge` logs an unexpected one with
its traceback and answers EIO, and the mount goes on serving.

Concurrency: handlers run in the trio loop. Catalog lookups are short
synchronous LMDB reads (never across an ``await``); file reads, which may
decompress frames or wait for the store, run in worker threads under a
`trio.CapacityLimiter`.

Opening a file whose band is not readable now answers ENODATA at once (never
EAGAIN or EIO, never blocking for hours); before that, ``on_unreadable`` (the
mount's restore service) is told the band and the opener (pid, uid, file), and may request
the band's restore (it returns within seconds; see `vaultfs.mount`).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import BandId
from vaultfs.mount import view as vfs
from vaultfs.mount.askers import Opener
from vaultfs.mount.previews import PreviewFile, Previews

log = logging.getLogger("vaultfs.mount")

P = ParamSpec("P")
R = TypeVar("R")
OnUnreadable = Callable[[BandId, Opener], Awaitable[None]]  # (band, who opened which file)
Handle = vfs.OpenFile | vfs.StatusFile | PreviewFile

_ERRNO: tuple[tuple[type[BaseException], int], ...] = (
    (vfs.NotFound, errno.ENOENT),
    (vfs.NotADirectory, errno.ENOTDIR),
    (vfs.NotASymlink, errno.EINVAL),
    (vfs.NoAttribute, errno.ENODATA),
    (vfs.Unsupported, errno.EOPNOTSUPP),
    (vfs.Archived, errno.ENODATA),
    (vfs.ReadOnly, errno.EROFS),
)


def errno_of(exc: BaseException) -> int:
    """The errno a domain error becomes; EIO for corruption and anything unexpected."""
    for cls, code in _ERRNO:
        if isinstance(exc, cls):
            return code
    return errno.EIO


def _edge(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only FUSEError out of a handler; log what the user needs to know."""

    @functools.wraps(fn)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except vfs.VfsError as e:
            raise pyfuse3.FUSEError(errno_of(e)) from None
        except CorruptionError as e:
            log.error("%s: %s (answered EIO)", fn.__name__, e.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except VaultError as e:
            log.error("%s: %s (answered EIO)", fn.__name__, e.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s (answered EIO; the mount goes on)", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def _entry(a: vfs.Attr) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = a.ino
    out.generation = 0
    out.entry_timeout = a.timeout
    out.attr_timeout = a.timeout
    out.st_mode = a.mode
    out.st_nlink = a.nlink
    out.st_uid = a.uid
    out.st_gid = a.gid
    out.st_rdev = a.rdev
    out.st_size = a.size
    out.st_blksize = vfs.BLKSIZE
    out.st_blocks = a.blocks
    out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = a.mtime_ns
    return out


def opener(ctx: Any, file: str) -> Opener:
    """Who opened `file`: the pid and uid of the FUSE request (0 when not given)."""
    return Opener(getattr(ctx, "pid", 0), getattr(ctx, "uid", 0), file)


def _missing(timeout: float) -> pyfuse3.EntryAttributes:
    """A lookup's "no such name" that the kernel keeps for `timeout` (st_ino 0)."""
    out = pyfuse3.EntryAttributes()
    out.st_ino = 0
    out.entry_timeout = timeout
    return out


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class VaultOperations(pyfuse3.Operations):
    """The read-only filesystem of `vaultfs.mount.view`, for the kernel."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    # FUSE_POSIX_ACL: the kernel reads each node's ACLs through getxattr (and caches them),
    # shows them to getfacl, and checks them with default_permissions as the source's
    # kernel did. Without it, the group bits (an ACL's mask) would open a file to its whole
    # owning group even where the ACL's group entry gives it less.
    enable_acl = True

    def __init__(
        self, view: vfs.VaultView, limiter: trio.CapacityLimiter, on_unreadable: OnUnreadable | None = None
    ) -> None:
        super().__init__()
        self.view = view
        self.limiter = limiter
        self.on_unreadable = on_unreadable
        self._handles: dict[int, Handle] = {}
        self.previews = Previews(view.vault.store)  # archived files' preview ranges
        self._inodes: dict[int, int] = {}  # fh → its file's inode
        self._next_fh = 1
        view.reply = _entry  # prepared directories keep their entries' replies ready

    # ---- browsing: answered from the catalog ---------------------------------------------

    @_edge
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            node, reply = self.view.lookup_reply(parent_inode, name)
        except vfs.NotFound:
            if not self.view.caches_misses(parent_inode):
                raise
            return _missing(vfs.IMMUTABLE_TIMEOUT)  # never there: the kernel need not ask again
        self.view.remember(node)
        return reply  # type: ignore[no-any-return]

    @_edge
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return _entry(self.view.attr(self.view.node(inode)))

    @_edge
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return self.view.readlink(inode)

    @_edge
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self.view.node(inode)
        if node.tree is None and node.kind not in ("root", "meta", "collection"):
            raise vfs.NotADirectory(node.path)
        return inode

    @_edge
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for name, node, reply, offset in self.view.replies(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, reply, offset):
                return
            self.view.remember(node)  # readdirplus: the kernel took a reference

    @_edge
    async def releasedir(self, fh: int) -> None:
        return None

    @_edge
    async def listxattr(self, inode: int, ctx: Any = None) -> Sequence[bytes]:
        return self.view.xattr_names(inode)

    @_edge
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        return self.view.xattr(inode, name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            for inode, count in inode_list:
                self.view.forget(inode, count)
        except Exception:  # forget must never raise
            log.exception("unexpected error in forget")

    @_edge
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        files, size = self.view.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = vfs.BLKSIZE
        out.f_blocks = (size + vfs.BLKSIZE - 1) // vfs.BLKSIZE
        out.f_bfree = out.f_bavail = 0
        out.f_files = files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = 255
        return out

    # ---- content -----------------------------------------------------------------------

    @_edge
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise _erofs()
        handle: Handle
        try:
            handle = self.view.open(inode)
        except vfs.Archived as e:
            who = opener(ctx, e.file)
            preview = await self._preview(inode, e, who)
            if preview is None:
                await self._unreadable(e.band, who)
                raise pyfuse3.FUSEError(errno.ENODATA) from None
            handle = preview  # a read decides (docs/mount.md, "Previews of archived files")
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._handles[fh] = handle
        if isinstance(handle, vfs.StatusFile | PreviewFile):
            # A status file is made at each open; a preview's reads must reach the mount one
            # by one (the kernel's read-ahead would ask for cold bytes): no page cache.
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        self._inodes[fh] = inode
        # Through the page cache; the pages the kernel holds are kept only if this file was
        # read whole and verified (docs/mount.md, "Which bytes are verified when").
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=inode in self.view.verified)

    @_edge
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # pyfuse3's stub says bytes, but it takes any buffer (PyObject_GetBuffer): a view of a
        # cached frame goes to the kernel without a copy.
        handle = self._handles[fh]
        try:
            peek = getattr(handle, "peek", None)
            data: bytes | memoryview | None = peek(off, size) if peek is not None else None  # cached
            if data is None:
                data = await trio.to_thread.run_sync(handle.read_view, off, size, limiter=self.limiter)
        except vfs.Archived as e:
            if isinstance(handle, PreviewFile):  # cold bytes of a preview: as an open was
                await self._unreadable(e.band, handle.opener)
            else:
                self._suspect(fh)
            raise
        except Exception:
            self._suspect(fh)
            raise
        if getattr(handle, "verified", False):
            self.view.verified.add(self._inodes[fh])
        return data

    def _suspect(self, fh: int) -> None:
        """A read failed: the pages earlier reads of this file left in the kernel's cache
        were not verified as a whole (the SHA-256 of the file may be what failed). Forget
        that the file was verified, and have the kernel drop its pages (in a thread, after
        this reply: the kernel waits for pages still being read)."""
        ino = self._inodes.get(fh)
        if ino is None:
            return
        self.view.verified.discard(ino)
        trio.lowlevel.spawn_system_task(self._drop_pages, ino)

    async def _drop_pages(self, ino: int) -> None:
        try:
            # Not under the reads' limiter: the reads it waits for may need every slot of it.
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except Exception:  # the mount goes on; the next open drops the pages anyway
            log.exception("could not drop the cached pages of inode %d", ino)

    async def _preview(self, inode: int, e: vfs.Archived, who: Opener) -> PreviewFile | None:
        """A handle on the preview ranges of an archived file, or None (no previews, or
        its band's preview object cannot be read: the open answers ENODATA as before)."""
        entry = self.view.node(inode).entry
        if entry is None or entry.blob is None or entry.sparse is not None:
            return None
        try:
            return await trio.to_thread.run_sync(
                self.previews.open, e.band, entry.blob, entry.size, e.state, who, limiter=self.limiter
            )
        except VaultError as err:
            log.error("open: preview object of band %s not used: %s", e.band, err.message)
            return None

    async def _unreadable(self, band: BandId, who: Opener) -> None:
        """Tell the restore service; whatever happens there, the open answers ENODATA."""
        if self.on_unreadable is None:
            return
        try:
            await self.on_unreadable(band, who)
        except Exception:
            log.exception("unexpected error deciding a restore of band %s (answered ENODATA)", band)

    @_edge
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        self._inodes.pop(fh, None)
        if handle is not None and not isinstance(handle, PreviewFile):
            self.view.release(handle)

    @_edge
    async def flush(self, fh: int) -> None:
        return None

    @_edge
    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    # ---- every change: read-only ---------------------------------------------------------

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        raise _erofs()

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise _erofs()

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise _erofs()

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _erofs()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise _erofs()

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise _erofs()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        raise _erofs()

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise _erofs()

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise _erofs()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _erofs()

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise _erofs()

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise _erofs()
