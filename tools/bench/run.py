#!/usr/bin/env python3
"""Back up one directory with vaultfs, restic and borg side by side and compare them.

    tools/bench/run.py --data DIR --work WORKDIR [--only vaultfs,restic,borg] [--rounds N]
        [--json out.json] [--scenario cold|warm]

The benchmark runs N rounds (default 3); each round runs every selected tool in the fixed
order vaultfs, restic, borg (rounds are interleaved, so slow drift of the machine hits all
tools alike). For each tool, in each round, into a fresh local repository under WORKDIR:

1. warm the page cache by reading DIR through tar (caches are not dropped, every tool sees a
   warm cache instead);
2. initialise the repository (not timed);
3. first snapshot: wall time and peak RSS; then the repository size on disk (like du -sb);
4. second snapshot with nothing changed: wall time and peak RSS.

``--scenario warm`` (data from ``make_dataset.py --warm``: source projects that are git
checkouts with ignored ``node_modules/`` and ``build/`` and tracked-but-ignored files)
compares vaultfs's warm tier with restic given the best ``--exclude-file`` a user could
write for the same rules (each repository's ``.gitignore`` and ``info/exclude`` lines,
anchored at that repository: ``REPO/**/node_modules``; restic has no notion of files git
tracks). borg is not run. Besides the times it reports, per tool, the bytes the snapshot
read (``rchar`` and ``read_bytes`` of /proc/self/io of a wrapper process, which the kernel
credits with its reaped children: the snapshot and any git it ran) against the bytes of the
files kept, and which tracked-but-ignored files (``git ls-files -ci --exclude-standard``)
the first snapshot dropped (restic: ``restic ls latest``; vaultfs: ``restore fetch`` of
those paths).

Before each of steps 2-4, os.sync() flushes dirty pages (not timed), so writeback of earlier
steps' data, e.g. the previous tool's repository, is not billed to the next command.

The table shows per tool the median over rounds of times and sizes, the maximum over rounds
of peak RSS, and the min-max range of the snapshot times; the ratios against vaultfs's
targets are computed from the medians. Peak RSS is measured with GNU time
(/usr/bin/time -f %M) when it is installed, otherwise by polling VmHWM/VmRSS of the process
tree in /proc. A tool that fails in any round is reported as "failed" with the tail of its
stderr (and the script exits non-zero); the other tools and rounds still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GNU_TIME = "/usr/bin/time"
MIB = 1024 * 1024
TOOLS = ("vaultfs", "restic", "borg")

# vaultfs's targets (docs/benchmarks.md): (label, ratio or absolute key, limit).
TARGETS = (
    ("first snapshot, vaultfs / restic", "first_vs_restic", 0.5),
    ("no-change snapshot, vaultfs / restic", "nochange_vs_restic", 0.33),
    ("repository size, vaultfs / borg zstd,3", "repo_vs_borg", 1.0),
    ("peak RSS of vaultfs, MiB", "vaultfs_rss_mib", 150.0),
)


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One command run: exit status, wall time, peak RSS and where its output went."""

    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_kib: int | None
    log: str
    stderr_tail: str = ""


def _children(pid: int) -> list[int]:
    """Direct children of pid, read from /proc/<pid>/task/*/children."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeRssPoller(threading.Thread):
    """Fallback when GNU time is missing: poll the process tree's memory every 50 ms.

    The peak is the larger of any single process's VmHWM and the largest sum of VmRSS over the
    tree seen at one poll (the sum can miss short spikes between polls).
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids, stack = [], [self.pid]
            while stack:
                p = stack.pop()
                pids.append(p)
                stack += _children(p)
            hwm = max(_status_kib(p, "VmHWM") for p in pids)
            total = sum(_status_kib(p, "VmRSS") for p in pids)
            self.peak_kib = max(self.peak_kib, hwm, total)
            self.done.wait(0.05)


