"""Real kernel mounts: what only the kernel shows (issue 3).

One vault with two versions of a tree holding every kind of entry is mounted
once for the module (in a world-traversable directory, so another user can try
to read through it); tests that need their own vault state (a live version,
corruption, a fault, a crash) mount a small vault of their own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mounts import alive, as_nobody, is_mounted, mount_log, mount_pid, mounted, unmount, wait_for
from tests.trees import describe, diff_r, make_every_kind, write
from tests.vaultenv import REPO, VaultEnv
from vaultfs.catalog import Catalog
from vaultfs.model import BlobId

SAME_SOCKET = "is a socket while file"  # diff -r reports two sockets as different


@dataclass
class Shared:
    env: VaultEnv
    src: Path  # the source now (= v2)
    src_v1: Path  # a copy of the source as v1 saw it
    mnt: Path


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    base = Path(tempfile.mkdtemp(prefix="vaultfs-mount-"))
    base.chmod(0o755)
    env = VaultEnv(base, f"file://{base / 'store'}")
    src = env.add_collection("photos")
    src.chmod(0o755)  # the version root is as open as this, whatever the umask: nobody reads
    make_every_kind(src)
    env.run("init")
    env.run("snapshot")
    src_v1 = base / "src_v1"
    subprocess.run(["cp", "-a", str(src), str(src_v1)], check=True)
    write(src / "plain.txt", b"changed in v2\n", 1_700_000_000 * 10**9 + 5)
    write(src / "photos" / "2020" / "new.raw", os.urandom(50_000))
    (src / "empty").unlink()
    env.run("snapshot", expect=3)  # cold collection: modified and deleted files are warned about
    try:
        with mounted(env, base / "mnt", "--allow-other") as mnt:
            yield Shared(env, src, src_v1, mnt)
    finally:
        unmount(base / "mnt")
        shutil.rmtree(base, ignore_errors=True)


def without_vaultfs_xattrs(tree: dict[bytes, tuple[object, ...]]) -> dict[bytes, tuple[object, ...]]:
    out = {}
    for rel, row in tree.items():
        xattrs = tuple(x for x in row[5] if not x[0].startswith("user.vaultfs."))  # type: ignore[attr-defined]
        out[rel] = (*row[:5], xattrs, *row[6:])
    return out


def test_latest_is_the_source(shared: Shared) -> None:
    latest = (shared.mnt / "photos" / "latest").resolve()  # diff -r would not follow it
    assert latest == shared.mnt / "photos" / "v2"
    assert diff_r(shared.src, latest, ignore=(SAME_SOCKET,)) == []
    assert describe(shared.src) == without_vaultfs_xattrs(describe(latest))


def test_older_version_is_the_older_source(shared: Shared) -> None:
    v1 = shared.mnt / "photos" / "v1"
    assert diff_r(shared.src_v1, v1, ignore=(SAME_SOCKET,)) == []
    assert describe(shared.src_v1) == without_vaultfs_xattrs(describe(v1))
    assert (v1 / "plain.txt").read_bytes() == b"hello vault\n" * 100
    assert (shared.mnt / "photos" / "v2" / "plain.txt").read_bytes() == b"changed in v2\n"


def test_layout_times_and_status(shared: Shared) -> None:
    mnt = shared.mnt
    assert sorted(os.listdir(mnt)) == [".vaultfs", "photos"]
    assert sorted(os.listdir(mnt / "photos")) == ["latest", "v1", "v2"]
    assert os.readlink(mnt / "photos" / "latest") == "v2"
    catalog = Catalog(shared.env.state_dir / "catalog.lmdb", readonly=True)
    try:
        roots = {v.number: v.root_meta for v in catalog.versions("photos")}
    finally:
        catalog.close()
    for n in (1, 2):  # a version directory is the source root as the snapshot saw it
        meta, st = roots[n], os.stat(mnt / "photos" / f"v{n}")
        assert meta is not None
        assert (st.st_mtime_ns, st.st_mode & 0o7777) == (meta.mtime_ns, meta.mode)
    assert os.stat(mnt / "photos" / "v2").st_mtime_ns == os.stat(shared.src).st_mtime_ns
    status = (mnt / ".vaultfs" / "status").read_text()
    assert "photos: 2 version(s), latest v2" in status
    assert "standard:" in status
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "photos" / "v3")
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "nosuchcollection")


def stat_c(path: Path, fmt: str) -> str:
    return subprocess.run(
        ["stat", "-c", fmt, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_stat_and_getfattr(shared: Shared) -> None:
    latest = shared.mnt / "photos" / "v2"
    fmt = "%f %u %g %h %s %y"
    for name in (
        "plain.txt",
        "owned",
        "secret",
        "setuid_tool",
        "sticky",
        "link_rel",
        "hard_a",
        "nested/deeper",
        "fifo",
        "null_dev",
        "photos",
    ):
        f = fmt if not (shared.src / name).is_dir() else fmt.replace(" %s", "")  # dir sizes: not kept
        assert stat_c(latest / name, f) == stat_c(shared.src / name, f), name
    assert os.readlink(latest / "link_dangling") == "does/not/exist"
    assert os.readlink(latest / "link_abs") == "/etc/hostname"
    ino = {os.stat(latest / p).st_ino for p in ("hard_a", "hard_c", "nested/hard_b")}
    assert len(ino) == 1
    assert os.stat(latest / "hard_a").st_nlink == 3
    assert os.stat(latest / "plain.txt").st_ino != os.stat(latest / "owned").st_ino
    assert os.stat(latest / "plain.txt").st_blksize == 1024 * 1024
    out = subprocess.run(
        ["getfattr", "-d", "-m", "-", "--absolute-names", str(latest / "plain.txt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sha = hashlib.sha256((shared.src / "plain.txt").read_bytes()).hexdigest()
    assert 'user.comment="a note"' in out
    assert f'user.vaultfs.sha256="{sha}"' in out
    assert 'user.vaultfs.state="available"' in out
    band = os.getxattr(latest / "plain.txt", "user.vaultfs.band").decode()
    assert f"bands/{band}.tar.zst" in shared.env.store_keys("bands/")
    assert os.getxattr(latest / "photos", "user.album") == b"holidays"


def _write_ops(d: Path) -> dict[str, Callable[[], object]]:
    f = d / "plain.txt"
    return {
        "create": lambda: os.open(d / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
        "open for writing": lambda: os.open(f, os.O_WRONLY),
        "append": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "truncate": lambda: os.truncate(f, 0),
        "mkdir": lambda: os.mkdir(d / "newdir"),
        "rmdir": lambda: os.rmdir(d / "empty_dir"),
        "unlink": lambda: os.unlink(f),
        "rename": lambda: os.rename(f, d / "renamed.txt"),
        "chmod": lambda: os.chmod(f, 0o777),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.new", b"x"),
        "removexattr": lambda: os.removexattr(f, "user.comment"),
        "symlink": lambda: os.symlink("plain.txt", d / "newlink"),
        "hard link": lambda: os.link(f, d / "newhard"),
        "mkfifo": lambda: os.mkfifo(d / "newfifo"),
        "new version dir": lambda: os.mkdir(d.parent / "v99"),
    }


def test_every_write_is_erofs(shared: Shared) -> None:
    d = shared.mnt / "photos" / "v2"
    for what, op in _write_ops(d).items():
        with pytest.raises(OSError) as info:
            op()
        assert info.value.errno == errno.EROFS, what
    assert (d / "plain.txt").read_bytes() == b"changed in v2\n"


def test_permissions_are_enforced_for_another_user(shared: Shared) -> None:
    latest = shared.mnt / "photos" / "latest"
    denied = as_nobody("cat", str(latest / "secret"))
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    allowed = as_nobody("cat", str(latest / "plain.txt"))
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == b"changed in v2\n"


def test_inodes_are_stable_across_remount(shared: Shared) -> None:
    def inodes() -> dict[str, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(shared.mnt / "photos" / "v1"):
            for name in dirnames + filenames:
                out[os.path.join(dirpath, name)] = os.lstat(os.path.join(dirpath, name)).st_ino
        return out

    before = inodes()
    assert len(before) > 20
    pid = mount_pid(shared.mnt)
    shared.env.run("umount", str(shared.mnt))
    assert not is_mounted(shared.mnt)
    wait_for(lambda: not alive(pid), "the mount process to exit")
    shared.env.run("mount", str(shared.mnt), "--log", str(mount_log(shared.env)), "--allow-other")
    assert inodes() == before


# ---- tests with a vault of their own --------------------------------------------------------


def small_vault(env: VaultEnv) -> Path:
    src = env.add_collection("docs", tier="warm")
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.txt", b"beta\n")
    env.run("init")
    env.run("snapshot")
    return src


def test_a_new_version_appears_while_mounted(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = small_vault(file_vault)
    with mounted(file_vault, tmp_path / "mnt") as mnt:
        assert sorted(os.listdir(mnt / "docs")) == ["latest", "v1"]
        assert (mnt / "docs" / "latest" / "a.txt").read_bytes() == b"alpha\n"
        # v1's entries, and that it has no c.txt, are cached by the kernel for the mount's life
        assert not (mnt / "docs" / "latest" / "c.txt").exists()
        assert subprocess.run(["find", str(mnt / "docs" / "v1")], capture_output=True).returncode == 0
        write(src / "c.txt", b"gamma\n")
        file_vault.run("snapshot")
        # latest (and the collection directory) are short-lived: they move at once
        assert os.readlink(mnt / "docs" / "latest") == "v2"
        assert (mnt / "docs" / "latest" / "c.txt").read_bytes() == b"gamma\n"
        assert sorted(os.listdir(mnt / "docs")) == ["latest", "v1", "v2"]
        assert (mnt / "docs" / "v2" / "c.txt").read_bytes() == b"gamma\n"
        assert not (mnt / "docs" / "v1" / "c.txt").exists()
        assert (
            os.stat(mnt / "docs" / "latest" / "a.txt").st_ino == os.stat(mnt / "docs" / "v2" / "a.txt").st_ino
        )


def test_collections_show_before_their_first_version(file_vault: VaultEnv, tmp_path: Path) -> None:
    docs = file_vault.add_collection("docs", tier="warm")
    file_vault.add_collection("photos")
    write(docs / "a.txt", b"alpha\n")
    file_vault.run("init")
    with mounted(file_vault, tmp_path / "mnt") as mnt:
        assert sorted(os.listdir(mnt)) == [".vaultfs", "docs", "photos"]
        assert os.listdir(mnt / "docs") == [] and os.listdir(mnt / "photos") == []
        assert (mnt / "photos").is_dir() and not (mnt / "photos" / "latest").exists()
        assert not (mnt / "nope").exists()
        file_vault.run("snapshot", "docs")
        assert sorted(os.listdir(mnt / "docs")) == ["latest", "v1"]
        assert (mnt / "docs" / "latest" / "a.txt").read_bytes() == b"alpha\n"
        assert os.listdir(mnt / "photos") == []


def test_a_corrupt_band_gives_eio_and_names_the_band(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    content = os.urandom(20 * 1024 * 1024 + 17)  # 6 frames: the mount's frame cache holds 4
    write(src / "big.raw", content)
    file_vault.run("init")
    file_vault.run("snapshot")
    bands = [k for k in file_vault.store_keys("bands/") if k.endswith(".tar.zst")]
    store = Path(file_vault.store_url.removeprefix("file://"))
    band_file = max((store / k for k in bands), key=lambda p: p.stat().st_size)
    band_id = band_file.name.removesuffix(".tar.zst")
    flip_byte(band_file, 1024 * 1024)  # one byte in the middle of big.raw's data frame
    with mounted(file_vault, tmp_path / "mnt") as mnt:
        proc = subprocess.run(["cat", str(mnt / "photos" / "latest" / "big.raw")], capture_output=True)
        assert proc.returncode != 0
        assert b"Input/output error" in proc.stderr
        assert proc.stdout == b""  # not one byte of the corrupt frame was served
        assert os.stat(mnt / "photos" / "latest" / "big.raw").st_size == len(content)  # still serving
    log = mount_log(file_vault).read_text()
    assert f"band {band_id}" in log and "answered EIO" in log


def point_blob_at(env: VaultEnv, content: bytes, other: bytes) -> None:
    """Corrupt the local catalog: the blob of `content` now points at `other`'s bytes
    (frames intact, so only the whole-file SHA-256 can tell)."""
    cat = Catalog(env.state_dir / "catalog.lmdb")
    try:
        ref = cat.blob(BlobId(hashlib.sha256(other).digest()))
        assert ref is not None
        with cat.writer() as w:
            w.put_blob(BlobId(hashlib.sha256(content).digest()), ref)
    finally:
        cat.close()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def cached_bytes(path: Path) -> int:
    """Bytes of `path` in the kernel's page cache (fincore opens it: that open keeps or
    drops the pages, as any open would)."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True)
    return int(out.stdout)


