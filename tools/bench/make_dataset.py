#!/usr/bin/env python3
"""Generate a deterministic benchmark dataset shaped like a photo/media NAS plus a source tree.

    tools/bench/make_dataset.py OUT_DIR [--scale 1.0] [--seed 1] [--force]
        [--warm [--node-modules-files 20000] [--build-mb 200]]

At scale 1.0 the tree holds about 2 GB:

* raw    ~1.2 GB  sensor-like raw files (12/14-bit samples in 16-bit little-endian words:
                  smooth gradients plus Gaussian-ish noise in the low bits; zstd -3 gets ~1.4-2x)
* media  ~0.65 GB incompressible JPEG/MP4-like files (a small header, then random bytes):
                  2-8 MB photos and a few 50-100 MB videos
* text   ~0.1 GB  ~25k source-code-like and document-like text files (200 B - 20 KB) in
                  ~1500 nested directories, built from a Zipf-weighted vocabulary
* dup    ~0.05 GB exact copies of some photos and one raw file in another folder

``--warm`` (the warm-tier benchmark, `run.py --scenario warm`) makes each source project under
``src/`` a git repository, as a developer's checkout looks: a ``.gitignore`` that leaves out
``node_modules/``, ``build/``, ``*.log`` and ``.env``; a ``node_modules/`` of
``--node-modules-files`` small files (default 20,000, in ~10-file packages) and a ``build/``
of ``--build-mb`` MB of object files (default 200; half partly compressible, half not), both
ignored; everything else committed, plus a few *tracked-but-ignored* files added with
``git add -f`` (``build/VERSION``, ``logs/release.log``, ``.env``, one file in
``node_modules/``): files git keeps although a pattern matches them, which a backup tool's
own exclude patterns drop. Commits have fixed dates; only ``.git/index`` (stat data) differs
between two runs.

The same seed and scale give a byte-identical tree, mtimes included (set with os.utime). Only
the standard library is used: random.Random(seed).randbytes plus cheap C-level transforms
(bytes.translate, big-int OR, slice interleaving), so 2 GB take well under a minute.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
MARKER = ".bench-dataset"
# 2015-01-01T00:00:00Z: every mtime in the tree is this plus a seeded offset.
EPOCH = 1_420_070_400
DAY = 86_400

# Byte budgets at scale 1.0.
RAW_BUDGET = 1_200 * MB
PHOTO_BUDGET = 420 * MB
VIDEO_BUDGET = 230 * MB
TEXT_FILES = 25_000
TEXT_DIRS = 1_500
PHOTO_DUPLICATES = 10

_COMMON_WORDS_TEXT = """
the of and to in is that it for as with was on be by this are or from at an not which have
but has had they you were their one all we can there been if more when will would who so no
file data value time system user should each new used other than then some into only its may
these also any first use two could like over such after most where make way between under very
through just those many before same how state must because while both well does here still
during even back without another find set own number part within being both around again
error return result index block store chunk snapshot archive backup restore read write open
close path name size count offset length buffer cache table tree node list key hash object
version config default option level mode limit format header record entry field type module
function class method parameter argument request response server client network stream
upload download bucket region policy storage volume disk folder image photo video camera
lens color light shadow exposure sensor frame scene summer winter family holiday garden city
river mountain beach morning evening weekend meeting report budget invoice contract project
schedule review draft final notes minutes agenda summary chapter section appendix figure
"""
COMMON_WORDS = _COMMON_WORDS_TEXT.split()

_SYLLABLES_TEXT = """
ka lo mi nu pe ra si to va ze bri cal dor fen gar hal jor kel lin mor nel par quin ros sel
tam ur vel wen xor yal zin ter ben dak ex for gen ik jun lux mak nox ol pri qua rex sta tri
"""
SYLLABLES = _SYLLABLES_TEXT.split()

CODE_EXTS = [".py", ".py", ".py", ".c", ".h", ".js", ".ts", ".go", ".rs", ".json", ".toml"]
DOC_EXTS = [".md", ".txt", ".txt", ".csv", ".html", ".rst"]
CODE_DIR_HINTS = ["src", "lib", "tests", "internal", "pkg", "cmd", "docs", "scripts", "core"]


@dataclass(frozen=True)
class FileSpec:
    """One file to write: its path relative to the root, kind, size, content seed and mtime."""

    rel: str
    kind: str  # raw | photo | video | code | doc | dup
    size: int
    seed: int
    mtime: int
    source: str = ""  # for kind == "dup": the rel path of the file it copies


class Vocabulary:
    """A Zipf-weighted word list: common English words first, then seeded pseudo-words."""

    def __init__(self, rng: random.Random, extra_words: int = 3_000) -> None:
        words = list(dict.fromkeys(COMMON_WORDS))
        seen = set(words)
        while len(words) < len(COMMON_WORDS) + extra_words:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        weights = [1.0 / (rank + 2) ** 1.05 for rank in range(len(words))]
        self.cum_weights = list(_accumulate(weights))

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self.cum_weights, k=k)


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


# --------------------------------------------------------------------------- content generators


def _noise_table(sigma: float, rng: random.Random) -> bytes:
    """Map a uniform random byte to a Gaussian-ish value in [0, 64) centred on 32."""
    values = sorted(min(63, max(0, round(32 + rng.gauss(0, sigma)))) for _ in range(256))
    return bytes(values)


def raw_file_chunks(size: int, seed: int) -> Iterator[bytes]:
    """Yield the bytes of a sensor-like raw file: a small TIFF-like header, then 16-bit samples.

    sample = base(x, y) + noise, where base is a smooth gradient that is a multiple of 64 and
    noise is in [0, 64). The low byte is therefore (two low bits of base >> 6) << 6 | noise and
    the high byte is base >> 8, so both planes are built with bytes operations that run in C.
    """
    rng = random.Random(seed)
    bits = rng.choice([12, 14])
    width = rng.choice([4000, 4608, 5472, 6000, 6720])
    sigma = rng.uniform(6.0, 12.0)
    table = _noise_table(sigma, rng)
    header = bytearray(b"II*\x00" + b"VFSBENCHRAW\x00")
    header += f"bits={bits};width={width};seed={seed}\x00".encode()
    header += rng.randbytes(4096 - len(header) - 64) + bytes(64)
    yield bytes(header[:size])
    remaining = size - len(header)
    if remaining <= 0:
        return

    # One long row profile; row y is a window into it shifted by y // 2: a diagonal gradient.
    rows_total = remaining // (2 * width) + 1
    rows_per_chunk = 64
    profile_len = width + (rows_total + rows_per_chunk) // 2 + 1
    top = (1 << bits) - 1
    amp1, amp2 = rng.uniform(0.2, 0.35) * top, rng.uniform(0.03, 0.08) * top
    per1, per2 = rng.uniform(600, 1500), rng.uniform(80, 200)
    mid = rng.uniform(0.35, 0.55) * top
    base = [
        max(0, min(top - 64, int(mid + amp1 * math.sin(i / per1) + amp2 * math.sin(i / per2))))
        for i in range(profile_len)
    ]
    low_plane = bytes(((b >> 6) & 3) << 6 for b in base)
    high_plane = bytes(b >> 8 for b in base)

    y = 0
    while remaining > 0:
        rows = range(y, y + rows_per_chunk)
        low = b"".join(low_plane[r // 2 : r // 2 + width] for r in rows)
        high = b"".join(high_plane[r // 2 : r // 2 + width] for r in rows)
        noise = rng.randbytes(len(low)).translate(table)
        low = (int.from_bytes(low, "little") | int.from_bytes(noise, "little")).to_bytes(len(low), "little")
        chunk = bytearray(2 * len(low))
        chunk[0::2] = low
        chunk[1::2] = high
        out = bytes(chunk[:remaining])
        remaining -= len(out)
        y += rows_per_chunk
        yield out


JPEG_HEADER = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00"
    b"\xff\xe1\x00\x40Exif\x00\x00II*\x00\x08\x00\x00\x00"
)
MP4_HEADER = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free"


def media_file_chunks(size: int, seed: int, header: bytes) -> Iterator[bytes]:
    """Yield a small format header followed by random (incompressible) bytes."""
    rng = random.Random(seed)
    yield header[:size]
    remaining = size - len(header)
    step = 8 * MB
    while remaining > 0:
        n = min(step, remaining)
        yield rng.randbytes(n)
        remaining -= n


def _identifier(rng: random.Random, vocab: Vocabulary, style: str) -> str:
    parts = vocab.sample(rng, rng.randint(1, 3))
    if style == "camel":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    return "_".join(parts)


def code_text(size: int, seed: int, ext: str, vocab: Vocabulary) -> bytes:
    """Source-code-like text: functions, assignments, calls and comments over local identifiers."""
    rng = random.Random(seed)
    style = "camel" if ext in (".js", ".ts", ".go") else "snake"
    idents = [_identifier(rng, vocab, style) for _ in range(rng.randint(15, 40))]
    types = ["".join(w.capitalize() for w in vocab.sample(rng, 2)) for _ in range(6)]
    comment = "#" if ext in (".py", ".toml") else "//"

    def ident() -> str:
        return rng.choice(idents)

    def sentence() -> str:
        return " ".join(vocab.sample(rng, rng.randint(4, 12)))

    if ext == ".json":
        templates: list[Callable[[], str]] = [
            lambda: f'  "{ident()}": "{ident()}",',
            lambda: f'  "{ident()}": {rng.randint(0, 9999)},',
            lambda: f'  "{ident()}": [{rng.randint(0, 99)}, {rng.randint(0, 99)}],',
            lambda: f'  "{ident()}": {{"{ident()}": {str(rng.random() < 0.5).lower()}}},',
        ]
        head = "{\n"
    elif ext == ".toml":
        templates = [
            lambda: f"[{ident()}]",
            lambda: f'{ident()} = "{ident()}"',
            lambda: f"{ident()} = {rng.randint(0, 4096)}",
            lambda: f"{comment} {sentence()}",
        ]
        head = ""
    elif ext == ".py":
        templates = [
            lambda: f"def {ident()}({ident()}, {ident()}: {rng.choice(types)}) -> None:",
            lambda: f"    {ident()} = {ident()}.{ident()}({ident()}, {rng.randint(0, 512)})",
            lambda: f"    if {ident()} is None:\n        return {ident()}",
            lambda: f"    for {ident()} in {ident()}:\n        {ident()}.append({ident()})",
            lambda: f"    {comment} {sentence()}",
            lambda: f"class {rng.choice(types)}({rng.choice(types)}):",
            lambda: f'    """{sentence().capitalize()}."""',
            lambda: f"from {ident()} import {ident()}, {ident()}",
            lambda: "",
        ]
        head = f'"""{sentence().capitalize()}."""\n\nimport os\nimport sys\n\n'
    else:
        templates = [
            lambda: f"static int {ident()}(struct {ident()} *{ident()}, size_t {ident()}) {{",
            lambda: f"    {ident()} = {ident()}({ident()}, {rng.randint(0, 512)});",
            lambda: f"    if ({ident()} == NULL) {{\n        return -{rng.randint(1, 40)};\n    }}",
            lambda: f"    for (i = 0; i < {ident()}; i++) {{",
            lambda: f"        {ident()}[i] = {ident()};",
            lambda: f"    {comment} {sentence()}",
            lambda: "}",
            lambda: "",
        ]
        head = f"{comment} {sentence()}\n{comment} SPDX-License-Identifier: Apache-2.0\n\n"

    parts = [head]
    length = len(head)
    while length < size:
        line = rng.choice(templates)() + "\n"
        parts.append(line)
        length += len(line)
    return "".join(parts).encode()[:size]


def doc_text(size: int, seed: int, ext: str, vocab: Vocabulary) -> bytes:
    """Document-like text: headings and paragraphs of sentences (or CSV rows)."""
    rng = random.Random(seed)
    words = vocab.sample(rng, size // 5 + 16)
    parts: list[str] = []
    length = 0
    i = 0
    if ext == ".csv":
        columns = rng.randint(3, 8)
        while length < size:
            if i + columns > len(words):
                words += vocab.sample(rng, 64)
            row = ",".join(words[i + c] if c % 2 == 0 else str(rng.randint(0, 99999)) for c in range(columns))
            i += columns
            parts.append(row + "\n")
            length += len(row) + 1
        return "".join(parts).encode()[:size]

    while length < size:
        if rng.random() < 0.15:
            title = " ".join(vocab.sample(rng, rng.randint(2, 6))).title()
            block = ("# " if ext == ".md" else "") + title + "\n\n"
        else:
            sentences = []
            for _ in range(rng.randint(2, 7)):
                n = rng.randint(5, 20)
                if i + n > len(words):
                    words += vocab.sample(rng, 256)
                sentences.append(" ".join(words[i : i + n]).capitalize() + ".")
                i += n
            block = " ".join(sentences) + "\n\n"
            if ext == ".html":
                block = "<p>" + block.rstrip() + "</p>\n"
        parts.append(block)
        length += len(block)
    return "".join(parts).encode()[:size]


# --------------------------------------------------------------------------- planning


def _log_uniform(rng: random.Random, low: float, high: float) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _sizes_for_budget(rng: random.Random, budget: int, low: int, high: int) -> list[int]:
    sizes: list[int] = []
    total = 0
    while total < budget:
        size = min(rng.randint(low, high), max(budget - total, low))
        sizes.append(size)
        total += size
    return sizes


def plan_text_tree(rng: random.Random, vocab: Vocabulary, n_dirs: int, n_files: int) -> list[FileSpec]:
    """Lay out nested source repos and document folders, then scatter text files over them."""
    n_projects = max(1, round(n_dirs / 120))
    roots: list[tuple[str, str]] = []  # (dir, kind)
    for p in range(n_projects):
        name = "-".join(vocab.sample(rng, rng.randint(1, 2))) + f"-{p}"
        roots.append((f"src/{name}", "code"))
    for d in range(max(1, n_projects // 3)):
        roots.append((f"documents/{vocab.sample(rng, 1)[0]}-{d}", "doc"))

    dirs: list[tuple[str, str, int]] = [(path, kind, 0) for path, kind in roots]
    used = {d[0] for d in dirs}
    while len(dirs) < n_dirs:
        parent, kind, depth = rng.choice(dirs)
        if depth >= 7:
            continue
        if kind == "code" and depth == 0 and rng.random() < 0.5:
            name = rng.choice(CODE_DIR_HINTS)
        else:
            name = "_".join(vocab.sample(rng, rng.randint(1, 2)))
        path = f"{parent}/{name}"
        if path in used:
            continue
        used.add(path)
        dirs.append((path, kind, depth + 1))

    specs: list[FileSpec] = []
    names_in_dir: dict[str, set[str]] = defaultdict(set)
    base_day = rng.randint(2_000, 3_000)
    while len(specs) < n_files:
        parent, kind, _ = rng.choice(dirs)
        ext = rng.choice(CODE_EXTS if kind == "code" else DOC_EXTS)
        name = "_".join(vocab.sample(rng, rng.randint(1, 3))) + ext
        if name in names_in_dir[parent]:
            continue
        names_in_dir[parent].add(name)
        size = _log_uniform(rng, 200, 20_000)
        mtime = EPOCH + (base_day - _log_uniform(rng, 1, 2_000)) * DAY + rng.randrange(DAY)
        specs.append(FileSpec(f"{parent}/{name}", kind, size, rng.getrandbits(63), mtime))
    return specs


def plan(seed: int, scale: float) -> tuple[list[FileSpec], Vocabulary]:
    """Decide every file (path, kind, size, content seed, mtime) from the seed alone."""
    rng = random.Random(seed)
    vocab = Vocabulary(random.Random(rng.getrandbits(63)))
    # Shrink individual big files only at tiny scales, so --scale 0.01 stays a few MB per file.
    shrink = min(1.0, scale * 10)
    specs: list[FileSpec] = []

    # Sensor-like raw files and their JPEG siblings, grouped in dated event folders.
    raw_sizes = _sizes_for_budget(rng, int(RAW_BUDGET * scale), int(20 * MB * shrink), int(40 * MB * shrink))
    photo_sizes = _sizes_for_budget(
        rng, int(PHOTO_BUDGET * scale), int(2 * MB * shrink), int(8 * MB * shrink)
    )
    day = 0
    image_no = 1000
    event = ""
    photos: list[FileSpec] = []
    raws: list[FileSpec] = []
    for i in range(max(len(raw_sizes), len(photo_sizes))):
        if i % 6 == 0:
            day += rng.randint(3, 60)
            date = time.strftime("%Y-%m-%d", time.gmtime(EPOCH + day * DAY))
            event = f"photos/{date[:4]}/{date}_{vocab.sample(rng, 1)[0]}"
        image_no += rng.randint(1, 9)
        mtime = EPOCH + day * DAY + rng.randrange(DAY)
        if i < len(raw_sizes):
            raws.append(
                FileSpec(f"{event}/IMG_{image_no}.CR2", "raw", raw_sizes[i], rng.getrandbits(63), mtime)
            )
        if i < len(photo_sizes):
            photos.append(
                FileSpec(
                    f"{event}/IMG_{image_no}.JPG",
                    "photo",
                    photo_sizes[i],
                    rng.getrandbits(63),
                    mtime + 1,
                )
            )
    specs += raws + photos

    video_sizes = _sizes_for_budget(
        rng, int(VIDEO_BUDGET * scale), int(50 * MB * shrink), int(100 * MB * shrink)
    )
    for n, size in enumerate(video_sizes):
        vday = rng.randint(0, max(day, 1))
        date = time.strftime("%Y-%m-%d", time.gmtime(EPOCH + vday * DAY))
        specs.append(
            FileSpec(
                f"videos/{date[:4]}/VID_{date.replace('-', '')}_{n:03d}.MP4",
                "video",
                size,
                rng.getrandbits(63),
                EPOCH + vday * DAY + rng.randrange(DAY),
            )
        )

    # Exact duplicates: some photos exported to another folder, one raw copied for editing.
    n_dups = min(len(photos), max(1, round(PHOTO_DUPLICATES * scale**0.5)))
    for src in rng.sample(photos, n_dups):
        specs.append(
            FileSpec(
                f"photos/export/{Path(src.rel).name}",
                "dup",
                src.size,
                src.seed,
                src.mtime + 7 * DAY,
                source=src.rel,
            )
        )
    if raws:
        src = rng.choice(raws)
        specs.append(
            FileSpec(
                f"photos/editing/{Path(src.rel).name}",
                "dup",
                src.size,
                src.seed,
                src.mtime + 30 * DAY,
                source=src.rel,
            )
        )

    n_text = max(10, round(TEXT_FILES * scale))
    n_dirs = max(4, round(TEXT_DIRS * scale))
    specs += plan_text_tree(random.Random(rng.getrandbits(63)), vocab, n_dirs, n_text)
    return specs, vocab


# --------------------------------------------------------------------------- writing


def content_chunks(spec: FileSpec, by_rel: dict[str, FileSpec], vocab: Vocabulary) -> Iterator[bytes]:
    ext = os.path.splitext(spec.rel)[1]
    if spec.kind == "dup":
        yield from content_chunks(by_rel[spec.source], by_rel, vocab)
    elif spec.kind == "raw":
        yield from raw_file_chunks(spec.size, spec.seed)
    elif spec.kind == "photo":
        yield from media_file_chunks(spec.size, spec.seed, JPEG_HEADER)
    elif spec.kind == "video":
        yield from media_file_chunks(spec.size, spec.seed, MP4_HEADER)
    elif spec.kind == "code":
        yield code_text(spec.size, spec.seed, ext, vocab)
    else:
        yield doc_text(spec.size, spec.seed, ext, vocab)


def prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            sys.exit(f"{out} is not empty; pass --force to replace an earlier dataset")
        if not (out / MARKER).is_file():
            sys.exit(f"{out} holds no {MARKER} marker; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_tree(out: Path, specs: list[FileSpec], vocab: Vocabulary, seed: int, scale: float) -> None:
    by_rel = {s.rel: s for s in specs}
    made: set[Path] = set()
    for spec in specs:
        path = out / spec.rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        if spec.kind == "dup":
            shutil.copyfile(out / spec.source, path)  # the source was written earlier
        else:
            with open(path, "wb") as f:
                for chunk in content_chunks(spec, by_rel, vocab):
                    f.write(chunk)
        os.utime(path, (spec.mtime, spec.mtime))

    marker = out / MARKER
    marker.write_text(f"vaultfs bench dataset seed={seed} scale={scale}\n")
    os.utime(marker, (EPOCH, EPOCH))
    # Directory mtimes last, deepest first, so creating children does not disturb them.
    all_dirs = sorted(
        {p for s in specs for p in (out / s.rel).parents if out in p.parents},
        key=lambda p: (-len(p.parts), str(p)),
    )
    for i, d in enumerate(all_dirs):
        stamp = EPOCH + 3_000 * DAY + i
        os.utime(d, (stamp, stamp))
    os.utime(out, (EPOCH + 4_000 * DAY, EPOCH + 4_000 * DAY))


# --------------------------------------------------------------------------- warm repositories

GITIGNORE = b"# dependencies, build output, logs, secrets\nnode_modules/\nbuild/\n*.log\n.env\n"
TRACKED_IGNORED = ("build/VERSION", "logs/release.log", ".env", "node_modules/.patched/index.js")
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_AUTHOR_DATE": f"@{EPOCH + 3_000 * DAY} +0000",
    "GIT_COMMITTER_DATE": f"@{EPOCH + 3_000 * DAY} +0000",
}


def project_roots(specs: list[FileSpec]) -> list[str]:
    """The source projects (``src/NAME``) of the planned tree, in order."""
    return sorted({"/".join(s.rel.split("/")[:2]) for s in specs if s.rel.startswith("src/")})


def _write(path: Path, chunks: Iterator[bytes] | bytes, mtime: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(path, "wb") as f:
        for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
            size += f.write(chunk)
    os.utime(path, (mtime, mtime))
    return size


def node_modules(repo: Path, rng: random.Random, vocab: Vocabulary, files: int) -> int:
    """`files` small files in ~10-file packages under repo/node_modules; their bytes."""
    written = total = 0
    while written < files:
        pkg = repo / "node_modules" / "-".join(vocab.sample(rng, rng.randint(1, 2))) / ""
        if pkg.exists():
            continue
        names = ["package.json", "index.js", "README.md"]
        names += [f"lib/{'_'.join(vocab.sample(rng, 2))}.js" for _ in range(rng.randint(2, 12))]
        for name in dict.fromkeys(names):
            if written >= files:
                break
            size, ext = _log_uniform(rng, 100, 4_000), os.path.splitext(name)[1]
            text = doc_text if ext == ".md" else code_text
            mtime = EPOCH + 2_900 * DAY + rng.randrange(DAY)
            total += _write(pkg / name, text(size, rng.getrandbits(63), ext, vocab), mtime)
            written += 1
    return total


def build_output(repo: Path, rng: random.Random, vocab: Vocabulary, budget: int) -> tuple[int, int]:
    """Object files under repo/build until `budget` bytes: (files, bytes)."""
    files = total = 0
    while total < budget:
        name = f"build/obj/{'_'.join(vocab.sample(rng, 2))}/{'_'.join(vocab.sample(rng, 2))}.o"
        if (repo / name).exists():
            continue
        size, seed = _log_uniform(rng, 200_000, 4_000_000), rng.getrandbits(63)
        chunks = (
            raw_file_chunks(size, seed)
            if files % 2
            else media_file_chunks(size, seed, b"\x7fELF\x02\x01\x01")
        )
        total += _write(repo / name, chunks, EPOCH + 2_950 * DAY + rng.randrange(DAY))
        files += 1
    return files, total


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=os.environ | GIT_ENV)


def make_warm(
    out: Path, specs: list[FileSpec], vocab: Vocabulary, seed: int, nm_files: int, build_mb: float
) -> dict[str, tuple[int, int]]:
    """Turn every source project into a git checkout (see the module docstring); what was
    added, per kind: (files, bytes)."""
    added: dict[str, tuple[int, int]] = {}

    def count(kind: str, n: int, size: int) -> None:
        old = added.get(kind, (0, 0))
        added[kind] = (old[0] + n, old[1] + size)

    for rel in project_roots(specs):
        repo = out / rel
        rng = random.Random(f"{seed}/{rel}")
        count("node_modules", nm_files, node_modules(repo, rng, vocab, nm_files))
        count("build", *build_output(repo, rng, vocab, int(build_mb * MB)))
        stamp = EPOCH + 3_000 * DAY
        _write(repo / ".gitignore", GITIGNORE, stamp)
        for name in TRACKED_IGNORED:
            count("tracked-ignored", 1, _write(repo / name, f"{rel}: {name}\n".encode(), stamp))
        git(repo, "init", "-q")
        git(repo, "add", "-A")  # what .gitignore leaves out stays untracked
        git(repo, "add", "-f", "--", *TRACKED_IGNORED)
        git(repo, "commit", "-q", "-m", "bench checkout")
    return added


def summarize(specs: list[FileSpec]) -> dict[str, tuple[int, int]]:
    kinds: dict[str, tuple[int, int]] = {}
    for spec in specs:
        n, size = kinds.get(spec.kind, (0, 0))
        kinds[spec.kind] = (n + 1, size + spec.size)
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is about 2 GB")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier dataset")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="make each source project a git checkout with ignored node_modules/ and build/ "
        "and tracked-but-ignored files (for run.py --scenario warm); needs git",
    )
    parser.add_argument(
        "--node-modules-files", type=int, default=20_000, help="--warm: files in each node_modules/"
    )
    parser.add_argument("--build-mb", type=float, default=200.0, help="--warm: MB of objects in each build/")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.warm and shutil.which("git") is None:
        parser.error("--warm needs git")

    start = time.perf_counter()
    specs, vocab = plan(args.seed, args.scale)
    prepare_out_dir(args.out_dir, args.force)
    write_tree(args.out_dir, specs, vocab, args.seed, args.scale)
    warm = {}
    if args.warm:
        warm = make_warm(args.out_dir, specs, vocab, args.seed, args.node_modules_files, args.build_mb)
    elapsed = time.perf_counter() - start

    labels = {
        "raw": "sensor-like raw (partly compressible)",
        "photo": "JPEG-like photos (incompressible)",
        "video": "MP4-like videos (incompressible)",
        "code": "source-code-like text",
        "doc": "document-like text",
        "dup": "exact duplicates of photos/raw",
        "node_modules": "--warm: small files in node_modules/ (ignored)",
        "build": "--warm: object files in build/ (ignored)",
        "tracked-ignored": "--warm: tracked although a .gitignore line matches",
    }
    n_dirs = sum(len(dirs) for _, dirs, _ in os.walk(args.out_dir))
    print(f"dataset {args.out_dir}  seed={args.seed} scale={args.scale}")
    print(f"{'kind':<16} {'files':>7} {'MB':>9}  description")
    total_n = total_b = 0
    for kind, (n, size) in (summarize(specs) | warm).items():
        print(f"{kind:<16} {n:>7} {size / MB:>9.1f}  {labels[kind]}")
        total_n += n
        total_b += size
    print(f"{'total':<16} {total_n:>7} {total_b / MB:>9.1f}  in {n_dirs} directories")
    print(f"generated in {elapsed:.1f} s ({total_b / MB / elapsed:.0f} MB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