def run_measured(argv: Sequence[str], env: dict[str, str], log: Path) -> Measured:
    """Run argv with stdout and stderr going to log files; time it and measure its peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    err_path = log.with_suffix(".stderr")
    use_gnu_time = os.access(GNU_TIME, os.X_OK)
    rss_file = log.with_suffix(".rss")
    full = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv] if use_gnu_time else list(argv)
    with open(log, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL)
        except OSError as e:
            return Measured(list(argv), 127, 0.0, None, str(log), stderr_tail=str(e))
        poller = None if use_gnu_time else TreeRssPoller(proc.pid)
        if poller:
            poller.start()
        returncode = proc.wait()
        wall = time.perf_counter() - start
        if poller:
            poller.done.set()
            poller.join()

    peak: int | None = poller.peak_kib if poller else None
    if use_gnu_time:
        # GNU time writes "Command exited with non-zero status N" before %M on failure.
        lines = rss_file.read_text().split() if rss_file.exists() else []
        peak = int(lines[-1]) if lines and lines[-1].isdigit() else None
    tail = ""
    if returncode != 0:
        text = err_path.read_text(errors="replace").strip()
        if not text:
            text = log.read_text(errors="replace").strip()
        tail = "\n".join(text.splitlines()[-15:])
    return Measured(list(argv), returncode, wall, peak, str(log), tail)


def du_bytes(*paths: Path) -> int:
    """Apparent size of files and directories under paths, hard links once (like du -sb)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def dataset_stats(data: Path) -> tuple[int, int, int]:
    files = dirs = size = 0
    for dirpath, dirnames, filenames in os.walk(data):
        dirs += len(dirnames)
        files += len(filenames)
        size += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in filenames)
    return files, dirs, size


def warm_page_cache(data: Path) -> float:
    """Read every file through tar so all tools start from a warm page cache.

    The archive goes to a pipe that is drained here: GNU tar skips reading file contents
    when it sees its archive is /dev/null, so `tar cf /dev/null` would not warm anything.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(["tar", "-cf", "-", "-C", str(data), "."], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while proc.stdout.read(1 << 20):
        pass
    if proc.wait() != 0:
        raise SystemExit(f"tar could not read {data}")
    return time.perf_counter() - start


def command_output(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (done.stdout or done.stderr).strip()
    if done.returncode != 0:
        return f"unavailable (exit {done.returncode}: {text.splitlines()[-1] if text else ''})"
    return text.splitlines()[0] if text else "unknown"


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    """How to drive one backup tool against a repository under the work directory."""

    name: str
    env: dict[str, str]
    version_cmd: list[str]
    init_cmd: list[str]
    snapshot_cmd: Callable[[int], list[str]]
    repo_paths: list[Path]  # counted as the repository size
    cache_paths: list[Path]  # local caches outside the repository, reported apart
    settings: str
    list_cmd: list[str] = field(default_factory=list)  # warm: what the latest snapshot holds


# --------------------------------------------------------------------------- the warm scenario

# Runs a command and writes the /proc/self/io counters it added to a JSON file: the kernel
# credits a process with the I/O of the children it reaped, so this is the command's own
# reading plus that of everything it ran (git, for vaultfs), and not the wrapper's start-up.
IO_WRAPPER = """
import json, subprocess, sys
def io():
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}
before = io()
code = subprocess.call(sys.argv[2:])
after = io()
with open(sys.argv[1], "w") as f:
    json.dump({k: after[k] - before[k] for k in after}, f)