def test_the_page_cache_holds_only_verified_bytes(file_vault: VaultEnv, tmp_path: Path) -> None:
    """Pages of a file not (yet) read whole and verified are dropped at the next open; a
    file read whole and verified is re-read from the kernel's page cache, even after its
    band is damaged (those bytes were verified); once those pages are gone the damage is
    EIO, never bytes. A file that fails its SHA-256 at the end leaves no page behind: the
    same descriptor then gets EIO, not the cached bytes of the failed read."""
    photos = file_vault.add_collection("photos")
    docs = file_vault.add_collection("docs")
    content = os.urandom(20 * 1024 * 1024 + 17)  # 6 frames: the mount's frame cache holds 4
    write(photos / "big.raw", content)
    a, b = os.urandom(300_000), os.urandom(300_000)
    write(docs / "a.raw", a)
    write(docs / "b.raw", b)
    file_vault.run("init")
    file_vault.run("snapshot")
    point_blob_at(file_vault, a, b)
    store = Path(file_vault.store_url.removeprefix("file://"))
    band_file = max(
        (store / k for k in file_vault.store_keys("bands/") if k.endswith(".tar.zst")),
        key=lambda p: p.stat().st_size,
    )
    with mounted(file_vault, tmp_path / "mnt") as mnt:
        big = mnt / "photos" / "latest" / "big.raw"

        with open(big, "rb") as f:
            assert f.read(65536) == content[:65536]  # in the page cache, but not verified
        assert cached_bytes(big) == 0
        assert big.read_bytes() == content  # read whole and verified
        assert cached_bytes(big) == len(content) + 4096 - len(content) % 4096
        flip_byte(band_file, 1024 * 1024)  # in big.raw's first frame (no longer in the mount's)
        assert big.read_bytes() == content  # the verified pages, kept
        assert cached_bytes(big) > 0
        with open(big, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel drops them
        proc = subprocess.run(["cat", str(big)], capture_output=True)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr
        assert proc.stdout == b""  # not one byte of the damaged frame
        fd = os.open(mnt / "docs" / "latest" / "a.raw", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                while os.read(fd, 1 << 20):
                    pass
            assert info.value.errno == errno.EIO

            def refused() -> bool:
                try:
                    os.pread(fd, 4096, 0)
                except OSError as e:
                    return e.errno == errno.EIO
                return False  # still in the page cache: the mount drops it after the reply

            wait_for(refused, "the pages of the failed read to be dropped")
        finally:
            os.close(fd)
        assert subprocess.run(["cmp", str(mnt / "docs" / "latest" / "b.raw"), "-"], input=b).returncode == 0


def test_an_unexpected_error_is_eio_and_the_mount_goes_on(file_vault: VaultEnv, tmp_path: Path) -> None:
    """Also: --foreground logs to stderr, and SIGTERM unmounts cleanly."""
    small_vault(file_vault)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaultfs.cli",
            "--config",
            str(file_vault.config_path),
            "mount",
            str(mnt),
            "--foreground",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=file_vault.env(VAULTFS_TESTPOINTS="read:a.txt=fail"),
    )
    try:
        wait_for(lambda: is_mounted(mnt) or proc.poll() is not None, "the mount")
        assert is_mounted(mnt), proc.communicate()[1]
        failed = subprocess.run(["cat", str(mnt / "docs" / "v1" / "a.txt")], capture_output=True)
        assert failed.returncode != 0 and b"Input/output error" in failed.stderr
        assert (mnt / "docs" / "v1" / "sub" / "b.txt").read_bytes() == b"beta\n"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        unmount(mnt)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert not is_mounted(mnt)
    assert "unexpected error in read" in stderr and "injected fault" in stderr
    assert "Traceback" in stderr


def test_a_crashed_mount_is_left_for_umount(file_vault: VaultEnv, tmp_path: Path) -> None:
    small_vault(file_vault)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    file_vault.run("mount", str(mnt), "--log", str(mount_log(file_vault)))
    try:
        pid = mount_pid(mnt)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), "the mount process to die")
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        # A request racing the death may see ECONNABORTED; every later one sees ENOTCONN.
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.ENOTCONN
        assert is_mounted(mnt)  # never silently unmounted
        again = file_vault.run("mount", str(mnt), expect=1)
        assert "already a mount point" in again.stderr
        file_vault.run("umount", str(mnt))
        assert not is_mounted(mnt)
        assert os.listdir(mnt) == []
        gone = file_vault.run("umount", str(mnt), expect=1)
        assert "is not mounted" in gone.stderr
    finally:
        unmount(mnt)


