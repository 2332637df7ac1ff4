"""recompress: cold bands written at a low zstd level are rewritten at a higher one, end to end.

A cold collection backed up at level 1 (its first and second versions, so every band is one
a kept version lists: it carries that version's record copy and directory listings) is
recompressed with the real command on both stores: the dry run's estimate against the real
saving, the bytes on the store, every version restored byte-identical (`diff -r`), `check
--read-data`, the new bands read with `zstd -dc | tar -x` and their recorded levels, `vaultfs
versions`, an index rebuild on a second machine (from the sidecars and from the index);
a kill at each test point, then the next run finishing; archived bands never touched and
preview objects carried (moto, with the vault's own archive step); bands at the target
level (or incompressible) never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_bandwidth import log_text
from tests.test_compact import band_bytes, band_objects, check_clean
from tests.test_index import second_machine
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv
from vaultfs.band import CHEAP_LEVEL, levels_from_catalog
from vaultfs.band.preview import read_preview_index
from vaultfs.model import BandId, BandInfo
from vaultfs.retention.recompress import UNKNOWN_LEVEL, frame_levels, low_share

MiB = 1024 * 1024
LEVEL = 9  # the vault's auto_max in these tests: level 19 would take seconds per frame


def low_level_vault(env: VaultEnv, tmp: Path, name: str = "docs", level: int | str = 1) -> dict[int, Path]:
    """A cold collection written at `level` ("auto": auto_min, 3, as a local store gets it),
    with auto_max = LEVEL: v1 holds log text (one
    file streamed, the others small), a random file with an xattr and a small text file;
    v2 adds more text. Frames of 1 MiB, bands of 4 MiB: one band per version, each the
    last band of a kept version. Returns a copy of the source as each version saw it."""
    env.vault_extra = f"compression_level = {json.dumps(level)}\nauto_max = {LEVEL}\n"
    src = env.add_collection(name, tier="cold")
    env.extra_config = 'frame_size = "1MiB"\n'  # the last collection's table: this one's
    env.write_config()
    write(src / "logs" / "big.log", log_text(1, 3 * MiB))
    for i in range(8):
        write(src / "logs" / f"small{i}.log", log_text(10 + i, 60_000))
    write(src / "media" / "clip.bin", os.urandom(200_000))
    os.setxattr(src / "media" / "clip.bin", "user.note", b"kept in the tar header")
    write(src / "notes.txt", b"a small file\n" * 100)
    env.run("init")
    env.run("snapshot")
    seen = {1: tmp / "v1"}
    shutil.copytree(src, seen[1], symlinks=True)
    write(src / "logs" / "more.log", log_text(2, 2 * MiB))
    env.run("snapshot")
    seen[2] = tmp / "v2"
    shutil.copytree(src, seen[2], symlinks=True)
    return seen


def all_restore(env: VaultEnv, tmp: Path, seen: dict[int, Path], name: str = "docs") -> None:
    for n, expected in seen.items():
        out = tmp / f"restored-{n}-{len(list(tmp.iterdir()))}"
        env.run("restore", "fetch", f"{name}@v{n}", "--to", str(out))
        assert diff_r(expected, out) == [], n


def store_total(env: VaultEnv, tmp: Path) -> int:
    return sum(band_bytes(env, tmp).values())


def bands_of(env: VaultEnv) -> set[str]:
    return {k[len("bands/") : -len(".tar.zst")] for k in env.store_keys("bands/") if k.endswith(".tar.zst")}


def unpack(env: VaultEnv, band: str, tmp: Path) -> Path:
    """The band as `zstd -dc | tar -x` gives it back, with xattrs."""
    path = env.fetch_object(f"bands/{band}.tar.zst", tmp / f"{band}.tar.zst")
    out = tmp / f"unpacked-{band}"
    out.mkdir()
    subprocess.run(f"zstd -dc {path} | tar -x --xattrs -C {out}", shell=True, check=True)
    return out


def preview_ranges(env: VaultEnv, band: str, tmp: Path) -> dict[bytes, list[tuple[int, bytes]]]:
    """Every range of a band's preview object: blob → [(file offset, bytes)]."""
    path = env.fetch_object(f"bands/{band}.preview", tmp / f"{band}.preview")
    data = path.read_bytes()
    with path.open("rb") as f:
        index = read_preview_index(f, len(data), band)
    return {
        blob: [(r.file_offset, data[r.data_offset : r.data_offset + r.length]) for r in rs]
        for blob, rs in index.items()
    }