sys.exit(code)
"""


def io_wrapped(argv: list[str], io_file: Path) -> list[str]:
    return [sys.executable, "-c", IO_WRAPPER, str(io_file), *argv]


def find_repos(data: Path) -> list[Path]:
    """The git work trees under `data` (not looking inside one once found)."""
    repos = []
    for dirpath, dirnames, _ in os.walk(data):
        if ".git" in dirnames:
            repos.append(Path(dirpath))
            dirnames[:] = []
        dirnames.sort()
    return repos


def restic_excludes(repos: list[Path]) -> list[str]:
    """The best restic --exclude-file for the repositories' ignore rules: each line of a
    repository's top .gitignore and info/exclude, anchored at the repository (a pattern with
    a slash at its directory, one without at any depth below it). restic cannot say
    "directories only" (the trailing slash goes) nor keep files git tracks."""
    lines = []
    for repo in repos:
        for source in (repo / ".gitignore", repo / ".git" / "info" / "exclude"):
            text = source.read_text(errors="surrogateescape") if source.is_file() else ""
            for line in text.splitlines():
                pattern = line.strip().rstrip("/")
                if not pattern or pattern.startswith("#") or pattern.startswith("!"):
                    continue
                anchored = "/" in pattern
                lines.append(f"{repo}/{pattern.lstrip('/')}" if anchored else f"{repo}/**/{pattern}")
    return lines


def tracked_ignored(data: Path, repos: list[Path]) -> list[str]:
    """Files git tracks although an ignore rule matches them, relative to `data`."""
    found = []
    for repo in repos:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--ignored", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
        found += [str((repo / os.fsdecode(p)).relative_to(data)) for p in out.split(b"\0") if p]
    return found


def dropped_by_restic(tool: Tool, paths: list[str], data: Path) -> list[str]:
    out = subprocess.run(tool.list_cmd, capture_output=True, text=True, env=tool.env, check=True).stdout
    listed = set(out.splitlines())
    return [p for p in paths if str(data / p) not in listed]


def dropped_by_vaultfs(tool: Tool, paths: list[str], work: Path) -> list[str]:
    """Fetch `paths` from the latest version; those that do not arrive were dropped."""
    to = work / "vaultfs-check"
    if to.exists():
        shutil.rmtree(to)
    done = subprocess.run([*tool.list_cmd, "--to", str(to), *paths], capture_output=True, env=tool.env)
    if done.returncode != 0:  # a path not in the version: ask one by one
        for p in paths:
            subprocess.run([*tool.list_cmd, "--to", str(to), p], capture_output=True, env=tool.env)
    return [p for p in paths if not (to / p).is_file()]


def kept_bytes(tool: Tool, log: Path) -> int | None:
    """The bytes of the files the snapshot kept, from its --json output."""
    try:
        text = log.read_text()
        if tool.name == "vaultfs":
            return int(json.loads(text)["collections"][0]["stats"]["bytes"])
        summary = [json.loads(line) for line in text.splitlines() if '"message_type":"summary"' in line]
        return int(summary[-1]["total_bytes_processed"]) if summary else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def io_counters(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def make_tools(data: Path, work: Path, vaultfs_bin: Path, warm: bool = False) -> dict[str, Tool]:
    base_env = dict(os.environ)
    restic_repo, restic_cache = work / "restic-repo", work / "restic-cache"
    borg_repo, borg_home = work / "borg-repo", work / "borg-home"
    vf_store, vf_state, vf_config = (
        work / "vaultfs-store",
        work / "vaultfs-state",
        work / "vaultfs.toml",
    )

    restic_env = base_env | {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(restic_cache)}
    borg_env = base_env | {
        "BORG_PASSPHRASE": "bench",
        "BORG_BASE_DIR": str(borg_home),  # cache, keys and security dir stay in WORKDIR
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }
    vf = [str(vaultfs_bin), "--config", str(vf_config)]
    excludes = work / "restic-excludes.txt"
    restic_extra = ["--json", "--exclude-file", str(excludes)] if warm else []
    return {
        "restic": Tool(
            name="restic",
            env=restic_env,
            version_cmd=["restic", "version"],
            init_cmd=["restic", "init", "--repo", str(restic_repo)],
            snapshot_cmd=lambda n: ["restic", "backup", "--repo", str(restic_repo), *restic_extra, str(data)],
            repo_paths=[restic_repo],
            cache_paths=[restic_cache],
            settings="defaults (repository v2, compression auto = zstd), AES encryption on"
            + (f", --exclude-file {excludes.name}" if warm else ""),
            list_cmd=["restic", "ls", "--repo", str(restic_repo), "latest"],
        ),
        "borg": Tool(
            name="borg",
            env=borg_env,
            version_cmd=["borg", "--version"],
            init_cmd=["borg", "init", "--encryption=none", str(borg_repo)],
            snapshot_cmd=lambda n: [
                "borg",
                "create",
                "--compression",
                "zstd,3",
                f"{borg_repo}::snap{n}",
                str(data),
            ],
            repo_paths=[borg_repo],
            cache_paths=[borg_home],
            settings="--encryption=none, --compression zstd,3",
        ),
        "vaultfs": Tool(
            name="vaultfs",
            env=base_env,
            version_cmd=[*vf, "--version"],
            init_cmd=[*vf, "init"],
            snapshot_cmd=lambda n: [*vf, "snapshot", "bench", *(["--json"] if warm else [])],
            # The state dir is vaultfs's local index (LMDB, rebuildable from the store,
            # docs/recovery.md): the counterpart of restic's and borg's local caches.
            repo_paths=[vf_store],
            cache_paths=[vf_state],
            settings=f"file:// store, tier {'warm' if warm else 'cold'}, config {vf_config.name}",
            list_cmd=[*vf, "restore", "fetch", "bench"],
        ),
    }


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML ones)."""
    return json.dumps(value)


