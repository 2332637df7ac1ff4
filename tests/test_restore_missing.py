"""`restore fetch` with a band object gone from the store (issue 17, point 5).

Everything whose bytes still exist is restored byte-identical, every directory
gets its recorded mode and times (also those whose files could not be restored),
the missing files are listed one line each, and the command exits 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.model import BandId, band_key

OLD = 1_500_000_000 * 10**9  # an mtime no restore would produce by accident
NEWLINE_NAME = "forged\nnot restored: fake.jpg"  # a name that tries to add a line to the list

# directory → (mode, files in it); files of ~600 KB so that bands of 1 MiB hold two each
LAYOUT: dict[str, tuple[int, list[str]]] = {
    "a": (0o750, ["a1.raw", "a2.raw", NEWLINE_NAME]),
    "a/deep": (0o711, ["d1.raw"]),
    "b": (0o555, ["b1.raw", "b2.raw"]),
    "c": (0o700, ["c1.raw", "c2.raw"]),
}


def make_source(src: Path) -> dict[str, bytes]:
    """The tree of LAYOUT with random content; returns path → content."""
    content: dict[str, bytes] = {}
    for d, (_, names) in LAYOUT.items():
        for i, name in enumerate(names):
            data = os.urandom(600_000)
            write(src / d / name, data, OLD + i)
            content[f"{d}/{name}"] = data
    os.link(src / "a" / NEWLINE_NAME, src / "c" / "hard-link")  # restored from the same blob
    content["c/hard-link"] = content[f"a/{NEWLINE_NAME}"]
    for n, d in enumerate(sorted(LAYOUT, key=lambda d: -d.count("/"))):  # deepest first
        (src / d).chmod(LAYOUT[d][0])
        os.utime(src / d, ns=(OLD + 7 * n, OLD + 7 * n))
    src.chmod(0o751)
    os.utime(src, ns=(OLD - 5, OLD - 5))
    return content


def band_of(env: VaultEnv, data: bytes) -> BandId:
    vault = env.open_vault()
    try:
        ref = vault.catalog.blob(hashlib.sha256(data).digest())
        assert ref is not None
        return BandId(ref.band)
    finally:
        vault.close()


def delete_object(env: VaultEnv, key: str) -> None:
    if env.store_url.startswith("file://"):
        (env.store_dir / key).unlink()
    else:
        env.bucket.client().delete_object(Bucket=env.bucket.name, Key="vault/" + key)


def dir_meta(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every directory under (and including) root: (mode, uid, gid, mtime_ns)."""
    out = {}
    for dirpath, _, _ in os.walk(root):
        st = os.lstat(dirpath)
        out[os.path.relpath(dirpath, root)] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def test_fetch_restores_everything_but_the_lost_band(vault_env: VaultEnv) -> None:
    env = vault_env
    env.band_size = "1MiB"
    src = env.add_collection("p")
    content = make_source(src)
    env.run("init")
    env.run("snapshot")
    lost_band = band_of(env, content[f"a/{NEWLINE_NAME}"])
    lost = {p for p, data in content.items() if band_of(env, data) == lost_band}
    assert 2 <= len(lost) < len(content) - 2  # the hard link too; other bands hold the rest
    delete_object(env, band_key(lost_band))

    to = env.tmp / "back"
    proc = env.run("restore", "fetch", "p", "--to", str(to), expect=3)
    listed = [line for line in proc.stderr.splitlines() if line.startswith("not restored: ")]
    assert len(listed) == len(lost), proc.stderr  # one line each: the newline forged none
    assert any("forged\\nnot restored: fake.jpg" in line for line in listed)
    assert "every file's SHA-256 verified" not in proc.stdout
    assert f"{len(lost)} file(s) NOT restored" in proc.stdout

    for path, data in content.items():
        if path in lost:
            assert not (to / path).exists(), path
        else:
            assert hashlib.sha256((to / path).read_bytes()).digest() == hashlib.sha256(data).digest(), path
    leftovers = [n for _, _, names in os.walk(to) for n in names if n.startswith(".vaultfs")]
    assert leftovers == []
    assert dir_meta(to) == dir_meta(src)  # modes (no 0700 leftovers), owners and mtimes

    doc = json.loads(
        env.run("restore", "fetch", "p", "--to", str(env.tmp / "back2"), "--json", expect=3).stdout
    )
    assert {m["path"] for m in doc["missing"]} == lost
    assert doc["files"] == len(content) - len(lost) and doc["exit_code"] == 3


def test_fetch_goes_on_past_a_damaged_frame(file_vault: VaultEnv) -> None:
    """A flipped byte in one band (a CorruptionError while reading) costs only its files."""
    env = file_vault
    env.band_size = "1MiB"
    src = env.add_collection("p")
    content = make_source(src)
    env.run("init")
    env.run("snapshot")
    damaged = band_of(env, content["b/b1.raw"])
    lost = {p for p, data in content.items() if band_of(env, data) == damaged}
    band = env.store_dir / band_key(damaged)
    raw = bytearray(band.read_bytes())
    raw[1000] ^= 0x40  # inside the first data frame
    band.write_bytes(bytes(raw))

    to = env.tmp / "back"
    doc = json.loads(env.run("restore", "fetch", "p", "--to", str(to), "--json", expect=3).stdout)
    assert {m["path"] for m in doc["missing"]} == lost
    for path, data in content.items():
        assert (to / path).exists() == (path not in lost), path
        if path not in lost:
            assert (to / path).read_bytes() == data, path
    assert dir_meta(to) == dir_meta(src)
