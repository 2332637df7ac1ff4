"""Everything the source carries, kept and given back (issue 15, point 4).

POSIX ACLs, ``trusted.*`` and ``security.*`` xattrs and inode flags (chattr) go through a
snapshot, come back with ``restore fetch``, show through the mount (``getfacl``, and the
kernel enforces the ACLs there) and in the bands (``tar -x --acls``). What cannot be kept
or given back is reported once per kind with its count, and the exit status says so.
Checked with the real tools: getfacl, setfacl, getfattr, setfattr, chattr, lsattr, tar.
The tests run as root on ext4 (``/tmp``), which has every flag they use.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import as_nobody, mounted, unmount
from tests.trees import write
from tests.vaultenv import VaultEnv

OLD = 1_500_000_000 * 10**9 + 123
NOBODY = 65534


def sh(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd).stdout


def getfacl(root: Path, *paths: str) -> str:
    """``getfacl -n`` of paths relative to `root` (numeric ids, no absolute names)."""
    return sh("getfacl", "-n", "-p", *paths, cwd=root)


def lsattr(root: Path, *paths: str) -> list[str]:
    return sorted(sh("lsattr", "-d", *paths, cwd=root).splitlines())


def unseal(*paths: Path) -> None:
    """chattr -i -a everything under `paths` (an immutable file cannot be deleted)."""
    for p in paths:
        if p.exists():
            subprocess.run(["chattr", "-R", "-f", "-i", "-a", str(p)], capture_output=True)


def make_acls(src: Path) -> None:
    """A file with named-user and named-group entries, a directory with a default ACL and
    a file created under it (inherits it), and a file without any ACL."""
    write(src / "shared.txt", b"shared with 1234 and group 5\n")
    write(src / "plain.txt", b"no acl\n")
    (src / "team").mkdir()
    sh("setfacl", "-m", "u:1234:r--,g:5:rw-", str(src / "shared.txt"))
    sh("setfacl", "-m", "u:99:r-x", "-d", "-m", "u:1234:rwx,g:7:r-x", str(src / "team"))
    write(src / "team" / "inherited.txt", b"inherits the default ACL\n")
    for p in (src / "shared.txt", src / "team" / "inherited.txt", src / "team"):
        os.utime(p, ns=(OLD, OLD))


ACL_PATHS = ("shared.txt", "plain.txt", "team", "team/inherited.txt")


def test_acls_round_trip_through_restore_and_band_tar(vault_env: VaultEnv) -> None:
    env = vault_env
    src = env.add_collection("docs")
    make_acls(src)
    assert "user:1234:r--" in getfacl(src, "shared.txt")  # the tools did set them
    assert "default:group:7:r-x" in getfacl(src, "team")
    env.run("init")
    env.run("snapshot")  # exit 0: nothing left out

    out = env.tmp / "out"
    env.run("restore", "fetch", "docs", "--to", str(out))
    assert getfacl(out, *ACL_PATHS) == getfacl(src, *ACL_PATHS)

    # Without vaultfs: the bands' pax SCHILY.acl.* records restore them with GNU tar.
    untarred = env.tmp / "untarred"
    untarred.mkdir()
    for key in env.store_keys("bands/"):
        if key.endswith(".tar.zst"):
            band = env.fetch_object(key, env.tmp / "band.tar.zst")
            zstd = subprocess.Popen(["zstd", "-dc", str(band)], stdout=subprocess.PIPE)
            tar = subprocess.run(
                ["tar", "-x", "--xattrs", "--acls", "-C", str(untarred)],
                stdin=zstd.stdout,
                capture_output=True,
                text=True,
            )
            assert zstd.wait() == 0 and tar.returncode == 0, tar.stderr
            assert tar.stderr == ""  # no "unknown keyword" or ACL parse warnings
    members = untarred / "docs"
    files = ("shared.txt", "plain.txt", "team/inherited.txt")
    assert getfacl(members, *files) == getfacl(src, *files)


@pytest.fixture
def open_env(world_dir: Path) -> Iterator[VaultEnv]:
    """A file:// vault in a directory other users can reach (the mount checked as nobody)."""
    env = VaultEnv(world_dir, f"file://{world_dir / 'store'}")
    env.write_config()
    try:
        yield env
    finally:
        unmount(world_dir / "mnt")
        unseal(world_dir)  # before world_dir removes it: +i files cannot be deleted