def write_vaultfs_config(data: Path, work: Path, tier: str = "cold") -> Path:
    config = work / "vaultfs.toml"
    config.write_text(
        "[vault]\n"
        f"store = {_toml_str((work / 'vaultfs-store').as_uri())}\n"
        f"state_dir = {_toml_str(str(work / 'vaultfs-state'))}\n"
        "\n"
        "[collections.bench]\n"
        f"path = {_toml_str(str(data))}\n"
        f"tier = {_toml_str(tier)}\n"
    )
    return config


@dataclass
class ToolResult:
    tool: str
    version: str
    settings: str
    round: int = 1
    status: str = "ok"  # ok | failed
    failed_step: str = ""
    error: str = ""
    warmup_s: float | None = None
    first_s: float | None = None
    repo_bytes: int | None = None
    cache_bytes: int | None = None
    nochange_s: float | None = None
    first_rss_mib: float | None = None
    nochange_rss_mib: float | None = None
    steps: list[Measured] = field(default_factory=list)
    # --scenario warm:
    first_rchar: int | None = None  # bytes the first snapshot read (read() calls, any cache)
    first_read_bytes: int | None = None  # of them, from the disk
    nochange_rchar: int | None = None
    kept_bytes: int | None = None  # bytes of the files the first snapshot kept
    dropped: list[str] | None = None  # tracked-but-ignored files the first snapshot left out

    @property
    def peak_rss_mib(self) -> float | None:
        values = [v for v in (self.first_rss_mib, self.nochange_rss_mib) if v is not None]
        return max(values) if values else None


def warm_checks(
    tool: Tool, result: ToolResult, first: Measured, data: Path, work: Path, tracked: list[str]
) -> None:
    """--scenario warm, after the first snapshot (untimed): what it read, what it kept, and
    which tracked-but-ignored files it dropped."""
    io = io_counters(Path(first.log).with_suffix(".io"))
    result.first_rchar, result.first_read_bytes = io.get("rchar"), io.get("read_bytes")
    result.kept_bytes = kept_bytes(tool, Path(first.log))
    try:
        if tool.name == "restic":
            result.dropped = dropped_by_restic(tool, tracked, data)
        else:
            result.dropped = dropped_by_vaultfs(tool, tracked, work)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  {tool.name}: could not list the snapshot ({e})", flush=True)


def bench_tool(
    tool: Tool, data: Path, work: Path, round_no: int = 1, tracked: list[str] | None = None
) -> ToolResult:
    """One round of one tool; `tracked` (the tracked-but-ignored files) for --scenario warm."""
    warm = tracked is not None
    for path in [*tool.repo_paths, *tool.cache_paths]:
        if path.exists():
            shutil.rmtree(path)
    if tool.name == "vaultfs":
        write_vaultfs_config(data, work, "warm" if warm else "cold")
    version = command_output(tool.version_cmd, tool.env)
    result = ToolResult(tool.name, version, tool.settings, round=round_no)
    logs = work / "logs" / f"round{round_no}"

    def step(label: str, argv: list[str]) -> Measured | None:
        print(f"  {tool.name}: {label} ...", flush=True)
        os.sync()  # untimed: earlier steps' dirty pages must not be written back on our clock
        m = run_measured(argv, tool.env, logs / f"{tool.name}-{label}.log")
        result.steps.append(m)
        if m.returncode != 0:
            result.status, result.failed_step = "failed", label
            result.error = m.stderr_tail or f"exit status {m.returncode}"
            print(f"  {tool.name}: {label} failed (exit {m.returncode})", flush=True)
            return None
        print(f"  {tool.name}: {label} {m.wall_s:.1f} s", flush=True)
        return m

    def snapshot(n: int) -> Measured | None:
        argv, label = tool.snapshot_cmd(n), f"snapshot{n}"
        io_file = logs / f"{tool.name}-{label}.io"  # the log's name with .io
        return step(label, io_wrapped(argv, io_file) if warm else argv)

    result.warmup_s = warm_page_cache(data)
    if step("init", tool.init_cmd) is None:
        return result
    first = snapshot(1)
    if first is None:
        return result
    result.first_s = first.wall_s
    result.first_rss_mib = first.peak_rss_kib / 1024 if first.peak_rss_kib else None
    result.repo_bytes = du_bytes(*tool.repo_paths)
    if tracked is not None:
        warm_checks(tool, result, first, data, work, tracked)
    second = snapshot(2)
    if second is None:
        return result
    if warm:
        result.nochange_rchar = io_counters(Path(second.log).with_suffix(".io")).get("rchar")
    result.nochange_s = second.wall_s
    result.nochange_rss_mib = second.peak_rss_kib / 1024 if second.peak_rss_kib else None
    result.cache_bytes = du_bytes(*tool.cache_paths) if tool.cache_paths else 0
    return result


