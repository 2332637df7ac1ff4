"""Cold-tier rules and bad input: reported by path, skipped, exit status 3, the rest kept."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv


def wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Block until the process has stopped itself at a test point (SIGSTOP)."""
    os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOWAIT)


def test_cold_collection_warns_on_modified_and_deleted(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos", tier="cold")
    write(src / "keep.raw", b"k" * 100)
    write(src / "edit.raw", b"e" * 100)
    write(src / "gone" / "old.raw", b"o" * 100)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "edit.raw", b"E" * 100)
    (src / "gone" / "old.raw").unlink()
    (src / "gone").rmdir()
    write(src / "new.raw", b"n" * 100)  # additions are normal on a cold collection
    proc = file_vault.run("snapshot", expect=3)
    assert "modified: edit.raw" in proc.stderr
    assert "deleted: gone/old.raw" in proc.stderr
    assert "keep.raw" not in proc.stderr and "new.raw" not in proc.stderr
    assert [v["version"] for v in file_vault.versions("photos")] == [1, 2]  # still written
    # The same changes on a warm collection are ordinary.
    code = file_vault.add_collection("code", tier="warm")
    write(code / "main.py", b"print(1)\n")
    file_vault.run("snapshot", "code")
    write(code / "main.py", b"print(2)\n")
    file_vault.run("snapshot", "code", expect=0)


