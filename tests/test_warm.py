"""The warm tier on S3: bands in ``[s3].warm_class``, never archived, and one small file
back with one ranged GET of one frame.

S3 is moto's HTTP server; `RequestLog` counts on the server side every request the
`vaultfs` subprocess sends.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.moto_server import RequestLog, S3Bucket
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.band import frames_for_range, frames_from_sizes
from vaultfs.model import BlobId, band_key


def s3_env(bucket: S3Bucket, tmp_path: Path, s3_extra: str = "", band_size: str = "4MiB") -> VaultEnv:
    env = VaultEnv.on_s3(tmp_path, bucket, band_size=band_size, s3_extra=s3_extra)
    env.write_config()
    return env


def head_class(env: VaultEnv, key: str) -> str:
    head = env.bucket.client().head_object(Bucket=env.bucket.name, Key="vault/" + key)
    return str(head.get("StorageClass", "STANDARD"))


def test_warm_bands_are_stored_in_the_warm_class_and_never_archived(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    env = s3_env(s3_bucket, tmp_path, 'warm_class = "STANDARD_IA"\n', band_size="1MiB")
    code = env.add_collection("code", tier="warm")
    photos = env.add_collection("photos", tier="cold")
    for i in range(2):  # bands over 1 MiB: the size the archive step moves
        write(code / f"big{i}.bin", os.urandom(1_200_000))
        write(photos / f"img{i}.raw", os.urandom(1_200_000))
    write(code / "main.py", b"print('hello')\n")
    env.run("init")
    done = {c["collection"]: c for c in env.json("snapshot")["collections"]}
    assert done["code"]["archived"] == 0 and done["photos"]["archived"] == 2
    vault = env.open_vault()
    try:
        bands = list(vault.catalog.bands())
    finally:
        vault.close()
    warm = [b for b in bands if b.collection == "code"]
    assert len(warm) >= 2 and max(b.size for b in warm) > 1024 * 1024
    for b in warm:  # on the store and in the catalog: the configured class
        assert head_class(env, band_key(b.band)) == "STANDARD_IA"
        assert (b.storage_class, b.state) == ("STANDARD_IA", "standard")
        assert head_class(env, f"bands/{b.band}.catalog.zst") == "STANDARD"  # sidecars stay
    cold = [b for b in bands if b.collection == "photos"]
    assert sorted(head_class(env, band_key(b.band)) for b in cold) == [
        "DEEP_ARCHIVE",
        "DEEP_ARCHIVE",
        "STANDARD",
    ]
    # Later snapshots run the archive step again: it still leaves warm bands alone.
    write(code / "main.py", b"print('changed')\n")
    assert env.json("snapshot")["collections"][0]["archived"] == 0
    assert {head_class(env, band_key(b.band)) for b in warm} == {"STANDARD_IA"}
    out = tmp_path / "out"
    env.run("restore", "fetch", "code@v1", "--to", str(out))
    assert (out / "big1.bin").read_bytes() == (code / "big1.bin").read_bytes()
    # prune prices and times a warm band by its class: STANDARD_IA's 30 days
    env.run("forget", "code", "--keep", "1")
    plan = env.json("prune", "--dry-run")
    young = [b for b in plan["kept_young"] if b["collection"] == "code"]
    assert young and all((b["storage_class"], b["min_days"]) == ("STANDARD_IA", 30) for b in young)


def test_an_archive_class_for_warm_bands_is_refused(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    env = s3_env(s3_bucket, tmp_path, 'warm_class = "DEEP_ARCHIVE"\n')
    env.add_collection("code", tier="warm")
    proc = env.run("init", expect=2)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "[s3].warm_class = 'DEEP_ARCHIVE': warm bands must be readable without a restore" in proc.stderr
    assert "STANDARD_IA" in proc.stderr  # it names what to use instead
    assert env.store_keys() == []


def test_one_small_file_comes_back_with_one_ranged_get_of_one_frame(
    s3_bucket: S3Bucket, tmp_path: Path, s3_requests: RequestLog
) -> None:
    """`restore fetch C@vN one/small/file`: exactly one request, a GET whose range is one
    frame (so one decompression), not the band, its sidecar or its tail.

    The fillers put main.py across the first 1 MiB boundary of the tar stream (10 members
    of 1536 + 102400 bytes, then its header): fixed 1 MiB frames would cut it in two.
    """
    env = s3_env(s3_bucket, tmp_path)
    src = env.add_collection("home", tier="warm")
    for i in range(10):
        write(src / "src" / "app" / f"a{i}.py", os.urandom(51_000).hex().encode())  # 102000 bytes
    main = write(src / "src" / "app" / "main.py", os.urandom(5_000).hex().encode())  # 10 KB
    write(src / "src" / "app" / "z.py", b"after = 1\n" * 3000)
    env.run("init")
    env.run("snapshot")
    vault = env.open_vault()
    try:
        version = vault.resolve_version("home", 1)
        ref = vault.catalog.blob(BlobId(hashlib.sha256(main.read_bytes()).digest()))
        assert ref is not None
        band = vault.catalog.band(ref.band)
        assert band is not None and version.number == 1
    finally:
        vault.close()
    frames = frames_from_sizes(band.frames)
    (frame,) = frames_for_range(frames, ref.offset, ref.size)  # main.py lies in one frame
    assert band.size > 20 * frame.compressed_size  # a GET of more than the frame would show
    out = tmp_path / "out"
    with s3_requests.recording() as log:
        proc = env.run(
            "restore",
            "fetch",
            "home@v1",
            "src/app/main.py",
            "--to",
            str(out),
            env=env.env(PYTHONPROFILEIMPORTTIME="1"),
        )
    first, last = frame.compressed_offset, frame.compressed_offset + frame.compressed_size - 1
    assert [(r.method, r.path, r.range) for r in log] == [
        ("GET", f"/{s3_bucket.name}/vault/{band_key(band.band)}", f"bytes={first}-{last}")
    ]
    assert (out / "src" / "app" / "main.py").read_bytes() == main.read_bytes()
    # The GET was signed without boto3 (its import is most of a short command's start-up),
    # and nothing a warm fetch never runs was imported: the band writer and the salvaging
    # scanner (`vaultfs.band` loads them on first use), Deep Archive restores.
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "vaultfs.store.s3_quick" in imported and "botocore" not in imported
    unused = {"vaultfs.band.writer", "vaultfs.band.scan", "vaultfs.band.salvage", "vaultfs.archive"}
    assert imported & unused == set()


def test_warm_bands_default_to_a_fast_level_and_an_explicit_level_wins(tmp_path: Path) -> None:
    """Warm: zstd level 1 unless the collection or [vault] says otherwise; cold: level 3."""
    from vaultfs.config import load_config
    from vaultfs.snapshot.files import band_settings

    def levels(vault_extra: str, collection_extra: str = "") -> dict[str, int]:
        path = tmp_path / "vault.toml"
        path.write_text(
            f'[vault]\nstore = "file://{tmp_path}/store"\n{vault_extra}'
            f'[collections.code]\npath = "{tmp_path}"\ntier = "warm"\n{collection_extra}'
            f'[collections.photos]\npath = "{tmp_path}"\ntier = "cold"\n'
        )
        config = load_config(path)
        return {c.name: band_settings(config, c)[1] for c in config.collections}

    assert levels("") == {"code": 1, "photos": 3}
    assert levels("compression_level = 6\n") == {"code": 6, "photos": 6}
    assert levels("compression_level = 6\n", "compression_level = 2\n") == {"code": 2, "photos": 6}