def test_mount_errors_are_one_clear_line(file_vault: VaultEnv, tmp_path: Path) -> None:
    small_vault(file_vault)
    proc = file_vault.run("mount", str(tmp_path / "missing"), expect=2)
    assert "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
    busy = tmp_path / "mnt"
    with mounted(file_vault, busy):
        fd = os.open(busy / "docs" / "v1" / "a.txt", os.O_RDONLY)
        try:
            proc = file_vault.run("umount", str(busy), expect=1)
            assert "is busy" in proc.stderr
            assert is_mounted(busy)
        finally:
            os.close(fd)


def test_without_the_mount_extra(file_vault: VaultEnv, tmp_path: Path) -> None:
    """Installed without ``[mount]`` (pyfuse3 absent): `mount` says what to install in one
    line, and `umount` — which needs only fusermount3 — still clears a real mount."""
    small_vault(file_vault)
    absent = tmp_path / "absent"
    (absent / "pyfuse3").mkdir(parents=True)
    (absent / "pyfuse3" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyfuse3'\", name='pyfuse3')\n"
    )
    without = file_vault.env(PYTHONPATH=os.pathsep.join([str(absent), str(REPO)]))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = file_vault.run("mount", str(mnt), expect=2, env=without)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'vaultfs[mount]'" in proc.stderr and "internal error" not in proc.stderr
    assert not is_mounted(mnt)
    file_vault.run("mount", str(mnt), "--log", str(mount_log(file_vault)))  # with the extra
    assert is_mounted(mnt)
    pid = mount_pid(mnt)
    try:
        proc = file_vault.run("umount", str(mnt), env=without)
        assert f"unmounted {mnt}" in proc.stdout and not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            unmount(mnt)
    wait_for(lambda: not alive(pid), f"mount process {pid} to exit after unmount")
