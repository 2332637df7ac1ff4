"""The warm tier's frame policy against one frame per band (docs/benchmarks.md, "Warm frames").

Packs the small files of a source tree (default: the Python standard library's directory)
into real bands (`vaultfs.band.BandWriter`, level 3) with several frame policies, and prints
for each: the band's size against one frame per band (the compression-ratio cost), how
many files straddle two frames, and what bringing one file back costs — the compressed
bytes of the frames holding it (one ranged GET) and the time to decompress them.

Run: .venv/bin/python tools/bench/warm_frames.py [TREE ...] [--limit 64MiB]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vaultfs import band
from vaultfs.config import parse_size
from vaultfs.snapshot.files import SMALL_FILE

KIB, MIB = 1024, 1024 * 1024
META = band.MemberMeta(0o644, 1000, 100, 1_700_000_000_123_456_789)


def small_files(roots: list[Path], limit: int) -> list[tuple[bytes, bytes]]:
    """(member name, content) of the regular files up to SMALL_FILE under `roots`, walked in
    sorted order as a snapshot packs them, until `limit` bytes."""
    out: list[tuple[bytes, bytes]] = []
    total = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")  # as .gitignore would
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if not path.is_file() or path.is_symlink() or path.stat().st_size > SMALL_FILE:
                    continue
                rel = os.fsencode(path.relative_to(root.parent))
                data = path.read_bytes()
                out.append((rel, data))
                total += len(data)
                if total >= limit:
                    return out
    return out


def pack(files: list[tuple[bytes, bytes]], path: Path, frame_size: int, whole: bool) -> band.ClosedBand:
    w = band.BandWriter(path, "bench", frame_size=frame_size, threads=1, whole_members=whole)
    for name, data in files:
        w.add_blob(name, META, data, hashlib.sha256(data).digest())
    return w.close({}, sync=False)


def one_file_cost(closed: band.ClosedBand) -> tuple[float, float, float]:
    """Share of files whose content straddles frames; mean compressed KiB fetched for one
    file (the frames holding it); mean ms to decompress them (over a sample of files)."""
    data_frames = closed.frames[:-1]
    spans = [band.frames_for_range(data_frames, b.offset, max(b.size, 1)) for b in closed.blobs]
    straddle = sum(len(s) > 1 for s in spans) / len(spans)
    fetched = statistics.mean(sum(f.compressed_size for f in s) for s in spans) / KIB
    with open(closed.path, "rb") as f:
        blob = f.read()
    decode_ms = {}  # by the frames a file needs: each distinct span decoded once
    for s in spans:
        key = (s[0].compressed_offset, len(s))
        if key in decode_ms:
            continue
        raw = blob[s[0].compressed_offset : s[-1].compressed_offset + s[-1].compressed_size]
        t = time.perf_counter()
        band.decompress_frames(raw, s)
        decode_ms[key] = (time.perf_counter() - t) * 1000
    ms = statistics.mean(decode_ms[(s[0].compressed_offset, len(s))] for s in spans)
    return straddle, fetched, ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="*", type=Path, default=[Path(os.__file__).parent])
    ap.add_argument("--limit", default="64MiB", help="read at most this much (default 64MiB)")
    args = ap.parse_args()
    files = small_files(args.trees, parse_size(args.limit, "--limit"))
    raw = sum(len(d) for _, d in files)
    print(f"{len(files)} files, {raw / MIB:.1f} MiB, mean {raw / len(files) / KIB:.1f} KiB ({args.trees})")
    whole_stream = raw + 2048 * len(files)  # above the tar stream's size: one data frame
    policies = [
        ("one frame per band", min(whole_stream, band.FRAME_SIZE_MAX), False),
        ("4 MiB, fixed", 4 * MIB, False),
        ("1 MiB, fixed", MIB, False),
        ("1 MiB, whole members (warm)", MIB, True),
        ("256 KiB, whole members", 256 * KIB, True),
        ("64 KiB, whole members", 64 * KIB, True),
    ]
    print("| frames | band MiB | vs one frame | files straddling | KiB fetched per file | ms to decode |")
    print("|---|---:|---:|---:|---:|---:|")
    base = 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, size, whole in policies:
            path = Path(tmp) / "band"
            closed = pack(files, path, size, whole)
            base = base or closed.size
            straddle, fetched, ms = one_file_cost(closed)
            print(
                f"| {label} | {closed.size / MIB:.2f} | {closed.size / base - 1:+.2%} | "
                f"{straddle:.1%} | {fetched:.0f} | {ms:.2f} |"
            )
            path.unlink()


if __name__ == "__main__":
    main()
