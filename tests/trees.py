"""Build source trees holding every kind of entry, and compare trees entry by entry."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
from pathlib import Path

NS = 123456789  # a nanosecond part that a float round-trip would lose


def write(path: Path, data: bytes, mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def make_every_kind(root: Path) -> None:
    """A tree with every kind of entry vaultfs must keep (docs/snapshots.md)."""
    root.mkdir(parents=True, exist_ok=True)
    write(root / "plain.txt", b"hello vault\n" * 100, 1_600_000_000 * 10**9 + NS)
    write(root / "empty", b"")
    write(root / "photos" / "2019" / "img_0001.raw", os.urandom(300_000))
    write(root / "photos" / "2019" / "copy_of_0001.raw", (root / "photos/2019/img_0001.raw").read_bytes())
    (root / "empty_dir").mkdir()
    (root / "nested" / "deeper" / "deepest").mkdir(parents=True)
    write(root / ("long_" + "n" * 200), b"long name")
    long_dir = root / ("d" * 120) / ("e" * 120)
    write(long_dir / "file_with_a_path_over_256_chars.txt", b"long path")
    # Names that are not valid UTF-8.
    raw = os.fsencode(root) + b"/caf\xe9-latin1.txt"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    os.mkdir(os.fsencode(root) + b"/dir-\xff\xfe")
    # Symlinks: relative, absolute, dangling, to a directory.
    os.symlink("plain.txt", root / "link_rel")
    os.symlink("/etc/hostname", root / "link_abs")
    os.symlink("does/not/exist", root / "link_dangling")
    os.symlink("photos", root / "link_dir")
    # Hard links, also across directories.
    write(root / "hard_a", b"hard linked content\n")
    os.link(root / "hard_a", root / "nested" / "hard_b")
    os.link(root / "hard_a", root / "hard_c")
    # Modes, owners, xattrs.
    write(root / "secret", b"only me").chmod(0o600)
    write(root / "setuid_tool", b"#!/bin/sh\n").chmod(0o4755)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    write(root / "owned", b"owned by someone else")
    if os.geteuid() == 0:
        os.chown(root / "owned", 1234, 5678)
        os.lchown(root / "link_rel", 4321, 8765)
    os.setxattr(root / "plain.txt", "user.comment", b"a note")
    os.setxattr(root / "plain.txt", "user.binary", bytes(range(256)))
    os.setxattr(root / "photos", "user.album", b"holidays")
    # Special files.
    os.mkfifo(root / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "socket"))
    s.close()
    if os.geteuid() == 0:
        os.mknod(root / "null_dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    # Directory times last, after their contents are in place.
    os.utime(root / "nested" / "deeper", ns=(1_500_000_000 * 10**9 + NS,) * 2)


def describe(root: Path, *, skip_sockets: bool = False) -> dict[bytes, tuple[object, ...]]:
    """Every entry under root → the metadata vaultfs promises to keep."""
    out: dict[bytes, tuple[object, ...]] = {}
    broot = os.fsencode(root)
    inode_names: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            if skip_sockets and stat.S_ISSOCK(st.st_mode):
                continue
            xattrs: tuple[tuple[str, bytes], ...] = ()
            if not stat.S_ISLNK(st.st_mode):
                xattrs = tuple(
                    sorted(
                        (n, os.getxattr(full, n, follow_symlinks=False))
                        for n in os.listxattr(full, follow_symlinks=False)
                        if n.startswith("user.")
                    )
                )
            link_group = None
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                link_group = inode_names.setdefault((st.st_dev, st.st_ino), rel)
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = f.read()
            mtime = None if stat.S_ISLNK(st.st_mode) and os.geteuid() != 0 else st.st_mtime_ns
            out[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                mtime,
                xattrs,
                link_group,
                target,
                st.st_rdev if not stat.S_ISDIR(st.st_mode) else 0,
                content,
            )
    return out


_SAME_TYPE = re.compile(
    r"^File .* is a (fifo|character special file|block special file) "
    r"while file .* is a \1$"
)


def diff_r(a: Path, b: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """GNU ``diff -r --no-dereference``: the lines that report a real difference.

    diff reports two FIFOs (or device nodes) as different even when both are
    the same kind of file; those lines are dropped. ``ignore`` drops lines
    containing any of the given strings.
    """
    proc = subprocess.run(
        ["diff", "-r", "--no-dereference", str(a), str(b)],
        capture_output=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.decode("utf-8", "backslashreplace").splitlines()
    return [line for line in lines if not _SAME_TYPE.match(line) and not any(i in line for i in ignore)]