def check_new_bands(env: VaultEnv, done: dict[str, Any], seen: dict[int, Path], tmp: Path) -> None:
    """Each new band, read with `zstd -dc | tar -x`: the files as v2 saw them (xattrs too),
    the target level recorded in its catalog, the band it replaces named."""
    for b in done["bands"]:
        new = b["new_band"]
        out = unpack(env, new, tmp)
        raw = (out / ".vaultfs" / "catalog.json").read_bytes()
        catalog = json.loads(raw)
        assert catalog["recompressed_from"] == [b["band"]] and catalog["collection"] == "docs"
        levels = levels_from_catalog(raw, new)
        assert set(levels) <= {LEVEL, CHEAP_LEVEL} and LEVEL in levels
        assert b["new_levels"] == [min(levels), max(levels)]
        for f in (out / "docs").rglob("*"):
            if f.is_file():
                assert f.read_bytes() == (seen[2] / f.relative_to(out / "docs")).read_bytes()
        if (out / "docs" / "media" / "clip.bin").exists():
            assert os.getxattr(out / "docs/media/clip.bin", "user.note") == b"kept in the tar header"
        if "version" in catalog:  # the last band of a version: its record copy and listings
            assert catalog["trees"] and catalog["version"]["bands"] == [b["band"]]
    copies = [
        json.loads((tmp / f"unpacked-{b}/.vaultfs/catalog.json").read_bytes()) for b in done["new_bands"]
    ]
    assert sorted(c["version"]["number"] for c in copies if "version" in c) == [1, 2]


def test_recompress_a_low_level_cold_vault(vault_env: VaultEnv, tmp_path: Path) -> None:
    seen = low_level_vault(vault_env, tmp_path)
    old_bands = bands_of(vault_env)
    before = band_objects(vault_env)
    total_before = store_total(vault_env, tmp_path)
    versions_before = vault_env.versions("docs")
    assert [v["compression_levels"][1] for v in versions_before] == [1, 1]

    plan = vault_env.json("recompress", "--dry-run")
    assert plan["dry_run"] is True and plan["level"] == LEVEL and plan["new_bands"] == []
    assert len(old_bands) == 2 and {b["band"] for b in plan["bands"]} == old_bands  # v1's, v2's
    assert all(b["levels"][1] == 1 and b["levels_known"] for b in plan["bands"])
    assert 0 < plan["sampled_frames"] <= 16 and plan["bytes_saved_estimated"] is True
    assert band_objects(vault_env) == before  # a dry run changes nothing
    text = vault_env.run("recompress", "--dry-run").stdout
    assert text.startswith(f"would recompress {len(old_bands)} band(s) to zstd level {LEVEL}: ")
    assert "saving about" in text and "sampled frame(s)" in text

    done = vault_env.json("recompress")
    assert done["problems"] == [] and done["exit_code"] == 0 and not done["dry_run"]
    assert sorted(done["deleted"]) == sorted(old_bands) and len(done["new_bands"]) == len(old_bands)
    assert bands_of(vault_env) == set(done["new_bands"])
    total_after = store_total(vault_env, tmp_path)
    saved = total_before - total_after
    assert saved == done["bytes_saved"] and total_after < total_before * 0.95, (total_before, total_after)
    # The dry run's estimate (a sample of frames compressed at the target) is close.
    assert abs(plan["bytes_saved"] - saved) < 0.25 * saved, (plan["bytes_saved"], saved)

    check_new_bands(vault_env, done, seen, tmp_path)
    all_restore(vault_env, tmp_path, seen)
    check_clean(vault_env)
    versions = vault_env.versions("docs")
    assert [v["compression_levels"][1] for v in versions] == [LEVEL, LEVEL]
    assert all(v["state"] == "standard" and v["bytes_stored"] > 0 for v in versions)
    assert sum(v["bytes_stored"] for v in versions) < sum(v["bytes_stored"] for v in versions_before)

    # Nothing left: every band is at the target now.
    again = vault_env.json("recompress")
    assert again["bands"] == [] and again["at_target"] == len(old_bands)
    assert vault_env.run("recompress").stdout.startswith("nothing to recompress")

    # A NAS rebuilt from the band catalogs (rung 3: records and their copies in the new
    # bands) and one rebuilt from the consolidated index (rung 2) restore every version.
    for rung, where in (("sidecars", "nas-sidecars"), (None, "nas-index")):
        nas = second_machine(vault_env, tmp_path / where)
        nas.run("index", "rebuild", *(("--from", rung) if rung else ()))
        all_restore(nas, tmp_path, seen)
        check_clean(nas)
        assert [v["compression_levels"][1] for v in nas.versions("docs")] == [LEVEL, LEVEL]


