"""`restore fetch` run again into the same target: what is there as recorded is kept.

A fetch interrupted, or simply run twice, must finish without `--overwrite` when the
target holds what the version holds: FIFOs, device nodes, symlinks and hard links as
well as files, and files sealed with ``chattr +i``/``+a`` by the first run. What differs
is refused in one line, and `--overwrite` replaces it, seals included. Checked with the
real tools (lsattr, stat, diff) on ext4 (``/tmp``), where the tests run as root.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from tests.test_metadata import OLD, lsattr, sh, unseal
from tests.trees import describe, diff_r, write
from tests.vaultenv import VaultEnv


def _special_tree(src: Path) -> None:
    write(src / "a.txt", b"alpha\n")
    write(src / "hard_a", b"linked\n")
    os.link(src / "hard_a", src / "hard_b")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    os.symlink("a.txt", src / "link")


def test_special_files_as_recorded_are_no_reason_to_refuse(file_vault: VaultEnv) -> None:
    env = file_vault
    src = env.add_collection("box")
    _special_tree(src)
    env.run("init")
    env.run("snapshot")
    out = env.tmp / "out"
    env.run("restore", "fetch", "box", "--to", str(out))
    assert describe(out) == describe(src)
    # Run again: the FIFO, the devices and the symlink are as recorded (it was refused).
    again = env.json("restore", "fetch", "box", "--to", str(out))
    assert again["exit_code"] == 0 and again["already_present"] == 2
    assert describe(out) == describe(src)
    # A second name of a hard link that is a copy, not a link: the same content, kept and linked.
    (out / "hard_b").unlink()
    write(out / "hard_b", b"linked\n")
    env.run("restore", "fetch", "box", "--to", str(out))
    assert (out / "hard_b").stat().st_ino == (out / "hard_a").stat().st_ino
    # What differs in kind, device number or target is refused, and nothing is written.
    (out / "null").unlink()
    os.mknod(out / "null", 0o640 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's
    (out / "fifo").unlink()
    write(out / "fifo", b"a file where the FIFO goes\n")
    (out / "link").unlink()
    os.symlink("elsewhere", out / "link")
    (out / "a.txt").unlink()
    proc = env.run("restore", "fetch", "box", "--to", str(out), expect=2)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "3 file(s) in" in proc.stderr and "--overwrite" in proc.stderr
    assert not (out / "a.txt").exists()
    env.run("restore", "fetch", "box", "--to", str(out), "--overwrite")
    assert describe(out) == describe(src)
    assert diff_r(src, out) == []


def test_a_sockets_path_is_left_alone(file_vault: VaultEnv) -> None:
    """A restore makes no socket, so whatever is at a socket's path is not in its way."""
    env = file_vault
    src = env.add_collection("box")
    write(src / "a.txt", b"alpha\n")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    s.close()
    env.run("init")
    env.run("snapshot")
    out = env.tmp / "out"
    proc = env.run("restore", "fetch", "box", "--to", str(out), expect=3)
    assert "warning: sock: socket not restored" in proc.stderr
    assert not (out / "sock").exists()
    write(out / "sock", b"the program's own file\n")
    for extra in ((), ("--overwrite",)):  # neither refused nor removed
        again = env.json("restore", "fetch", "box", "--to", str(out), *extra, expect=3)
        assert again["already_present"] == 1 and [p["path"] for p in again["problems"]] == ["sock"]
        assert (out / "sock").read_bytes() == b"the program's own file\n"


def _sealed_tree(src: Path) -> tuple[str, ...]:
    write(src / "sealed.txt", b"immutable content\n")
    write(src / "log.txt", b"append only\n")
    write(src / "frozen" / "inside.txt", b"in an immutable directory\n")
    paths = ("sealed.txt", "log.txt", "frozen", "frozen/inside.txt")
    for p in paths:
        os.utime(src / p, ns=(OLD, OLD))
    sh("chattr", "+a", str(src / "log.txt"))
    sh("chattr", "+i", str(src / "sealed.txt"), str(src / "frozen"))
    return paths


