#!/usr/bin/env python3
"""The floor of `find` and `ls -lR` through pyfuse3 + trio: a mount that does no work at all.

    tools/bench/fuse_floor.py --data DIR [--rounds 5]

Mirrors the shape of DIR (names and kinds only, held in memory with every reply's
attributes built in advance) as a read-only pyfuse3 filesystem, the way vaultfs's mount
answers (readdirplus with long timeouts, opendir/releasedir, the same mount options,
FUSE_POSIX_ACL, and the same xattr answers: "no ACL" (ENODATA), EOPNOTSUPP for
``security.*``), then times `find MOUNT | wc -l` and `ls -lR MOUNT` on fresh mounts.
Whatever vaultfs's own handlers cost comes on top of this; if the floor alone exceeds a
target, no handler work can meet it with this stack. `tools/bench/mount_bench.py` runs
this mount in the same rounds as vaultfs's (tool "floor"), so their ratio is measured on
one machine state. Needs the repository's .venv (pyfuse3, trio) and fuse3.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = 1  # pyfuse3.ROOT_INODE


def load_tree(data: Path) -> tuple[dict[int, list[tuple[bytes, int]]], dict[int, bool]]:
    """inode → sorted children (name, inode) for directories; inode → is-directory."""
    children: dict[int, list[tuple[bytes, int]]] = {}
    is_dir: dict[int, bool] = {ROOT: True}
    next_ino = ROOT + 1

    def walk(path: bytes, ino: int) -> None:
        nonlocal next_ino
        entries = []
        with os.scandir(path) as it:
            for e in sorted(it, key=lambda e: e.name):
                child, next_ino = next_ino, next_ino + 1
                d = e.is_dir(follow_symlinks=False)
                is_dir[child] = d
                entries.append((e.name, child))
                if d:
                    walk(e.path, child)
        children[ino] = entries

    walk(os.fsencode(data), ROOT)
    return children, is_dir


def serve(data: Path, mountpoint: Path) -> None:
    import pyfuse3
    import trio

    children, is_dir = load_tree(data)

    def attr(ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if is_dir[ino] else (stat.S_IFREG | 0o644)
        a.st_nlink = 1
        a.entry_timeout = a.attr_timeout = 365 * 86400  # as vaultfs's version trees
        return a

    attrs = {ino: attr(ino) for ino in is_dir}
    by_name = {(parent, name): ino for parent, kids in children.items() for name, ino in kids}

    class Floor(pyfuse3.Operations):
        enable_acl = True  # as vaultfs: the kernel asks each node for its ACLs once

        async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
            return attrs[inode]

        async def lookup(self, parent: int, name: bytes, ctx: object = None) -> pyfuse3.EntryAttributes:
            ino = by_name.get((parent, name))
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attrs[ino]

        async def opendir(self, inode: int, ctx: object) -> int:
            return inode

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            for i, (name, ino) in enumerate(children[fh][start_id:], start_id + 1):
                if not pyfuse3.readdir_reply(token, name, attrs[ino], i):
                    return

        async def releasedir(self, fh: int) -> None:
            return None

        async def getxattr(self, inode: int, name: bytes, ctx: object = None) -> bytes:
            # as vaultfs answers a name an entry lacks (`ls -l` asks every entry)
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP if name.startswith(b"security.") else errno.ENODATA)

        async def listxattr(self, inode: int, ctx: object = None) -> list[bytes]:
            return []

    options = {"fsname=floor", "subtype=floor", "ro", "default_permissions", "nosuid", "nodev"}
    pyfuse3.init(Floor(), str(mountpoint), options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


def timed_on_fresh_mount(data: Path, mnt: Path, command: str) -> tuple[float, str]:
    """Mount the floor of `data` at `mnt`, time the shell `command`, unmount."""
    proc = subprocess.Popen([sys.executable, __file__, "--data", str(data), "--serve", str(mnt)])
    try:
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                raise SystemExit("the floor mount did not come up")
            time.sleep(0.05)
        t0 = time.perf_counter()
        out = subprocess.run(command, shell=True, check=True, capture_output=True, text=True).stdout
        return time.perf_counter() - t0, out
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the mount's own process
    args = p.parse_args()
    if args.serve:
        serve(args.data, args.serve)
        return 0
    times, ls_times = [], []
    entries = 0
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as tmp:
        mnt = Path(tmp)
        for _ in range(args.rounds):
            elapsed, out = timed_on_fresh_mount(args.data, mnt, f"find '{mnt}' | wc -l")
            times.append(elapsed)
            entries = int(out)
            ls_times.append(timed_on_fresh_mount(args.data, mnt, f"ls -lR '{mnt}' > /dev/null")[0])
    for what, ts in (("find", times), ("ls -lR", ls_times)):
        print(
            f"{what} over {entries} entries through a do-nothing pyfuse3 mount: median "
            f"{statistics.median(ts):.3f} s (min {min(ts):.3f}, max {max(ts):.3f}, "
            f"{len(ts)} fresh mounts)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
