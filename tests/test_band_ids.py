"""Band ids read from outside (store listing, index objects, sidecars, the LMDB) never
become local paths: an id without the syntax vaultfs generates is damage, reported as
such, and nothing outside ``state_dir`` is read, renamed or deleted because of it.

A hostile store names bands ``<many ..>/<tmp>/decoy/x`` (which, joined to any directory
under the state dir, is the decoy file) and ``sub/x`` (a ``/``). Decoy files sit where
those names would land; the tests check they are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import zstandard

from tests.mounts import alive, is_mounted, mount_log, unmount, wait_for
from tests.vaultenv import VaultEnv

DECOY_NAMES = ("x.tar.zst", "x.check", "x.scan", "x.catalog.zst", "x.tar.zst.part")


def _decoys(tmp_path: Path) -> tuple[Path, str]:
    """A directory of decoy files and the band id that points into it from the state dir."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for name in DECOY_NAMES:
        (decoy / name).write_bytes(b"decoy " + name.encode())
    return decoy, "/".join([".."] * 16) + str(decoy) + "/x"


def _state_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def _put(env: VaultEnv, key: str, data: bytes) -> None:
    """Put an object on the store behind vaultfs's back."""
    if env.store_url.startswith("file://"):
        path = env.store_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        env.bucket.client().put_object(Bucket=env.bucket.name, Key="vault/" + key, Body=data)


def _snapshot_one_band(env: VaultEnv) -> tuple[str, bytes]:
    src = env.add_collection("p")
    content = os.urandom(200_000)
    (src / "a.bin").write_bytes(content)
    env.run("init")
    env.run("snapshot")
    [band] = [k[len("bands/") : -len(".tar.zst")] for k in env.store_keys("bands/") if k.endswith(".tar.zst")]
    return band, content


def _sidecar_naming(env: VaultEnv, band: str, name: str, tmp_path: Path) -> bytes:
    raw = env.fetch_object(f"bands/{band}.catalog.zst", tmp_path / "sidecar").read_bytes()
    doc = json.loads(zstandard.ZstdDecompressor().decompress(raw))
    doc["band"] = name
    text = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(text)


def _index_delta_naming(env: VaultEnv, band: str, name: str) -> None:
    """An index delta (next generation) that lists the real band's blobs under `name`."""
    from vaultfs.index import decode_index_object, encode_index_object

    keys = [k for k in env.store_keys("index/") if k.endswith(".zst")]
    raw = env.fetch_object(keys[-1], env.tmp / "index-object").read_bytes()
    doc = decode_index_object(raw)
    generation = int(keys[-1][len("index/") :].split("-")[0]) + 1
    bands = [{**b, "band": name} for b in doc["bands"] if b["band"] == band]
    hostile = {
        **doc,
        "kind": "delta",
        "generation": generation,
        "versions": [],
        "trees": {},
        "bands": bands,
        "blobs": {name: doc["blobs"][band]},
    }
    _put(env, f"index/{generation:012d}-delta.zst", encode_index_object(hostile))


def test_hostile_band_ids_are_damage_in_rebuild_and_check(vault_env: VaultEnv, tmp_path: Path) -> None:
    env = vault_env
    band, content = _snapshot_one_band(env)
    decoy, escape = _decoys(tmp_path)
    band_bytes = env.fetch_object(f"bands/{band}.tar.zst", tmp_path / "band").read_bytes()
    hostile = ["sub/x"]  # a file:// store cannot list a name with ".." in it; S3 can
    if not env.store_url.startswith("file://"):
        hostile.append(escape)
    for name in hostile:
        _put(env, f"bands/{name}.tar.zst", band_bytes)
        _put(env, f"bands/{name}.catalog.zst", _sidecar_naming(env, band, name, tmp_path))
    _index_delta_naming(env, band, escape)
    before = _state_of(decoy)
    tops = sorted(p.name for p in tmp_path.iterdir())

    shutil.rmtree(env.state_dir)
    rebuilt = env.run("index", "rebuild", "--yes", expect=1)
    out = rebuilt.stdout + rebuilt.stderr
    for name in hostile:
        assert f"store object 'bands/{name}.tar.zst' does not name a vaultfs band id" in out
        assert f"store object 'bands/{name}.catalog.zst' does not name a vaultfs band id" in out
    assert "-delta.zst: '../../../" in out  # the index object naming the escape (shortened)
    assert [v["version"] for v in env.versions("p")] == [1]  # recovered all the same
    assert "Traceback" not in out

    checked = env.run("check", "--read-data", expect=1)
    out = checked.stdout + checked.stderr
    for name in hostile:
        assert f"store object 'bands/{name}.tar.zst' does not name a vaultfs band id" in out
        assert f"store object 'bands/{name}.catalog.zst' does not name a vaultfs band id" in out
    assert "Traceback" not in out

    env.run("restore", "fetch", "p@v1", "--to", str(tmp_path / "back"))
    assert (tmp_path / "back" / "a.bin").read_bytes() == content
    assert _state_of(decoy) == before  # nothing read into, renamed over or deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*tops, "back"])
    assert not list((env.state_dir / "spool").iterdir())
    assert not list((env.state_dir / "cache").iterdir())


def test_a_hostile_band_id_in_the_local_catalog_is_eio_not_a_path(
    file_vault: VaultEnv, tmp_path: Path
) -> None:
    """The mount's band cache path: a damaged LMDB blob row naming a band outside the cache,
    where a complete copy of the real band lies, must not be read from there."""
    env = file_vault
    band, content = _snapshot_one_band(env)
    decoy, escape = _decoys(tmp_path)
    shutil.copy(env.store_dir / "bands" / f"{band}.tar.zst", decoy / "x.tar.zst")
    before = _state_of(decoy)
    from dataclasses import replace

    from vaultfs.model import BandId

    vault = env.open_vault()
    try:
        info = vault.catalog.band(BandId(band))
        refs = [(blob, ref) for blob, ref in vault.catalog.iter_blobs()]
        with vault.catalog.writer() as w:
            w.put_band(replace(info, band=BandId(escape), state="cached", cached=True))
            for blob, ref in refs:
                w.put_blob(blob, replace(ref, band=BandId(escape)))
    finally:
        vault.close()

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env.run("mount", str(mnt), "--log", str(mount_log(env)))
    pid = _mount_process(mnt)  # not from /.vaultfs/status: it lists the damaged band too
    try:
        proc = subprocess.run(["cat", str(mnt / "p" / "latest" / "a.bin")], capture_output=True)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr
        assert proc.stdout == b""
    finally:
        unmount(mnt)
        wait_for(lambda: not alive(pid), "the mount process to exit")
    assert "'../../../" in mount_log(env).read_text()
    assert "is not a vaultfs band id" in mount_log(env).read_text()

    checked = env.run("check", "--read-data", expect=1)
    out = checked.stdout + checked.stderr
    assert "'../../../" in out and "is not a vaultfs band id" in out
    env.run("index", "rebuild")  # rung 1 refuses the damaged catalog; rung 2 has the truth
    env.run("restore", "fetch", "p@v1", "--to", str(tmp_path / "back"))
    assert (tmp_path / "back" / "a.bin").read_bytes() == content
    assert _state_of(decoy) == before


def _mount_process(mnt: Path) -> int:
    """The pid of the `vaultfs mount` daemon serving `mnt`, from /proc."""
    assert is_mounted(mnt)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vaultfs.cli" in argv and os.fsencode(mnt) in argv:
            return int(entry.name)
    raise AssertionError(f"no mount process for {mnt}")