def test_only_additions_on_cold_exit_zero(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")
    write(src / "a.raw", b"a")
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "b.raw", b"b")
    file_vault.run("snapshot", expect=0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the snapshot as another user")
def test_unreadable_file_and_directory_are_skipped(world_dir: Path) -> None:
    env = VaultEnv(world_dir, f"file://{world_dir / 'store'}")
    src = env.add_collection("photos")
    write(src / "ok.raw", b"fine")
    write(src / "locked.raw", b"secret").chmod(0o000)
    (src / "locked_dir").mkdir()
    write(src / "locked_dir" / "inside.raw", b"x")
    (src / "locked_dir").chmod(0o000)
    env.run("init")
    subprocess.run(["chown", "-R", "65534:65534", str(world_dir)], check=True)
    os.chown(src / "locked.raw", 0, 0)
    os.chown(src / "locked_dir", 0, 0)
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*cmd, *file_vault_cmd(env), "snapshot"],
        capture_output=True,
        text=True,
        env=env.env(HOME=str(world_dir)),
        cwd=world_dir,
    )
    assert proc.returncode == 3, proc.stderr
    assert "locked.raw: cannot read (Permission denied)" in proc.stderr
    assert "locked_dir: cannot list directory (Permission denied)" in proc.stderr
    out = world_dir / "out"
    env.run("restore", "fetch", "photos", "--to", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["ok.raw"]


def file_vault_cmd(env: VaultEnv) -> list[str]:
    import sys

    return [sys.executable, "-m", "vaultfs.cli", "--config", str(env.config_path)]


def test_file_vanishing_after_the_scan(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    write(src / "stays.raw", b"s" * 100)
    write(src / "vanishes.raw", b"v" * 100)
    file_vault.run("init")
    proc = file_vault.popen("snapshot", env=file_vault.env(VAULTFS_TESTPOINTS="after-scan=stop"))
    wait_stopped(proc)
    (src / "vanishes.raw").unlink()
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "vanishes.raw: vanished before it could be read" in err
    restored = tmp_path / "out"
    file_vault.run("restore", "fetch", "photos", "--to", str(restored))
    assert sorted(p.name for p in restored.iterdir()) == ["stays.raw"]


def test_file_changing_while_read_is_skipped(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("media")
    write(src / "small.txt", b"small")
    big = write(src / "video.bin", os.urandom(9 * 1024 * 1024))  # above the in-memory limit
    file_vault.run("init")
    proc = file_vault.popen("snapshot", env=file_vault.env(VAULTFS_TESTPOINTS="after-hash=stop"))
    wait_stopped(proc)
    with open(big, "r+b") as f:  # same size, new bytes: only the content check can tell
        f.write(b"changed!")
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "video.bin: changed while it was read" in err
    restored = tmp_path / "out"
    file_vault.run("restore", "fetch", "media", "--to", str(restored))
    assert sorted(p.name for p in restored.iterdir()) == ["small.txt"]
    # The next snapshot, with the file quiet again, takes it.
    file_vault.run("snapshot", expect=0)
    restored2 = tmp_path / "out2"
    file_vault.run("restore", "fetch", "media", "--to", str(restored2))
    assert diff_r(src, restored2) == []


@pytest.mark.parametrize("change", ["none", "grow", "shrink", "rewrite"])
def test_read_small_notices_a_file_that_changed_after_its_stat(tmp_path: Path, change: str) -> None:
    """The stat taken at open is compared after the read: growth, shrinking or a rewrite
    of the same size in between makes the read fail instead of storing a mix."""
    import hashlib

    from vaultfs.source import ChangedWhileReading, open_source, read_small

    path = write(tmp_path / "f.txt", b"0123456789" * 100)
    fd, _ = open_source(bytes(path))
    try:
        before = os.fstat(fd)
        if change == "grow":
            with open(path, "ab") as f:
                f.write(b"more")
        elif change == "shrink":
            os.truncate(path, 10)
        elif change == "rewrite":  # same size, new bytes, new mtime
            with open(path, "r+b") as f:
                f.write(b"X")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        if change == "none":
            data, blob = read_small(fd, before)
            assert bytes(data) == b"0123456789" * 100
            assert blob == hashlib.sha256(bytes(data)).digest()
        else:
            with pytest.raises(ChangedWhileReading):
                read_small(fd, before)
    finally:
        os.close(fd)


def replace_with(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes to it: a blocking open would wait forever
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("stays.raw")


@pytest.mark.parametrize(
    ("kind", "now"), [("fifo", "FIFO"), ("directory", "directory"), ("symlink", "symlink")]
)
def test_file_replaced_by_another_kind_after_the_scan(
    file_vault: VaultEnv, tmp_path: Path, kind: str, now: str
) -> None:
    """Replaced between scan and read: skipped with a warning, the snapshot finishes
    (a FIFO must not block it while it holds the vault lock), the lock is released."""
    src = file_vault.add_collection("photos")
    write(src / "stays.raw", b"s" * 100)
    write(src / "swapped.raw", b"w" * 100)
    file_vault.run("init")
    proc = file_vault.popen("snapshot", env=file_vault.env(VAULTFS_TESTPOINTS="after-scan=stop"))
    try:
        wait_stopped(proc)
        replace_with(src / "swapped.raw", kind)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)  # a hang fails here instead of hanging the suite
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert f"warning: photos: skipped swapped.raw: is not a regular file any more (now a {now})" in err
    restored = tmp_path / "out"
    file_vault.run("restore", "fetch", "photos", "--to", str(restored))
    assert sorted(p.name for p in restored.iterdir()) == ["stays.raw"]
    # The lock was released: the next snapshot runs, and records the entry as what it is now.
    file_vault.run("snapshot", expect=0)
    assert [v["version"] for v in file_vault.versions("photos")] == [1, 2]


def test_open_source_leaves_regular_files_blocking_and_refuses_others(tmp_path: Path) -> None:
    """O_NONBLOCK is only for the open: a regular file is read in blocking mode as before."""
    import fcntl

    from vaultfs.source import NotRegularFile, open_source

    path = write(tmp_path / "f.txt", b"data")
    fd, st = open_source(bytes(path))
    try:
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert (st.st_ino, st.st_size) == (path.stat().st_ino, 4)
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFile, match="now a FIFO"):
        open_source(bytes(tmp_path / "fifo"))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(NotRegularFile, match="now a directory"):
        open_source(bytes(tmp_path))
    assert len(os.listdir("/proc/self/fd")) == before  # the descriptor was closed


LEASE_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
def give_up(signum, frame):
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    print("broken", flush=True)
    sys.exit(0)
signal.signal(signal.SIGIO, give_up)  # the kernel's "lease break" signal
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
while True:
    signal.pause()
"""


def test_file_under_a_lease_is_read_once_the_lease_is_broken(file_vault: VaultEnv, tmp_path: Path) -> None:
    """A write lease (Samba's kernel oplocks) makes an O_NONBLOCK open fail with EAGAIN;
    the snapshot then waits for the lease break, as a blocking open always did, instead
    of skipping the file. A helper process holds the lease and gives it up when told."""
    import sys

    src = file_vault.add_collection("shares", tier="warm")
    leased = write(src / "open_in_word.docx", b"a document a client holds open")
    file_vault.run("init")
    holder = subprocess.Popen(
        [sys.executable, "-c", LEASE_HOLDER, str(leased)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "leased\n"
        file_vault.run("snapshot", expect=0)
        assert holder.stdout.readline() == "broken\n"  # the snapshot's open met the lease
    finally:
        holder.kill()
        holder.wait()
    restored = tmp_path / "out"
    file_vault.run("restore", "fetch", "shares", "--to", str(restored))
    assert (restored / "open_in_word.docx").read_bytes() == leased.read_bytes()