def test_mount_shows_acls_to_getfacl_and_enforces_them(open_env: VaultEnv) -> None:
    env = open_env
    src = env.add_collection("docs")
    src.chmod(0o755)
    make_acls(src)
    # The mode alone would say the opposite of the ACL for nobody, both ways:
    write(src / "named.txt", b"for nobody by name\n")  # 0640 root:root + user:nobody:r--
    sh("chmod", "0640", str(src / "named.txt"))
    sh("setfacl", "-m", f"u:{NOBODY}:r--", str(src / "named.txt"))
    write(src / "grouped.txt", b"not for the owning group\n")  # group r-- (mask), group::---
    os.chown(src / "grouped.txt", 0, NOBODY)
    sh("setfacl", "-m", "g::---,u:1234:r--", str(src / "grouped.txt"))
    assert as_nobody("cat", str(src / "named.txt")).returncode == 0
    assert as_nobody("cat", str(src / "grouped.txt")).returncode != 0
    os.setxattr(src / "plain.txt", "trusted.origin", b"kept as root")
    env.run("init")
    env.run("snapshot")

    with mounted(env, env.tmp / "mnt", "--allow-other") as mnt:
        latest = mnt / "docs" / "latest"
        assert getfacl(latest, *ACL_PATHS) == getfacl(src, *ACL_PATHS)
        assert "user:1234:rwx" in getfacl(latest, "team")  # the default ACL too
        named = as_nobody("cat", str(latest / "named.txt"))
        assert named.returncode == 0 and named.stdout == b"for nobody by name\n", named.stderr
        grouped = as_nobody("cat", str(latest / "grouped.txt"))
        assert grouped.returncode != 0 and b"Permission denied" in grouped.stderr
        got = sh("getfattr", "-n", "trusted.origin", "--only-values", str(latest / "plain.txt"))
        assert got == "kept as root"
        assert "security." not in sh("getfattr", "-d", "-m", "-", str(latest / "plain.txt"))


def test_trusted_security_xattrs_and_inode_flags_round_trip(vault_env: VaultEnv) -> None:
    env = vault_env
    src = env.add_collection("box")
    out = env.tmp / "out"
    try:
        write(src / "sealed.txt", b"immutable content\n")
        write(src / "log.txt", b"append only\n")
        write(src / "quiet.txt", b"noatime, nodump\n")
        (src / "sync_dir").mkdir()
        write(src / "sync_dir" / "inside.txt", b"in a dirsync directory\n")
        sh("setfattr", "-n", "trusted.x", "-v", "trusted value", str(src / "sealed.txt"))
        sh("setfattr", "-n", "security.vaultfs-test", "-v", "label", str(src / "quiet.txt"))
        for p in ("sealed.txt", "log.txt", "quiet.txt", "sync_dir/inside.txt", "sync_dir"):
            os.utime(src / p, ns=(OLD, OLD))
        sh("chattr", "+A", "+d", str(src / "quiet.txt"))
        sh("chattr", "+D", "+S", str(src / "sync_dir"))
        sh("chattr", "+a", str(src / "log.txt"))
        sh("chattr", "+i", "+d", str(src / "sealed.txt"))
        paths = ("sealed.txt", "log.txt", "quiet.txt", "sync_dir", "sync_dir/inside.txt")
        env.run("init")
        env.run("snapshot")
        env.run("restore", "fetch", "box", "--to", str(out))
        assert lsattr(out, *paths) == lsattr(src, *paths)
        assert "----i-d" in lsattr(out, "sealed.txt")[0]  # not trivially equal: flags are set
        for p in paths:  # content and times too, though +i forbids setting them afterwards
            if not p.endswith("dir"):
                assert (out / p).read_bytes() == (src / p).read_bytes()
            assert os.stat(out / p).st_mtime_ns == OLD
        dump = ("getfattr", "-d", "-m", "-", "-e", "hex", *paths)
        assert sh(*dump, cwd=out) == sh(*dump, cwd=src)
        assert "trusted.x=0x" in sh(*dump, cwd=out) and "security.vaultfs-test" in sh(*dump, cwd=out)
        with pytest.raises(PermissionError):
            (out / "sealed.txt").write_bytes(b"changed")
    finally:
        unseal(src, out)


def test_metadata_not_kept_is_reported_once_per_kind_each_snapshot(vault_env: VaultEnv) -> None:
    env = vault_env
    src = env.add_collection("proj", tier="warm")
    write(src / "a" / "one.txt", b"1\n")
    write(src / "b" / "two.txt", b"2\n")
    sh("chattr", "+P", str(src / "a"), str(src / "b"))  # project inherit: its id is not kept
    env.run("init")
    kind = "inode flag(s) +P (project inherit)"
    for _ in range(2):  # reported again by a snapshot that finds nothing else changed
        proc = env.run("snapshot", expect=3)
        assert proc.stderr.count("not kept") == 1, proc.stderr
        assert f"warning: proj: not kept: 2 {kind}" in proc.stderr
        report = env.json("snapshot", expect=3)["collections"][0]
        assert report["not_kept"] == {kind: 2}
    assert len(env.versions("proj")) == 1


def test_flags_the_target_filesystem_lacks_are_counted_not_fatal(file_vault: VaultEnv) -> None:
    env = file_vault
    src = env.add_collection("box")
    write(src / "synced.txt", b"sync writes\n")
    write(src / "also.txt", b"sync too\n")
    sh("chattr", "+S", str(src / "synced.txt"), str(src / "also.txt"))
    env.run("init")
    env.run("snapshot")
    target = env.tmp / "tmpfs"  # tmpfs keeps only i, a, d and A
    target.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(target))
    try:
        proc = env.run("restore", "fetch", "box", "--to", str(target / "out"), expect=3)
        assert "warning: metadata not restored: 2 inode flag(s) +S (Operation not supported)" in proc.stderr
        assert (target / "out" / "synced.txt").read_bytes() == b"sync writes\n"
        report = env.json("restore", "fetch", "box", "--to", str(target / "again"), expect=3)
        assert report["not_restored"] == {"inode flag(s) +S (Operation not supported)": 2}
    finally:
        subprocess.run(["umount", str(target)], check=True)