@pytest.mark.parametrize(
    ("point", "then"),
    [
        ("recompress-band-closed", "recompress"),
        ("recompress-band-uploaded", "recompress"),
        ("recompress-band-uploaded", "prune"),
        ("recompress-band-uploaded#2", "recompress"),
        ("recompress-committed", "recompress"),
        ("index-publish", "recompress"),
        ("recompress-band-deleted", "recompress"),
        ("recompress-band-deleted", "prune"),
    ],
)
def test_kill_at_each_point_then_finish(file_vault: VaultEnv, tmp_path: Path, point: str, then: str) -> None:
    seen = low_level_vault(file_vault, tmp_path, level="auto")  # level 3: the store is local
    old = bands_of(file_vault)
    assert [v["compression_levels"] for v in file_vault.versions("docs")] == [[3, 3], [3, 3]]
    proc = file_vault.run("recompress", expect=None, env=file_vault.env(VAULTFS_TESTPOINTS=f"{point}=kill"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    all_restore(file_vault, tmp_path, seen)  # readable whatever the point
    # `check` finds nothing wrong but, at some points, a new band the index lacks yet.
    check = file_vault.json("check", expect=None)
    assert all("consolidated index lacks 0 version(s)" in p["what"] for p in check["problems"]), check
    done = file_vault.json(then)
    if then == "recompress":
        assert done["problems"] == [] and done["exit_code"] == 0
        # What the killed run left is finished, not done again.
        finished = [b for b in done["bands"] if b["replaced_by"]]
        copied = {"recompress-band-closed": 1, "recompress-band-uploaded": 1, "recompress-band-uploaded#2": 2}
        assert len(finished) == copied.get(point, 0) and all(b["new_band"] is None for b in finished)
        assert done["spool_recovered"] == (point == "recompress-band-closed")
        assert done["deletions_resumed"] == (0 if point in copied else 2)
        assert len(done["new_bands"]) == 2 - len(finished) - (2 if point not in copied else 0)
    else:
        file_vault.run("recompress")  # whatever prune left to recompress
    assert not bands_of(file_vault) & old  # every old band is gone from the store
    assert not [k for k in file_vault.store_keys("bands/") if any(b in k for b in old)]
    left = file_vault.json("recompress", "--dry-run")
    assert left["bands"] == [] and left["at_target"] == 2
    assert list((file_vault.state_dir / "spool").iterdir()) == []
    assert [v["compression_levels"][1] for v in file_vault.versions("docs")] == [LEVEL, LEVEL]
    all_restore(file_vault, tmp_path, seen)
    check_clean(file_vault)
    nas = second_machine(file_vault, tmp_path / "nas2")
    nas.run("index", "rebuild", "--from", "sidecars")
    all_restore(nas, tmp_path, seen)
    check_clean(nas)


def test_archived_bands_are_never_touched_and_previews_are_carried(s3_bucket: Any, tmp_path: Path) -> None:
    """On S3 with the archive step (the default DEEP_ARCHIVE): photos' band (over 1 MiB) is
    archived by the snapshot, docs' (small) stays STANDARD with its preview object, misc's
    is moved to GLACIER behind vaultfs's back. Only docs' is rewritten."""
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
    env.vault_extra = f"compression_level = 1\nauto_max = {LEVEL}\n"
    photos = env.add_collection("photos")
    docs = env.add_collection("docs")
    misc = env.add_collection("misc")
    env.extra_config = 'frame_size = "1MiB"\n'  # misc's table
    write(photos / "a.log", log_text(3, 2 * MiB))
    write(photos / "b.bin", os.urandom(MiB))
    for i in range(3):
        write(docs / f"d{i}.log", log_text(20 + i, 200_000))
    write(misc / "m.log", log_text(30, 300_000))
    env.run("init")
    done = env.json("snapshot")
    assert sum(c["archived"] for c in done["collections"]) == 1
    seen = tmp_path / "docs-v1"
    shutil.copytree(docs, seen)
    plan = env.json("recompress", "--dry-run")
    assert sorted(b["collection"] for b in plan["bands"]) == ["docs", "misc"]  # STANDARD so far
    [misc_band] = [b["band"] for b in plan["bands"] if b["collection"] == "misc"]
    [photos_band] = [b["band"] for b in plan["skipped"] if b["collection"] == "photos"]
    client = s3_bucket.client()
    key = f"vault/bands/{misc_band}.tar.zst"
    source = {"Bucket": s3_bucket.name, "Key": key}
    client.copy_object(Bucket=s3_bucket.name, Key=key, StorageClass="GLACIER", CopySource=source)
    untouched = {k: v for k, v in band_objects(env).items() if photos_band in k or misc_band in k}
    [old_docs] = bands_of(env) - {photos_band, misc_band}
    old_preview = preview_ranges(env, old_docs, tmp_path)
    assert len(old_preview) == 3  # each file's head

    result = env.json("recompress")
    assert [b["band"] for b in result["bands"]] == [old_docs] and result["deleted"] == [old_docs]
    why = {b["band"]: b["why"] for b in result["skipped"]}
    assert "archived in DEEP_ARCHIVE: recompress never touches archived bands" in why[photos_band]
    assert "the store holds it in GLACIER: recompress never touches archived bands" in why[misc_band]
    assert result["archived"] == 1
    assert {k: v for k, v in band_objects(env).items() if photos_band in k or misc_band in k} == untouched
    text = env.run("recompress").stdout
    assert text.startswith("nothing to recompress") and "already at it or incompressible, 1 archived)" in text
    assert f"{misc_band}  misc: the store holds it in GLACIER" in text and photos_band not in text

    # The new band has the old one's preview ranges, under its own id.
    [new] = result["new_bands"]
    assert f"bands/{old_docs}.preview" not in env.store_keys("bands/")
    assert preview_ranges(env, new, tmp_path) == old_preview
    out = tmp_path / "restored"
    env.run("restore", "fetch", "docs@v1", "--to", str(out))
    assert diff_r(seen, out) == []
    check = env.json("check")
    assert check["ok"] is True, check["problems"]


def test_bands_at_the_target_or_incompressible_are_left(file_vault: VaultEnv, tmp_path: Path) -> None:
    file_vault.vault_extra = f"compression_level = {LEVEL}\nauto_max = {LEVEL}\n"
    docs = file_vault.add_collection("docs")
    media = file_vault.add_collection("media")
    write(docs / "a.log", log_text(5, 600_000))
    write(media / "clip.bin", os.urandom(2 * MiB))  # already compressed media: level -1
    file_vault.run("init")
    file_vault.run("snapshot")
    before = band_objects(file_vault)
    for level in (str(LEVEL), "3"):  # at the target; and a lower target never rewrites
        done = file_vault.json("recompress", "--level", level)
        assert done["bands"] == [] and done["new_bands"] == [] and done["at_target"] == 2
    assert band_objects(file_vault) == before
    assert file_vault.json("recompress", "--level", "12", "--collection", "media", "--dry-run")["bands"] == []
    plan = file_vault.json("recompress", "--level", "12", "--collection", "docs", "--dry-run")
    assert [b["collection"] for b in plan["bands"]] == ["docs"] and plan["level"] == 12
    assert plan["bands"][0]["levels"] == [LEVEL, LEVEL]
    for bad in ("0", "23", "high"):
        refused = file_vault.run("recompress", "--level", bad, expect=2)
        assert "--level" in refused.stderr and "from 1 to 22" in refused.stderr
    refused = file_vault.run("recompress", "--collection", "nope", expect=2)
    assert refused.stderr.strip() == (
        "vaultfs: error: --collection nope: no such collection (known: docs, media)"
    )


def test_levels_of_bands_written_before_they_were_recorded() -> None:
    """No ``frame_levels`` in the catalog: a frame that shrank by less than 3 % counts as
    incompressible, every other one as level 3 (the fixed default of those versions)."""
    info = BandInfo(
        band=BandId("20240101T000000Z-00000000"),
        state="standard",
        size=1200,
        sha256=b"",
        uncompressed_size=3060,
        frames=((100, 1000), (990, 1000), (200, 1000), (50, 60)),  # the last: the catalog's
    )
    assert frame_levels(info, {}) == ((UNKNOWN_LEVEL, CHEAP_LEVEL, UNKNOWN_LEVEL), False)
    assert low_share(info, (UNKNOWN_LEVEL, CHEAP_LEVEL, UNKNOWN_LEVEL), 19) == pytest.approx(2 / 3)
    assert low_share(info, (UNKNOWN_LEVEL, CHEAP_LEVEL, UNKNOWN_LEVEL), 3) == 0
    recorded = {"frame_levels": [[1, 2], [19, 1]]}
    assert frame_levels(info, recorded) == ((1, 1, 19), True)
    assert low_share(info, (1, 1, 19), 19) == pytest.approx(2 / 3)
    # Runs that do not add up to the data frames are not trusted.
    assert frame_levels(info, {"frame_levels": [[1, 2]]})[1] is False


def test_only_live_files_are_copied(file_vault: VaultEnv, tmp_path: Path) -> None:
    """v1's band holds a file v2 deleted; once v1 is forgotten the new band holds only the
    live file, and no version record copy (v1 is gone; v2's band carries its own)."""
    file_vault.vault_extra = f"compression_level = 1\nauto_max = {LEVEL}\n"
    src = file_vault.add_collection("docs")
    write(src / "gone.log", log_text(7, 500_000))
    write(src / "kept.log", log_text(8, 500_000))
    file_vault.run("init")
    file_vault.run("snapshot")
    [v1_band] = bands_of(file_vault)
    (src / "gone.log").unlink()
    write(src / "new.log", log_text(9, 300_000))
    file_vault.run("snapshot", expect=3)  # a deletion in a cold collection: a warning
    file_vault.run("accept", "docs")
    file_vault.run("forget", "docs", "--keep", "1")
    seen = {2: tmp_path / "v2"}
    shutil.copytree(src, seen[2])
    done = file_vault.json("recompress")
    [v1] = [b for b in done["bands"] if b["band"] == v1_band]
    assert (v1["live_blobs"], v1["dead_blobs"]) == (1, 1)
    out = unpack(file_vault, v1["new_band"], tmp_path)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        ".vaultfs/catalog.json",
        "docs/kept.log",
    ]
    assert "version" not in json.loads((out / ".vaultfs/catalog.json").read_bytes())
    all_restore(file_vault, tmp_path, seen)
    check_clean(file_vault)
    assert file_vault.json("prune")["deleted"] == []  # nothing left over
    nas = second_machine(file_vault, tmp_path / "nas2")
    nas.run("index", "rebuild", "--from", "sidecars")
    all_restore(nas, tmp_path, seen)
