"""A damaged or missing band is healed by the next snapshot (issue 17, point 1).

Through the real CLI on a file:// store: a band object deleted (or a byte of it
flipped) after a snapshot; the next snapshot does not deduplicate against the lost
blobs but stores again every one the source still holds (no `touch` needed), every
version restores byte for byte, and `check` is clean afterwards. What no source holds
any more, `check` names as lost for good: exactly those files, in exactly the
versions that had them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.test_restore_missing import band_of, delete_object
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs import heal, index
from vaultfs.model import BlobId, band_key

OLD = 1_500_000_000 * 10**9


def four_files(env: VaultEnv) -> tuple[Path, dict[str, bytes]]:
    """The issue's repro: band_size 1MiB, four 600 KB random files, one snapshot."""
    env.band_size = "1MiB"
    src = env.add_collection("p", tier="warm")
    content = {}
    for i in range(4):
        data = os.urandom(600_000)
        write(src / f"f{i}.raw", data, OLD + i)
        content[f"f{i}.raw"] = data
    env.run("init")
    env.run("snapshot")
    return src, content


def restored(env: VaultEnv, version: int, name: str, expect: int = 0) -> dict[str, bytes]:
    to = env.tmp / name
    env.run("restore", "fetch", f"p@v{version}", "--to", str(to), expect=expect)
    return {str(p.relative_to(to)): p.read_bytes() for p in sorted(to.rglob("*")) if p.is_file()}


def assert_index_points_at_the_store(env: VaultEnv, data: bytes) -> None:
    """The consolidated index (what a rebuild from the store reads) places the healed
    blob in a band that is on the store."""
    vault = env.open_vault()
    try:
        loaded = index.load_index(vault.store, vault.catalog.meta("vault_id") or "")
        ref = loaded.content.blobs[BlobId(hashlib.sha256(data).digest())]
        assert band_key(ref.band) in env.store_keys("bands/")
        assert vault.catalog.blob(hashlib.sha256(data).digest()) == ref
    finally:
        vault.close()


def test_missing_band_found_by_check_is_healed_by_the_next_snapshot(file_vault: VaultEnv) -> None:
    env = file_vault
    src, content = four_files(env)
    lost_band = band_of(env, content["f1.raw"])
    delete_object(env, band_key(lost_band))

    out = env.json("check", expect=1)
    assert any("missing from the store" in p["what"] for p in out["problems"])
    [pending] = out["lost"]  # not yet for good: the source may still hold them
    assert pending["version"] == 1 and not pending["for_good"] and "f1.raw" in pending["paths"]

    write(src / "new.txt", b"a new file: v2 is a new version", OLD + 10)
    proc = env.run("snapshot")
    assert "re-stored 1 file(s) whose band was lost" in proc.stdout
    content["new.txt"] = (src / "new.txt").read_bytes()

    v1 = {k: v for k, v in content.items() if k != "new.txt"}
    assert restored(env, 1, "back1") == v1
    assert restored(env, 2, "back2") == content
    assert env.run("check").returncode == 0
    assert env.json("check", "--read-data")["lost"] == []
    assert_index_points_at_the_store(env, content["f1.raw"])


def test_missing_band_is_healed_without_check_and_without_touch(file_vault: VaultEnv) -> None:
    env = file_vault
    _, content = four_files(env)
    lost_band = band_of(env, content["f2.raw"])
    delete_object(env, band_key(lost_band))

    proc = env.run("snapshot", expect=3)  # the warning: a band was found missing
    assert f"band {lost_band} is missing from the store" in proc.stderr
    assert "unchanged since v1; re-stored 1 file(s) whose band was lost" in proc.stdout
    assert "verified" not in proc.stdout

    assert restored(env, 1, "back") == content
    assert env.run("check", "--read-data").returncode == 0
    assert env.run("snapshot").returncode == 0  # nothing missing any more
    assert_index_points_at_the_store(env, content["f2.raw"])


def test_files_no_source_holds_are_named_lost_for_good(file_vault: VaultEnv) -> None:
    env = file_vault
    src, content = four_files(env)
    write(src / "v2.txt", b"second version", OLD + 20)
    env.run("snapshot")  # v2 has f0.raw too
    lost_band = band_of(env, content["f0.raw"])
    delete_object(env, band_key(lost_band))
    (src / "f0.raw").unlink()  # its only other copy
    env.run("check", expect=1)
    env.run("snapshot")  # v3: without f0.raw

    out = env.json("check", expect=1)
    assert [(x["version"], x["for_good"], x["paths"]) for x in out["lost"]] == [
        (1, True, ["f0.raw"]),
        (2, True, ["f0.raw"]),
    ]
    lines = env.run("check", expect=1).stderr
    assert "p@v1: 1 file(s) lost for good" in lines and "p@v2: 1 file(s) lost for good" in lines
    assert "p@v3" not in lines

    back = restored(env, 1, "back1", expect=3)
    assert back == {k: v for k, v in content.items() if k != "f0.raw"}
    assert restored(env, 3, "back3") == {**back, "v2.txt": b"second version"}


def test_damaged_band_found_by_read_data_is_healed(file_vault: VaultEnv) -> None:
    env = file_vault
    _, content = four_files(env)
    damaged = band_of(env, content["f3.raw"])
    band = env.store_dir / band_key(damaged)
    raw = bytearray(band.read_bytes())
    raw[1000] ^= 0x40  # inside the first data frame
    band.write_bytes(bytes(raw))

    out = env.json("check", "--read-data", expect=1)
    assert any("is damaged" in p["what"] for p in out["problems"])
    assert [(x["version"], x["paths"]) for x in out["lost"]] == [(1, ["f3.raw"])]

    proc = env.run("snapshot")
    assert "re-stored 1 file(s) whose band was lost" in proc.stdout
    assert restored(env, 1, "back") == content
    out = env.json("check", "--read-data")
    assert out["ok"] and out["lost"] == []
    assert any(f"band {damaged} is damaged" in n for n in out["notes"])  # said, not a problem
    assert_index_points_at_the_store(env, content["f3.raw"])


def test_a_listing_cut_short_never_makes_a_band_lost(file_vault: VaultEnv) -> None:
    """Only a band whose object is really gone (HEAD says not found) counts as missing:
    a listing that omits bands that exist — here, an empty one — marks nothing lost."""
    four_files(file_vault)
    vault = file_vault.open_vault()
    try:
        bands = sorted(b.band for b in vault.catalog.bands())
        assert len(bands) >= 4
        assert heal.missing_bands(vault, on_store=set()) == []
        delete_object(file_vault, band_key(bands[0]))
        assert heal.missing_bands(vault, on_store=set()) == [bands[0]]
    finally:
        vault.close()