# --------------------------------------------------------------------------- summarising


@dataclass
class ToolSummary:
    """One tool over all rounds: medians of times and sizes, maxima of peak RSS.

    The field names match ToolResult's, so the JSON's tools[name] reads as one result; a value
    missing in a failed round is left out of the median (None if no round has it).
    """

    tool: str
    version: str
    settings: str
    status: str  # ok | failed (failed if any round failed)
    failed_step: str  # of the first failed round
    error: str  # of the first failed round
    failed_rounds: list[int]
    rounds_ok: int
    warmup_s: float | None
    first_s: float | None
    first_s_min: float | None
    first_s_max: float | None
    repo_bytes: int | None
    cache_bytes: int | None
    nochange_s: float | None
    nochange_s_min: float | None
    nochange_s_max: float | None
    first_rss_mib: float | None
    nochange_rss_mib: float | None
    peak_rss_mib: float | None
    rounds: list[ToolResult]
    first_rchar: int | None = None  # --scenario warm (medians; `dropped` of the first round with it)
    first_read_bytes: int | None = None
    nochange_rchar: int | None = None
    kept_bytes: int | None = None
    dropped: list[str] | None = None


def _values(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def median_of(values: Sequence[float | None]) -> float | None:
    """Median of the values present (rounds that failed give None); None if none is."""
    present = _values(values)
    return statistics.median(present) if present else None


def _median_int(values: Sequence[int | None]) -> int | None:
    m = median_of(values)
    return None if m is None else round(m)


def max_of(values: Sequence[float | None]) -> float | None:
    present = _values(values)
    return max(present) if present else None


def min_of(values: Sequence[float | None]) -> float | None:
    present = _values(values)
    return min(present) if present else None


def summarise(rounds: list[ToolResult]) -> ToolSummary:
    failed = [r for r in rounds if r.status != "ok"]
    first = [r.first_s for r in rounds]
    nochange = [r.nochange_s for r in rounds]
    return ToolSummary(
        tool=rounds[0].tool,
        version=rounds[0].version,
        settings=rounds[0].settings,
        status="failed" if failed else "ok",
        failed_step=failed[0].failed_step if failed else "",
        error=failed[0].error if failed else "",
        failed_rounds=[r.round for r in failed],
        rounds_ok=len(rounds) - len(failed),
        warmup_s=median_of([r.warmup_s for r in rounds]),
        first_s=median_of(first),
        first_s_min=min_of(first),
        first_s_max=max_of(first),
        repo_bytes=_median_int([r.repo_bytes for r in rounds]),
        cache_bytes=_median_int([r.cache_bytes for r in rounds]),
        nochange_s=median_of(nochange),
        nochange_s_min=min_of(nochange),
        nochange_s_max=max_of(nochange),
        first_rss_mib=max_of([r.first_rss_mib for r in rounds]),
        nochange_rss_mib=max_of([r.nochange_rss_mib for r in rounds]),
        peak_rss_mib=max_of([r.peak_rss_mib for r in rounds]),
        rounds=rounds,
        first_rchar=_median_int([r.first_rchar for r in rounds]),
        first_read_bytes=_median_int([r.first_read_bytes for r in rounds]),
        nochange_rchar=_median_int([r.nochange_rchar for r in rounds]),
        kept_bytes=_median_int([r.kept_bytes for r in rounds]),
        dropped=next((r.dropped for r in rounds if r.dropped is not None), None),
    )


def summary_json(s: ToolSummary) -> dict[str, object]:
    """asdict(s), each round's dict also carrying its peak_rss_mib (a property, not a field)."""
    out = asdict(s)
    out["rounds"] = [asdict(r) | {"peak_rss_mib": r.peak_rss_mib} for r in s.rounds]
    return out


# --------------------------------------------------------------------------- reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(summaries: dict[str, ToolSummary]) -> dict[str, float | None]:
    """vaultfs against the others, from the medians over rounds."""
    vf, restic, borg = (summaries.get(name) for name in TOOLS)

    def repo_mib(s: ToolSummary | None) -> float | None:
        return s.repo_bytes / MIB if s and s.repo_bytes is not None else None

    return {
        "first_vs_restic": _ratio(vf.first_s if vf else None, restic.first_s if restic else None),
        "nochange_vs_restic": _ratio(vf.nochange_s if vf else None, restic.nochange_s if restic else None),
        "repo_vs_borg": _ratio(repo_mib(vf), repo_mib(borg)),
        "vaultfs_rss_mib": vf.peak_rss_mib if vf else None,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _range(low: float | None, high: float | None, digits: int) -> str:
    return "–" if low is None or high is None else f"{low:.{digits}f}–{high:.{digits}f}"


def markdown_table(summaries: dict[str, ToolSummary]) -> str:
    lines = [
        "| tool | rounds ok | first snapshot s | first min–max | repo MiB | no-change snapshot s |"
        " no-change min–max | peak RSS MiB | local cache MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        name = s.tool
        if s.status != "ok":
            where = ", ".join(str(n) for n in s.failed_rounds)
            name = f"{s.tool} (failed: {s.failed_step}, round {where})"
        repo = s.repo_bytes / MIB if s.repo_bytes is not None else None
        cache = s.cache_bytes / MIB if s.cache_bytes is not None else None
        lines.append(
            f"| {name} | {s.rounds_ok}/{len(s.rounds)} | {_fmt(s.first_s)} | "
            f"{_range(s.first_s_min, s.first_s_max, 1)} | {_fmt(repo)} | "
            f"{_fmt(s.nochange_s, 2)} | {_range(s.nochange_s_min, s.nochange_s_max, 2)} | "
            f"{_fmt(s.peak_rss_mib)} | {_fmt(cache)} |"
        )
    return "\n".join(lines)


def targets_table(ratios: dict[str, float | None]) -> str:
    lines = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for label, key, limit in TARGETS:
        value = ratios[key]
        met = "n/a" if value is None else ("yes" if value <= limit else "no")
        absolute = key.endswith("_mib")
        unit = "" if absolute else "×"
        shown = "–" if value is None else f"{value:.{1 if absolute else 2}f}{unit}"
        lines.append(f"| {label} | {shown} | ≤ {limit:g}{unit} | {met} |")
    return "\n".join(lines)


def warm_table(summaries: dict[str, ToolSummary], tracked: list[str], data_bytes: int) -> str:
    """--scenario warm: times, bytes read against bytes kept, tracked-but-ignored files dropped."""
    lines = [
        f"data tree: {data_bytes / MIB:.1f} MiB; tracked-but-ignored files: {len(tracked)}",
        "",
        "| tool | first warm snapshot s | no-change s | peak RSS MiB | kept MiB | read (rchar) MiB |"
        " read / kept | from disk MiB | no-change read MiB | tracked-but-ignored dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        mib = {
            k: None if v is None else v / MIB
            for k, v in (
                ("kept", s.kept_bytes),
                ("rchar", s.first_rchar),
                ("disk", s.first_read_bytes),
                ("again", s.nochange_rchar),
            )
        }
        dropped = "–" if s.dropped is None else f"{len(s.dropped)} of {len(tracked)}"
        lines.append(
            f"| {s.tool} | {_fmt(s.first_s, 2)} | {_fmt(s.nochange_s, 2)} | {_fmt(s.peak_rss_mib)} | "
            f"{_fmt(mib['kept'])} | {_fmt(mib['rchar'])} | {_fmt(_ratio(mib['rchar'], mib['kept']), 2)} | "
            f"{_fmt(mib['disk'])} | {_fmt(mib['again'])} | {dropped} |"
        )
    for s in summaries.values():
        if s.dropped:
            shown = ", ".join(s.dropped[:10]) + (
                f", … ({len(s.dropped) - 10} more)" if len(s.dropped) > 10 else ""
            )
            lines.append(f"\n{s.tool} dropped these tracked files: {shown}")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "memory": mem,
        "python": platform.python_version(),
        "rss_method": "GNU time %M" if os.access(GNU_TIME, os.X_OK) else "/proc polling",
    }


def print_tables(
    results: dict[str, ToolSummary], ratios: dict[str, float | None], tracked: list[str] | None, size: int
) -> None:
    """The results table, then the cold targets or (--scenario warm) the warm table."""
    print()
    print(markdown_table(results))
    print()
    if tracked is not None:
        print(warm_table(results, tracked, size))
        for label, key in (("first warm", "first_vs_restic"), ("no-change warm", "nochange_vs_restic")):
            print(f"{label} snapshot, vaultfs / restic: {_fmt(ratios[key], 2)}×")
    else:
        print(targets_table(ratios))


def prepare_warm(parser: argparse.ArgumentParser, data: Path, work: Path) -> list[str]:
    """--scenario warm: restic's exclude file, written from the repositories' rules, and the
    tracked-but-ignored files whose fate the run reports."""
    repos = find_repos(data)
    if not repos:
        parser.error(f"--scenario warm: no git repository under {data} (make_dataset.py --warm makes them)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "restic-excludes.txt").write_text("\n".join(restic_excludes(repos)) + "\n")
    tracked = tracked_ignored(data, repos)
    print(
        f"{len(repos)} repositories, {len(tracked)} tracked-but-ignored files; "
        f"restic's exclude file: {work / 'restic-excludes.txt'}"
    )
    return tracked


def data_and_work(parser: argparse.ArgumentParser, data: Path, work: Path) -> tuple[Path, Path]:
    """--data and --work resolved; a usage error unless data is a directory and neither
    contains the other (a benchmark must not back up its own repositories)."""
    data, work = data.resolve(), work.resolve()
    if not data.is_dir():
        parser.error(f"--data {data} is not a directory")
    if data == work or data in work.parents or work in data.parents:
        parser.error("--data and --work must not contain each other")
    return data, work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="directory to back up")
    parser.add_argument(
        "--work",
        type=Path,
        required=True,
        help="where repositories, caches and logs go (replaced per tool)",
    )
    parser.add_argument(
        "--only", default=",".join(TOOLS), help="comma-separated subset of: " + ", ".join(TOOLS)
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of all selected tools, interleaved; the table shows medians (default 3)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--scenario",
        choices=("cold", "warm"),
        default="cold",
        help="cold (default): the three tools on a cold collection; warm: vaultfs's warm tier "
        "against restic with an --exclude-file, on data from make_dataset.py --warm",
    )
    parser.add_argument(
        "--vaultfs",
        type=Path,
        default=REPO_ROOT / ".venv" / "bin" / "vaultfs",
        help="vaultfs executable (default: the repo's .venv)",
    )
    args = parser.parse_args(argv)

    data, work = data_and_work(parser, args.data, args.work)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    work.mkdir(parents=True, exist_ok=True)

    files, dirs, size = dataset_stats(data)
    print(f"dataset {data}: {files} files, {dirs} directories, {size / MIB:.1f} MiB")
    warm = args.scenario == "warm"
    tracked = prepare_warm(parser, data, work) if warm else None
    tools = make_tools(data, work, args.vaultfs, warm)
    selected = [name for name in TOOLS if name in only and not (warm and name == "borg")]
    if not selected:
        parser.error("no tool left to run (--scenario warm runs vaultfs and restic)")
    per_round: dict[str, list[ToolResult]] = {name: [] for name in selected}
    for round_no in range(1, args.rounds + 1):
        print(f"round {round_no}/{args.rounds}", flush=True)
        for name in selected:
            per_round[name].append(bench_tool(tools[name], data, work, round_no, tracked))
    results = {name: summarise(rounds) for name, rounds in per_round.items()}

    ratios = compute_ratios(results)
    env = environment()
    print()
    print(
        f"{env['cpus']} × {env['cpu']}, {env['memory']} RAM, Linux {env['kernel']}; "
        f"page cache warmed with tar before each tool, os.sync() before each step; "
        f"RSS via {env['rss_method']}; {args.rounds} round(s), interleaved: medians of times "
        "and sizes, maximum of peak RSS"
    )
    for summary in results.values():
        print(f"{summary.tool}: {summary.version} — {summary.settings}")
    print_tables(results, ratios, tracked, size)
    for s in results.values():
        for r in s.rounds:
            if r.status != "ok":
                print(f"\n{r.tool} failed at {r.failed_step} in round {r.round}:\n{r.error}")

    if args.json:
        payload = {
            "environment": env,
            "dataset": {"path": str(data), "files": files, "directories": dirs, "bytes": size},
            "tools": {k: summary_json(s) for k, s in results.items()},
            "ratios": ratios,
            "targets": {key: limit for _, key, limit in TARGETS},
            "scenario": args.scenario,
            "tracked_ignored": tracked,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(s.status == "ok" for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
