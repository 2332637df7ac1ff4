#!/usr/bin/env python3
"""One small source file back from an S3 store: `vaultfs restore fetch` beside
`restic restore --include`, and `cat` through an already running `vaultfs mount`.

    tools/bench/fetch_one.py --data DIR --work WORKDIR [--rounds N] [--json out]

DIR is a dataset from ``make_dataset.py --warm``; its first git repository (with its ignored
``node_modules/`` and ``build/`` left out: vaultfs by its warm tier's rules, restic by the
best ``--exclude-file``, as in ``run.py --scenario warm``) is backed up once by each tool into
a bucket of moto's S3 server on 127.0.0.1 (started here, from the virtualenv that runs this
script). The file asked for is the tracked source file closest to 10,000 bytes.

Each of N rounds (default 5) times, as whole commands, in this order:

1. ``vaultfs --version`` (the interpreter's start-up and vaultfs's imports: the floor);
2. ``vaultfs restore fetch bench@v1 PATH --to DIR`` (a fresh DIR each time);
3. ``restic restore latest --include PATH --target DIR`` (its cache kept between rounds,
   as a user's would be);
4. with a fresh ``vaultfs mount`` up and listing, the first ``cat`` of the file through it
   (lookups, one ranged GET, one frame decoded), then a second ``cat`` (served from memory).

Prints the medians and the ratios the warm-tier issue sets (fetch / restic ≤ 0.2; fetch −
version ≤ 0.1 s; first cat ≤ 20 ms); --json writes them with every round's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mount_bench import Mount, start, stop  # a sibling script, not a package
from run import find_repos, restic_excludes

BUCKET = "bench-fetch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(work / "moto.log", "wb")  # noqa: SIM115  (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json").close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start; see {work / 'moto.log'}") from None
            time.sleep(0.1)
    req = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
    urllib.request.urlopen(req).close()
    return proc, endpoint


def small_file(repo: Path) -> Path:
    tracked = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    files = [repo / os.fsdecode(p) for p in tracked if p and (repo / os.fsdecode(p)).is_file()]
    return min(files, key=lambda f: abs(f.stat().st_size - 10_000))


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')[-800:]}")
    return elapsed


@dataclass
class Setup:
    env: dict[str, str]
    vf: list[str]  # vaultfs with its config
    restic: list[str]  # restic with its repository
    target: Path  # the file, in the source
    rel: Path  # the same, inside the collection
    mount: Mount


def prepare(work: Path, repo: Path, endpoint: str) -> Setup:
    """Both tools' repositories on moto, each with one snapshot of ``repo``."""
    env = dict(os.environ) | {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    config = work / "vaultfs.toml"
    config.write_text(
        f'[vault]\nstore = "s3://{BUCKET}/vaultfs"\nstate_dir = {json.dumps(str(work / "state"))}\n'
        f'[s3]\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'
        f'[collections.bench]\npath = {json.dumps(str(repo))}\ntier = "warm"\n'
    )
    vf = [str(Path(sys.executable).with_name("vaultfs")), "--config", str(config)]
    restic = ["restic", "-r", f"s3:{endpoint}/{BUCKET}/restic"]
    excludes = work / "excludes.txt"
    excludes.write_text("\n".join(restic_excludes([repo])) + "\n")
    timed([*vf, "init"], env)
    timed([*vf, "snapshot", "bench"], env)
    timed([*restic, "init"], env)
    timed([*restic, "backup", "--exclude-file", str(excludes), str(repo)], env)
    target = small_file(repo)
    mnt = work / "mnt"
    mount = Mount("vaultfs", [*vf, "mount", "--foreground", str(mnt)], env, mnt, mnt / "bench" / "v1")
    return Setup(env, vf, restic, target, target.relative_to(repo), mount)


def one_round(s: Setup, out: Path, log: Path, n: int) -> dict[str, float]:
    env, want = s.env, s.target.read_bytes()
    r = {
        "version_s": timed([*s.vf, "--version"], env),
        "fetch_s": timed([*s.vf, "restore", "fetch", "bench@v1", str(s.rel), "--to", str(out / "vf")], env),
        "restic_s": timed(
            [*s.restic, "restore", "latest", "--include", str(s.target), "--target", str(out / "restic")], env
        ),
    }
    assert (out / "vf" / s.rel).read_bytes() == want
    assert (out / "restic" / s.target.relative_to("/")).read_bytes() == want
    start(s.mount, log, f"round {n}")
    try:
        inside = s.mount.version_dir / s.rel
        r["cat_first_ms"] = 1000 * timed(["cat", str(inside)], env)
        r["cat_again_ms"] = 1000 * timed(["cat", str(inside)], env)
    finally:
        stop(s.mount)
    return r


def report(s: Setup, rounds: list[dict[str, float]], json_path: Path | None) -> None:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    size = s.target.stat().st_size
    result = {
        "file": str(s.rel),
        "bytes": size,
        "medians": med,
        "fetch_over_restic": med["fetch_s"] / med["restic_s"],
        "fetch_beyond_version_s": med["fetch_s"] - med["version_s"],
        "rounds": rounds,
    }
    print(f"\none file ({s.rel}, {size} bytes) from S3 (moto), medians of {len(rounds)} rounds:")
    print("| vaultfs --version | restore fetch | restic restore --include | cat via mount | again |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {med['version_s']:.3f} s | {med['fetch_s']:.3f} s | {med['restic_s']:.3f} s "
        f"| {med['cat_first_ms']:.1f} ms | {med['cat_again_ms']:.1f} ms |"
    )
    print(
        f"fetch / restic = {result['fetch_over_restic']:.3f} (target ≤ 0.2); "
        f"fetch − version = {result['fetch_beyond_version_s']:.3f} s (target ≤ 0.1 s); "
        f"first cat {med['cat_first_ms']:.1f} ms (target ≤ 20 ms)"
    )
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    moto, endpoint = start_moto(work)
    setup = None
    try:
        setup = prepare(work, find_repos(args.data.resolve())[0], endpoint)
        rounds = []
        for n in range(args.rounds):
            rounds.append(one_round(setup, work / f"out-{n}", work / "mount.log", n))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in rounds[-1].items()), flush=True)
    finally:
        if setup is not None:
            stop(setup.mount)
        moto.terminate()
        moto.wait()
    report(setup, rounds, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
