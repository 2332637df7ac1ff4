"""Previews of archived files (issue 19 points 1-2): preview ranges kept hot at snapshot
time, served by the mount without a restore; the first read of cold bytes answers
ENODATA and requests exactly one restore.

A real kernel mount over moto's S3 (every band archived), through `CountingProxy`, which
counts RestoreObject requests on the wire. ``preview_head`` is 4 KiB here, so the EXIF
thumbnail, the TIFF's reduced-resolution image and the MP4's moov are served only if the
snapshot found them by parsing the files.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.moto_server import S3Bucket
from tests.mounts import mount_log, mounted
from tests.test_archive import release_restores
from tests.test_mount_restore import Cold, CountingProxy, state
from tests.trees import write
from tests.vaultenv import VaultEnv

HEAD = 4096


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def jpeg_with_thumbnail() -> tuple[bytes, int, bytes]:
    """A JPEG whose Exif APP1 holds IFD0 and IFD1 pointing at a 160x120 JPEG thumbnail
    (written by hand: Pillow writes the Exif bytes it is given). Returns (file, the
    thumbnail's offset in it, the thumbnail)."""
    small = io.BytesIO()
    noise(160, 120).save(small, "JPEG", quality=90)
    thumb = small.getvalue()
    gap = 2 * HEAD  # the thumbnail lies beyond the head: only the Exif walk keeps it
    data_at = 8 + (2 + 12 + 4) + (2 + 2 * 12 + 4) + gap
    tiff = b"II*\0" + struct.pack("<I", 8)
    tiff += struct.pack("<HHHII", 1, 0x0112, 3, 1, 1) + struct.pack("<I", 8 + 2 + 12 + 4)
    tiff += struct.pack("<HHHIIHHII", 2, 0x0201, 4, 1, data_at, 0x0202, 4, 1, len(thumb)) + struct.pack(
        "<I", 0
    )
    out = io.BytesIO()
    noise(900, 700).save(out, "JPEG", quality=95, exif=b"Exif\0\0" + tiff + bytes(gap) + thumb)
    jpg = out.getvalue()
    at = jpg.find(b"Exif\0\0") + 6 + data_at
    assert at > HEAD and jpg[at : at + len(thumb)] == thumb
    return jpg, at, thumb


def tiff_with_reduced_image() -> tuple[bytes, Image.Image]:
    """An 800x600 TIFF whose second IFD is a 160x120 reduced-resolution image."""
    thumb = noise(160, 120)
    out = io.BytesIO()
    noise(800, 600).save(out, "TIFF", save_all=True, append_images=[thumb])
    return out.getvalue(), thumb


def mp4_with_moov_at_end() -> tuple[bytes, int]:
    """ftyp, a 2 MB mdat, then moov (as cameras write it). Returns (file, moov's offset)."""
    ftyp = struct.pack(">I4s", 32, b"ftyp") + b"isom\0\0\2\0isomiso2avc1mp41"
    mdat = os.urandom(2_000_000)
    moov_body = struct.pack(">I4s", 108, b"mvhd") + os.urandom(100)
    moov_at = len(ftyp) + 8 + len(mdat)
    return ftyp + struct.pack(">I4s", 8 + len(mdat), b"mdat") + mdat + struct.pack(
        ">I4s", 116, b"moov"
    ) + moov_body, moov_at


@dataclass
class Media:
    cold: Cold
    files: dict[str, bytes]
    jpeg_thumb: tuple[int, bytes]
    tiff_thumb: Image.Image
    moov_at: int
    preview_bytes: int


@pytest.fixture
def media(s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[Media]:
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="16MiB")
    src = env.add_collection("media", tier="cold")
    jpg, thumb_at, thumb = jpeg_with_thumbnail()
    tif, tif_thumb = tiff_with_reduced_image()
    mp4, moov_at = mp4_with_moov_at_end()
    files = {
        "photo.jpg": jpg,
        "scan.tif": tif,
        "clip.mp4": mp4,
        "notes.txt": b"".join(b"line %d of the notes\n" % i for i in range(2000)),
        "damaged.txt": b"".join(b"another line %d\n" % i for i in range(2000)),
        "tiny.txt": b"no larger than the head: no previews\n",
    }
    for name, data in files.items():
        write(src / name, data)
    env.extra_config = f'preview_head = "{HEAD // 1024}KiB"\n'  # in [collections.media]
    env.write_config()
    env.run("init")
    snap = env.json("snapshot")["collections"][0]
    assert snap["archived"] == 1
    proxy = CountingProxy(s3_bucket.endpoint_url)
    env.s3_endpoint = proxy.url
    cold = Cold(env, files, proxy, s3_bucket)
    env.extra_config += "[mount]\npoll_interval = 3600\n"
    env.write_config()
    try:
        yield Media(cold, files, (thumb_at, thumb), tif_thumb, moov_at, snap["preview_bytes"])
    finally:
        release_restores(s3_bucket)
        proxy.close()


def dd(program: Path | str, path: Path, offset: int, length: int) -> subprocess.CompletedProcess[bytes]:
    """One read of `length` bytes at `offset` (dd skips by lseek, then reads once)."""
    return subprocess.run(
        [
            str(program),
            f"if={path}",
            f"bs={length}",
            f"skip={offset}",
            "count=1",
            "iflag=skip_bytes",
            "status=none",
        ],
        capture_output=True,
        timeout=60,
    )


def dd_named(tmp_path: Path, name: str) -> Path:
    """A copy of dd whose process name (comm) is `name`."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    return Path(shutil.copy(shutil.which("dd") or "/bin/dd", tmp_path / "bin" / name))


def corrupt_preview(bucket: S3Bucket, band: str, original: bytes) -> None:
    """Flip one byte of `original`'s bytes inside the band's preview object (same size)."""
    client, key = bucket.client(), f"vault/bands/{band}.preview"
    obj = bytearray(client.get_object(Bucket=bucket.name, Key=key)["Body"].read())
    at = obj.find(original)
    assert at >= 0
    obj[at + 100] ^= 0x01
    client.put_object(Bucket=bucket.name, Key=key, Body=bytes(obj))


def test_previews_are_served_and_cold_bytes_restore_once(media: Media, tmp_path: Path) -> None:
    cold, files = media.cold, media.files
    # dd under names of no_restore_processes: a thumbnailer, PCManFM's thumbnail thread
    thumbnailer, loader = (dd_named(tmp_path, name) for name in ("gdk-pixbuf-thumbnailer", "loader"))
    with mounted(cold.env, tmp_path / "mnt") as mnt:
        (band,) = by_band_of(mnt)
        corrupt_preview(cold.bucket, band, files["damaged.txt"][:HEAD])
        v1 = mnt / "media" / "v1"
        assert state(v1 / "photo.jpg") == "archived"
        thumb_at, thumb = media.jpeg_thumb
        wanted = [
            ("photo.jpg", 0, HEAD),
            ("photo.jpg", thumb_at, len(thumb)),  # the EXIF thumbnail, beyond the head
            ("clip.mp4", 0, 32),
            ("clip.mp4", media.moov_at, 116),  # moov after mdat
            ("notes.txt", 0, HEAD),
            ("scan.tif", 0, 8),
        ]
        for program in (thumbnailer, "dd"):  # a thumbnailer, then an ordinary process
            for name, offset, length in wanted:
                got = dd(program, v1 / name, offset, length)
                assert got.returncode == 0, (name, got.stderr)
                assert got.stdout == files[name][offset : offset + length], name
        assert Image.open(io.BytesIO(thumb)).size == (160, 120)
        # A thumbnail reader walks the TIFF's IFDs to the reduced-resolution image.
        with open(v1 / "scan.tif", "rb", buffering=0) as f, Image.open(f) as im:
            im.seek(1)
            assert im.tobytes() == media.tiff_thumb.tobytes()
        # A read that starts in a kept range and runs on is served up to the range's end.
        with open(v1 / "notes.txt", "rb", buffering=0) as f:
            assert os.pread(f.fileno(), 1024 * 1024, 0) == files["notes.txt"][:HEAD]
        assert cold.proxy.restores == []

        # Cold bytes: ENODATA; a thumbnailer's read asks for no restore.
        got = dd(thumbnailer, v1 / "clip.mp4", 1_000_000, 4096)
        assert got.returncode == 1 and b"No data available" in got.stderr
        assert cold.proxy.restores == [] and state(v1 / "clip.mp4") == "archived"
        got = dd(loader, v1 / "scan.tif", 1_000_000, 4096)
        assert got.returncode == 1 and b"No data available" in got.stderr
        got = dd(thumbnailer, v1 / "tiny.txt", 0, 10)  # no previews: its open answers ENODATA
        assert got.returncode == 1 and b"No data available" in got.stderr
        assert cold.proxy.restores == []

        # 20 ordinary readers of cold bytes (the middle of each file) at once: one request.
        read_cold_bytes_at_once(v1, files, ["photo.jpg", "scan.tif", "clip.mp4", "notes.txt"] * 5)
        assert cold.proxy.requests_for(band) == 1
        assert state(v1 / "photo.jpg").startswith("restoring")
        copy = subprocess.run(["cp", str(v1 / "scan.tif"), str(tmp_path / "copy.tif")], capture_output=True)
        assert copy.returncode == 1 and b"No data available" in copy.stderr
        assert len(cold.proxy.restores) == 1
        # Previews are still served while the band is restoring.
        assert dd("dd", v1 / "clip.mp4", media.moov_at, 116).stdout == files["clip.mp4"][media.moov_at :]

        # A corrupted preview range: EIO, never its bytes.
        got = dd("dd", v1 / "damaged.txt", 0, 512)
        assert got.returncode == 1 and got.stdout == b"" and b"Input/output error" in got.stderr
        assert len(cold.proxy.restores) == 1
    log = mount_log(cold.env).read_text()
    assert f"preview object of band {band}: the range at" in log and "fails its SHA-256" in log
    assert "matching no_restore_processes 'loader'" in log
    assert "matching no_restore_processes 'gdk-pixbuf-thumbnailer'" in log
    assert "Traceback" not in log

    # What the snapshot reported is what the band's preview object holds.
    head = cold.bucket.client().head_object(Bucket=cold.bucket.name, Key=f"vault/bands/{band}.preview")
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    # heads, the JPEG up to its thumbnail's end, moov, the TIFF's reduced image (+ its IFD)
    known = 4 * HEAD + thumb_at + len(thumb) + 116 + 160 * 120 * 3
    assert known <= media.preview_bytes < known + 1024  # + the TIFF's second IFD
    assert media.preview_bytes < head["ContentLength"] < media.preview_bytes + 4096  # + index


def by_band_of(mnt: Path) -> list[str]:
    """The bands holding v1's files."""
    v1 = mnt / "media" / "v1"
    return sorted({os.getxattr(p, "user.vaultfs.band").decode() for p in v1.iterdir()})


def read_cold_bytes_at_once(v1: Path, files: dict[str, bytes], names: list[str]) -> None:
    """One process per name reads 4 KiB from the middle of the file, all at the same
    moment (each waits for its line first); each must fail with ENODATA."""
    procs = [
        subprocess.Popen(
            [
                "sh",
                "-c",
                'read x; exec dd if="$0" bs=4096 skip="$1" count=1 iflag=skip_bytes',
                str(v1 / name),
                str(len(files[name]) // 2),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and out == b"" and b"No data available" in err, err


def test_preview_objects_live_and_go_with_their_bands(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """check and an index rebuild leave preview objects alone (a rebuilt catalog still
    serves previews: they are found by band id); prune deletes them with their band."""
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="2MiB")
    src = env.add_collection("media", tier="cold")
    mp4, moov_at = mp4_with_moov_at_end()
    write(src / "old.mp4", mp4)
    env.run("init")
    assert "of previews hot" in env.run("snapshot").stdout
    (old,) = [
        k.split("/")[1].removesuffix(".preview") for k in env.store_keys("bands/") if k.endswith(".preview")
    ]
    (src / "old.mp4").unlink()
    write(src / "new.mp4", mp4_with_moov_at_end()[0])
    env.run("snapshot", expect=3)  # a cold collection lost a file: v1 is pinned
    assert len([k for k in env.store_keys("bands/") if k.endswith(".preview")]) == 2
    env.run("check")
    env.run("index", "rebuild")
    env.run("check")
    with mounted(env, tmp_path / "mnt") as mnt:
        assert state(mnt / "media" / "v1" / "old.mp4") == "archived"
        got = dd("dd", mnt / "media" / "v1" / "old.mp4", moov_at, 116)
        assert got.returncode == 0 and got.stdout == mp4[moov_at:]
    env.run("accept", "media@v2")
    env.run("forget", "media", "--keep", "1")
    pruned = env.json("prune", "--allow-early-delete")
    assert old in {b["band"] for b in pruned["deleted"]}
    left = env.store_keys("bands/")
    assert not [k for k in left if old in k] and len([k for k in left if k.endswith(".preview")]) == 1
    env.run("check")


def test_small_files_kept_whole_copy_without_a_restore(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """With ``preview_small_files``, a file no larger than ``preview_head`` is kept whole:
    `cp` of it from an archived band gets its bytes and asks for no restore; a larger
    file still keeps only its head."""
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="16MiB")
    src = env.add_collection("media", tier="cold")
    files = {
        "tiny.txt": b"no larger than the head: kept whole\n",
        "empty.txt": b"",
        "big.bin": os.urandom(2_000_000),  # bands under 1 MiB stay in STANDARD
    }
    for name, data in files.items():
        write(src / name, data)
    env.extra_config = f'preview_head = "{HEAD // 1024}KiB"\npreview_small_files = true\n'
    env.write_config()
    env.run("init")
    snap = env.json("snapshot")["collections"][0]
    assert snap["archived"] == 1
    assert snap["preview_bytes"] == len(files["tiny.txt"]) + HEAD
    proxy = CountingProxy(s3_bucket.endpoint_url)
    env.s3_endpoint = proxy.url
    env.extra_config += "[mount]\npoll_interval = 3600\n"
    env.write_config()
    try:
        with mounted(env, tmp_path / "mnt") as mnt:
            v1 = mnt / "media" / "v1"
            assert state(v1 / "tiny.txt") == "archived"
            for name in ("tiny.txt", "empty.txt"):
                copy = subprocess.run(["cp", str(v1 / name), str(tmp_path / name)], capture_output=True)
                assert copy.returncode == 0, copy.stderr
                assert (tmp_path / name).read_bytes() == files[name]
            assert proxy.restores == []
            got = dd("dd", v1 / "big.bin", 0, HEAD)
            assert got.returncode == 0 and got.stdout == files["big.bin"][:HEAD]
            got = dd("dd", v1 / "big.bin", HEAD, 512)  # beyond the head: cold
            assert got.returncode == 1 and b"No data available" in got.stderr
            assert len(proxy.restores) == 1
    finally:
        release_restores(s3_bucket)
        proxy.close()
