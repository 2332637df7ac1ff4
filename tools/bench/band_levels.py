"""Measurements behind vaultfs.band's choices (docs/band-format.md): tar header speed, the
cheapest zstd level for incompressible frames, the cost of the incompressibility probe, and
the writer's throughput and peak RSS. Run: .venv/bin/python tools/bench/band_levels.py
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vaultfs import band

MIB = 1024 * 1024


def best(fn: object, n: int = 5) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def text_corpus(size: int) -> bytes:
    """Real, mixed text: the Python standard library's sources."""
    parts, total = [], 0
    for p in sorted(Path(os.__file__).parent.rglob("*.py")):
        data = p.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    return b"".join(parts)[:size]


def headers() -> None:
    meta_ns = band.MemberMeta(0o644, 1000, 100, 1_700_000_000_123_456_789, "alice", "users")
    meta_s = band.MemberMeta(0o644, 1000, 100, 1_700_000_000_000_000_000, "alice", "users")
    name = b"photos/2023/holiday/IMG_0001.jpg"
    n = 100_000
    for label, meta in (("pax mtime with ns", meta_ns), ("whole-second mtime (ustar)", meta_s)):
        dt = best(lambda meta=meta: [band.member_header(name, meta, 12345) for _ in range(n)])
        print(f"band.member_header, {label}: {dt / n * 1e6:.2f} us")
    ti = tarfile.TarInfo(name.decode())
    ti.size, ti.mtime, ti.uname, ti.gname = 12345, 1_700_000_000.123456789, "alice", "users"
    dt = best(lambda: [ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") for _ in range(n // 10)])
    print(f"tarfile.TarInfo.tobuf (PAX): {dt / (n // 10) * 1e6:.2f} us")


def levels() -> None:
    rnd = os.urandom(8 * MIB)
    text = text_corpus(8 * MIB)
    print(f"\n8 MiB frame, one thread, best of 5 (zstd {zstandard.ZSTD_VERSION})")
    print("level  random MB/s  ratio   text MB/s  ratio")
    for level in (-20, -5, -1, 1, 3, 6, 9, 12, 19):
        c = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        row = [f"{level:>5}"]
        for data in (rnd, text):
            n = 1 if level >= 12 else 5
            dt = best(lambda c=c, data=data: c.compress(data), n)
            row.append(f"{len(data) / dt / 1e6:>10.0f}  {len(c.compress(data)) / len(data):.3f}")
        print("  ".join(row))
    dt = best(lambda: band.is_incompressible(rnd), 20)
    print(
        f"\nprobe (is_incompressible, {band.SAMPLE_SLICES} x {band.SAMPLE_SLICE // 1024} KiB "
        f"at level 1): {dt * 1e3:.3f} ms per frame; random -> {band.is_incompressible(rnd)}, "
        f"text -> {band.is_incompressible(text)}"
    )


def writer() -> None:
    text = text_corpus(64 * MIB)
    rnd = os.urandom(64 * MIB)
    with tempfile.TemporaryDirectory() as d:
        for label, data in (("text", text), ("random", rnd)):
            path = Path(d) / label
            t = time.perf_counter()
            w = band.BandWriter(path, "bench")
            for i in range(0, len(data), 4 * MIB):
                piece = data[i : i + 4 * MIB]
                w.add_blob(b"f%d" % i, band.MemberMeta(0o644, 0, 0, 0), piece, hashlib.sha256(piece).digest())
            closed = w.close({})
            dt = time.perf_counter() - t
            print(
                f"writer, 64 MiB {label}, 2 threads: {len(data) / dt / 1e6:.0f} MB/s, "
                f"ratio {closed.size / len(data):.3f}, levels {set(closed.frame_levels)}"
            )
        t = time.perf_counter()
        w = band.BandWriter(Path(d) / "small", "bench")
        for i in range(25_000):
            piece = text[i * 2000 : (i + 1) * 2000]
            w.add_blob(
                b"dir/sub/file-%06d.txt" % i,
                band.MemberMeta(0o644, 1000, 100, 1_700_000_000_123_456_789),
                piece,
                hashlib.sha256(piece).digest(),
            )
        w.close({})
        print(f"writer, 25k files of 2 KB: {(time.perf_counter() - t):.2f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (incl. 128 MiB of test data): {rss:.0f} MiB")


if __name__ == "__main__":
    headers()
    levels()
    writer()