def test_fetch_again_over_sealed_files(file_vault: VaultEnv) -> None:
    env = file_vault
    src = env.add_collection("box")
    out = env.tmp / "out"
    try:
        paths = _sealed_tree(src)
        env.run("init")
        env.run("snapshot")
        env.run("restore", "fetch", "box", "--to", str(out))
        sealed = lsattr(out, *paths)
        assert sealed == lsattr(src, *paths) and "----i-" in lsattr(out, "sealed.txt")[0]
        # Run again (it failed: "internal error: PermissionError"), with and without --overwrite.
        for extra in ((), ("--overwrite",)):
            again = env.json("restore", "fetch", "box", "--to", str(out), *extra)
            assert again["already_present"] == 3 and again["problems"] == [] and again["not_restored"] == {}
            assert lsattr(out, *paths) == sealed
            assert all(os.stat(out / p).st_mtime_ns == OLD for p in paths)
        # Sealed files changed since: refused; --overwrite replaces them, and seals them again.
        for p in ("sealed.txt", "frozen/inside.txt", "log.txt"):
            unseal(out / p)
            (out / p).write_bytes(b"changed\n")
        sh("chattr", "+i", str(out / "sealed.txt"), str(out / "frozen"))
        sh("chattr", "+a", str(out / "log.txt"))
        env.run("restore", "fetch", "box", "--to", str(out), expect=2)
        assert (out / "sealed.txt").read_bytes() == b"changed\n"
        env.run("restore", "fetch", "box", "--to", str(out), "--overwrite")
        assert diff_r(src, out) == []
        assert lsattr(out, *paths) == sealed
    finally:
        unseal(src, out)


def test_a_failed_fetch_seals_nothing_and_a_second_run_finishes_it(file_vault: VaultEnv) -> None:
    env = file_vault
    src = env.add_collection("box")
    out = env.tmp / "out"
    try:
        paths = _sealed_tree(src)
        env.run("init")
        env.run("snapshot")
        # Every file written, then a failure: nothing is sealed, directories have their times.
        fault = env.env(VAULTFS_TESTPOINTS="extract-file-written#3=fail")
        proc = env.run("restore", "fetch", "box", "--to", str(out), env=fault, expect=1)
        assert "injected fault at extract-file-written" in proc.stderr
        assert all(not {"i", "a"} & set(line.split()[0]) for line in lsattr(out, *paths))
        assert os.stat(out / "frozen").st_mtime_ns == OLD
        again = env.json("restore", "fetch", "box", "--to", str(out))
        assert again["already_present"] == 3
        assert lsattr(out, *paths) == lsattr(src, *paths)
    finally:
        unseal(src, out)


def test_a_sealed_target_takes_more_paths_and_is_sealed_again(file_vault: VaultEnv) -> None:
    """The whole version gave the target the root's +i; a later fetch of one path of a
    newer version must be able to add a name to it, and puts the seal back."""
    env = file_vault
    src = env.add_collection("box")
    out = env.tmp / "out"
    try:
        write(src / "a.txt", b"alpha\n")
        sh("chattr", "+i", str(src))
        env.run("init")
        env.run("snapshot")
        env.run("restore", "fetch", "box", "--to", str(out))
        assert "----i-" in sh("lsattr", "-d", str(out))
        unseal(src)
        write(src / "b.txt", b"bravo\n")
        sh("chattr", "+i", str(src))
        env.run("snapshot")
        env.run("restore", "fetch", "box", "b.txt", "--to", str(out))
        assert (out / "b.txt").read_bytes() == b"bravo\n"
        assert "----i-" in sh("lsattr", "-d", str(out))
    finally:
        unseal(src, out)


def test_a_directory_in_the_way_is_refused_before_anything_is_written(file_vault: VaultEnv) -> None:
    env = file_vault
    src = env.add_collection("box")
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.txt", b"bravo\n")
    env.run("init")
    env.run("snapshot")
    out = env.tmp / "out"
    # A file where a directory goes: refused, and --overwrite replaces it.
    write(out / "sub", b"a file\n")
    proc = env.run("restore", "fetch", "box", "--to", str(out), expect=2)
    assert "(the first: sub)" in proc.stderr and "--overwrite" in proc.stderr
    assert not (out / "a.txt").exists()
    env.run("restore", "fetch", "box", "--to", str(out), "--overwrite")
    assert diff_r(src, out) == []
    # A directory where a file goes: refused even with --overwrite (never deleted).
    (out / "a.txt").unlink()
    write(out / "a.txt" / "mine.txt", b"keep me\n")
    (out / "sub" / "b.txt").unlink()
    for extra in ((), ("--overwrite",)):
        proc = env.run("restore", "fetch", "box", "--to", str(out), *extra, expect=2)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "1 directory(ies) in" in proc.stderr and "(the first: a.txt)" in proc.stderr
        assert not (out / "sub" / "b.txt").exists()
    assert (out / "a.txt" / "mine.txt").read_bytes() == b"keep me\n"
