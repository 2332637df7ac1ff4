"""Finding preview ranges in hostile files (issue 19 point 1): bounded, never raising.

`find_ranges` parses whatever a NAS holds. Broken, truncated and malicious JPEG, TIFF and
MP4 files must give at most the head plus bounded extra ranges inside the file, with a
bounded number of reads — never an exception out of the snapshot.
"""

from __future__ import annotations

import itertools
import random
import struct

from tests.test_mount_previews import jpeg_with_thumbnail, mp4_with_moov_at_end, tiff_with_reduced_image
from tests.vaultenv import VaultEnv
from vaultfs.snapshot.previews import EXTRA_MAX, MAX_READS, MOOV_MAX, find_ranges

HEAD = 4096


def ranges_of(data: bytes, reads: list[int]) -> list[tuple[int, int]]:
    def pread(offset: int, length: int) -> bytes:
        reads.append(length)
        return data[offset : offset + length]

    return find_ranges(data[:65536], len(data), HEAD, pread)


def check_bounded(data: bytes) -> list[tuple[int, int]]:
    reads: list[int] = []
    ranges = ranges_of(data, reads)
    assert len(reads) <= MAX_READS
    if len(data) <= HEAD:
        assert ranges == []
        return ranges
    assert ranges[0][0] == 0 and ranges[0][1] >= HEAD
    assert all(o >= 0 and o + n <= len(data) and n > 0 for o, n in ranges)
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(ranges))  # merged
    assert sum(n for _, n in ranges) <= HEAD + max(EXTRA_MAX, MOOV_MAX)
    return ranges


def test_mutated_files_never_raise_and_stay_bounded() -> None:
    rng = random.Random(19)
    jpg, _, _ = jpeg_with_thumbnail()
    tif, _ = tiff_with_reduced_image()
    mp4, _ = mp4_with_moov_at_end()
    for sample in (jpg, tif, mp4):
        for _ in range(150):
            data = bytearray(sample)
            for _ in range(rng.randint(1, 8)):  # flip bytes, mostly in the structures up front
                data[rng.randrange(min(len(data), 20_000))] = rng.randrange(256)
            check_bounded(bytes(data))
            check_bounded(bytes(data[: rng.randrange(len(data))]))  # truncated


def test_hostile_structures() -> None:
    # An IFD that names itself as the next one and as its own SubIFD; counts out of range.
    loop = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 2)
    loop += struct.pack("<HHII", 0x14A, 4, 1, 8) + struct.pack("<HHII", 0x111, 4, 0xFFFFFFFF, 10)
    loop += struct.pack("<I", 8)
    assert check_bounded(loop + bytes(100_000)) == [(0, HEAD)]
    # MP4 boxes of size 0 (to the end), 1 with a huge 64-bit size, and a moov too large to keep.
    assert check_bounded(
        struct.pack(">I4s", 16, b"ftyp") + bytes(8) + struct.pack(">I4s", 0, b"mdat") + bytes(9000)
    ) == [(0, HEAD)]
    huge = struct.pack(">I4s", 16, b"ftyp") + bytes(8) + struct.pack(">I4sQ", 1, b"mdat", 2**63) + bytes(9000)
    assert check_bounded(huge) == [(0, HEAD)]
    big_moov = struct.pack(">I4s", 16, b"ftyp") + bytes(8) + struct.pack(">I4s", 8000, b"mdat") + bytes(7992)
    big_moov += struct.pack(">I4s", MOOV_MAX + 1, b"moov") + bytes(100)
    assert check_bounded(big_moov) == [(0, HEAD)]
    # A JPEG whose segments never reach SOS, and one whose Exif segment runs past the end.
    assert check_bounded(b"\xff\xd8" + b"\xff\xe0\x00\x02" * 30_000) == [(0, HEAD)]
    cut = b"\xff\xd8\xff\xe1\xff\xff" + b"Exif\0\0" + bytes(9000)
    assert check_bounded(cut) == [(0, HEAD)]
    # The well-formed samples keep what the mount test reads.
    jpg, thumb_at, thumb = jpeg_with_thumbnail()
    assert any(o <= thumb_at and thumb_at + len(thumb) <= o + n for o, n in check_bounded(jpg))
    mp4, moov_at = mp4_with_moov_at_end()
    assert check_bounded(mp4) == [(0, HEAD), (moov_at, len(mp4) - moov_at)]


def test_small_files_are_kept_whole_only_when_asked() -> None:
    small = b"x" * HEAD
    assert find_ranges(small, len(small), HEAD) == []
    assert find_ranges(small, len(small), HEAD, small_files=True) == [(0, HEAD)]
    assert find_ranges(b"", 0, HEAD, small_files=True) == []  # nothing to keep
    big = b"y" * (HEAD + 1)
    assert find_ranges(big, len(big), HEAD, small_files=True) == [(0, HEAD)]  # a head, as before


def test_preview_head_is_checked(file_vault: VaultEnv) -> None:
    """On a warm collection (never archived) the key would be a setting that never applies."""
    file_vault.add_collection("code", tier="warm")
    file_vault.run("init")
    file_vault.extra_config = 'preview_head = "4KiB"\n'
    file_vault.write_config()
    proc = file_vault.run("versions", expect=2)
    assert proc.stderr == (
        f"vaultfs: error: {file_vault.config_path}: [collections.code].preview_head: only for cold "
        'collections (a warm collection is never archived); remove it or set tier = "cold"\n'
    )
    file_vault.collections["code"] = (file_vault.collections["code"][0], "cold")
    file_vault.extra_config = 'preview_head = "2MiB"\n'
    file_vault.write_config()
    proc = file_vault.run("versions", expect=2)
    assert "[collections.code].preview_head = 2097152: at most 1MiB (0 keeps no previews)" in proc.stderr
    file_vault.extra_config = "preview_head = 0\n"
    file_vault.write_config()
    file_vault.run("versions")
    file_vault.collections["code"] = (file_vault.collections["code"][0], "warm")
    file_vault.extra_config = "preview_small_files = true\n"
    file_vault.write_config()
    proc = file_vault.run("versions", expect=2)
    assert "[collections.code].preview_small_files: only for cold collections" in proc.stderr
