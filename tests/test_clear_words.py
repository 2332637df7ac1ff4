"""Clear words (issue 17, point 12): messages that say what happened and what to do,
names that cannot forge output lines, and one exit status for each kind of outcome.

Every test runs the real CLI. S3 failures come from real servers: moto (with
authentication for refused credentials), and a small HTTP server on 127.0.0.1
that answers every request with one fixed error, as a wrong endpoint would.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import AuthServer
from tests.vaultenv import REPO, VaultEnv


def one_line_error(proc: Any, code: int) -> str:
    """The single ``vaultfs: error:`` line of a failed command with exit status ``code``."""
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaultfs: error: "), proc.stderr
    return str(lines[0])


class FixedAnswer(http.server.ThreadingHTTPServer):
    """Answers every request with ``status`` and ``body`` (an endpoint that is not our S3)."""

    def __init__(self, status: int, body: bytes) -> None:
        answer = (status, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(answer[0])
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer[1])

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def s3_env(tmp_path: Path, s3_bucket: Any) -> VaultEnv:
    """An initialised vault on moto with one snapshot of a cold collection ``p``."""
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="1MiB")
    src = env.add_collection("p")
    (src / "a.txt").write_bytes(b"alpha")
    env.run("init")
    env.run("snapshot")
    (src / "b.txt").write_bytes(b"beta")  # the next snapshot has something to upload
    return env


@contextmanager
def serve(status: int, body: bytes) -> Iterator[FixedAnswer]:
    server = FixedAnswer(status, body)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def not_found_endpoint() -> Iterator[FixedAnswer]:
    with serve(404, b"<html><body>Not Found</body></html>") as server:
        yield server


# ---- 1. the last error after retries ------------------------------------------------


def test_exhausted_retries_say_so(vault_env: VaultEnv) -> None:
    """Every store call fails transiently: the final error counts the attempts, promises none."""
    (vault_env.add_collection("p") / "a.txt").write_bytes(b"alpha")
    vault_env.run("init")
    faults = vault_env.env(VAULTFS_TESTPOINTS="store-faults=1.0:3")  # 14 attempts, millisecond backoff
    line = one_line_error(vault_env.run("snapshot", expect=None, env=faults), 1)
    assert "gave up after 14 attempts" in line
    assert "check the network and the store, then run the command again" in line
    assert "will retry" not in line


def test_s3_transient_answer_after_retries(s3_env: VaultEnv) -> None:
    """S3's own wording of a transient answer must not say "(will retry)" when it is the last."""
    body = b"<Error><Code>InternalError</Code><Message>try again</Message></Error>"
    with serve(400, body) as server:  # botocore does not retry a 400; RetryingStore does
        s3_env.s3_endpoint = server.url
        s3_env.write_config()
        proc = s3_env.run("snapshot", expect=None, env=s3_env.env(VAULTFS_TESTPOINTS="store-faults=0:0"))
        line = one_line_error(proc, 1)
        assert "S3 answered InternalError" in line and "gave up after 14 attempts" in line
        assert "will retry" not in line


# ---- 2. refused credentials: exit 2 and one message everywhere ----------------------------


def test_refused_credentials_are_exit_2_everywhere(s3_auth_server: AuthServer, tmp_path: Path) -> None:
    env = VaultEnv(tmp_path, f"s3://{s3_auth_server.bucket}/words", s3_endpoint=s3_auth_server.endpoint_url)
    (env.add_collection("p") / "a.txt").write_bytes(b"alpha")
    good = env.env(**s3_auth_server.good)
    env.run("init", env=good)
    env.run("snapshot", env=good)
    bad = env.env(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope")
    commands = [
        ("init",),
        ("snapshot",),
        ("check",),
        ("restore", "fetch", "p", "--to", str(tmp_path / "out")),
        ("index", "rebuild", "--yes"),
    ]
    lines = {one_line_error(env.run(*cmd, expect=None, env=bad), 2) for cmd in commands}
    assert len(lines) == 1, lines  # the same words whichever command met the refusal
    line = lines.pop()
    assert "the S3 credentials were refused (InvalidAccessKeyId)" in line
    assert "from the environment" in line  # which credentials
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in line and "[s3].profile" in line
    assert "AKIAWRONGWRONGWRONG1" not in line


# ---- 3. a missing bucket is not a missing object --------------------------------------------


def test_endpoint_answering_404_is_no_such_bucket(
    s3_env: VaultEnv, not_found_endpoint: FixedAnswer, tmp_path: Path
) -> None:
    s3_env.s3_endpoint = not_found_endpoint.url
    s3_env.write_config()
    for cmd in [("snapshot",), ("check",), ("restore", "fetch", "p", "--to", str(tmp_path / "o"))]:
        line = one_line_error(s3_env.run(*cmd, expect=None), 2)
        assert f"no such bucket {s3_env.bucket.name} at {not_found_endpoint.url}" in line, cmd
        assert "check [s3].endpoint_url and the bucket name in [vault].store" in line
        assert "no such object" not in line


def test_deleted_bucket_is_no_such_bucket(s3_env: VaultEnv, tmp_path: Path) -> None:
    client = s3_env.bucket.client()
    for key in s3_env.store_keys():
        client.delete_object(Bucket=s3_env.bucket.name, Key="vault/" + key)
    client.delete_bucket(Bucket=s3_env.bucket.name)
    for cmd in [("snapshot",), ("restore", "fetch", "p", "--to", str(tmp_path / "o"))]:
        line = one_line_error(s3_env.run(*cmd, expect=None), 2)
        assert f"no such bucket {s3_env.bucket.name} at {s3_env.s3_endpoint}" in line, cmd
        assert "[s3].endpoint_url" in line and "[vault].store" in line


# ---- 4. naming what does not exist is a usage error -------------------------------------------


def test_missing_version_collection_or_path_is_exit_2(file_vault: VaultEnv, tmp_path: Path) -> None:
    (file_vault.add_collection("photos") / "a.txt").write_bytes(b"alpha")
    file_vault.add_collection("empty")
    file_vault.run("init")
    file_vault.run("snapshot", "photos")
    out = str(tmp_path / "out")
    cases = {
        ("restore", "fetch", "photos@v99", "--to", out): "photos@v99 does not exist",
        ("restore", "plan", "photos@v99"): "photos@v99 does not exist",
        ("restore", "start", "photos@v99"): "photos@v99 does not exist",
        ("restore", "fetch", "fotos@v1", "--to", out): "no collection named 'fotos'",
        ("restore", "plan", "fotos"): "no collection named 'fotos'",
        ("restore", "fetch", "empty", "--to", out): "'empty' has no versions yet",
        ("restore", "fetch", "photos", "nope.txt", "--to", out): "nope.txt is not in",
        ("restore", "plan", "photos@vX"): "expected COLLECTION or COLLECTION@vN",
        ("versions", "fotos"): "no collection named 'fotos'",
        ("snapshot", "fotos"): "no collection named 'fotos'",
        ("check", "--source", "empty"): "'empty' has no versions yet",
    }
    for cmd, words in cases.items():
        assert words in one_line_error(file_vault.run(*cmd, expect=None), 2), cmd
    assert not Path(out).exists()


# ---- 5. names cannot forge output lines -------------------------------------------------------

FORGED = b"a\nWARNING: everything is fine"
ODD_NAMES = [FORGED, b"bad\xffbyte", b"tab\there", b"esc\x1b[2Jclear", b"back\\slash"]
SHOWN = ["a\\nWARNING: everything is fine", "bad\\xffbyte", "tab\\there", "esc\\x1b[2Jclear", "back\\\\slash"]


def _write_odd_names(src: Path, content: bytes) -> None:
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(content)


def _assert_only_escaped(text: str) -> None:
    assert "\x1b" not in text and "\t" not in text
    for line in text.splitlines():
        assert not line.startswith("WARNING: everything"), text


def test_names_are_escaped_in_human_output(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("p", tier="cold")
    _write_odd_names(src, b"one")
    file_vault.run("init")
    file_vault.run("snapshot")
    _write_odd_names(src, b"two!")  # modified, in a cold collection: every name is listed
    changed = file_vault.run("snapshot", expect=3)
    _assert_only_escaped(changed.stderr)
    for shown in SHOWN:
        assert f"  modified: {shown}\n" in changed.stderr, changed.stderr

    # bit rot: same size and mtime, other bytes; the finding names the file escaped.
    forged = os.path.join(os.fsencode(src), FORGED)
    st = os.stat(forged)
    with open(forged, "wb") as f:
        f.write(b"TWO!")
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    check = file_vault.run("check", "--source", "p", expect=1)
    _assert_only_escaped(check.stderr)
    assert f"PROBLEM: bit rot suspected: p/{SHOWN[0]} has" in check.stderr

    # restore: a path named on the command line that is not there is shown escaped too.
    missing = file_vault.run("restore", "fetch", "p", "x\ny", "--to", str(tmp_path / "o"), expect=2)
    assert "error: x\\ny is not in" in missing.stderr

    # --json keeps the exact names (surrogate escapes for bytes that are not UTF-8).
    (src / "new.txt").write_bytes(b"new")
    for name in ODD_NAMES:
        os.unlink(os.path.join(os.fsencode(src), name))
    doc = json.loads(file_vault.run("snapshot", "--json", expect=3).stdout)
    deleted = doc["collections"][0]["deleted"]
    assert sorted(os.fsencode(n) for n in deleted) == sorted(ODD_NAMES)


# ---- 6. one table of exit statuses ----------------------------------------------------------


def _commands() -> set[str]:
    """Every command and action the parser knows, e.g. "snapshot", "restore fetch"."""
    from vaultfs.cli.main import build_parser

    found: set[str] = set()

    def walk(parser: Any, prefix: str) -> None:
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    subs = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
                    if subs:
                        walk(sub, f"{prefix}{name} ")
                    else:
                        found.add(f"{prefix}{name}")

    walk(build_parser(), "")
    return found


def test_every_command_has_its_exit_statuses_documented() -> None:
    doc = (REPO / "docs" / "cli.md").read_text()
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `vaultfs ([a-z ]+?)` \| ([0-9, ]+) \|", doc, re.MULTILINE)
    }
    assert set(table) == _commands()
    for command, codes in table.items():
        statuses = {int(c) for c in codes.split(",")}
        assert {0, 2} <= statuses <= {0, 1, 2, 3, 4}, command  # every command can meet a bad config
    # 4, bit rot found, only where files are re-read against a version by a scrub
    assert {c for c, codes in table.items() if "4" in codes.split(", ")} == {"snapshot", "scrub"}
    assert re.search(r"^\| `4` \| bit rot found", doc, re.MULTILINE)
    assert "docs/cli.md" in (REPO / "README.md").read_text()


def test_output_options_before_or_after_the_command(file_vault: VaultEnv) -> None:
    """The README says every command takes --json, --debug and -q: before its name too."""
    src = file_vault.add_collection("docs", tier="warm")
    (src / "a.txt").write_bytes(b"a")
    file_vault.run("init")
    before = json.loads(file_vault.run("--json", "snapshot").stdout)
    assert before["collections"][0]["version"] == 1
    after = json.loads(file_vault.run("versions", "docs", "--json").stdout)
    assert [v["version"] for v in after["versions"]] == [1]
    assert json.loads(file_vault.run("--json", "versions", "docs").stdout) == after
    assert file_vault.run("snapshot", "-q").stdout == ""
    assert file_vault.run("-q", "snapshot").stdout == ""


VAULTFS = [sys.executable, "-m", "vaultfs.cli"]


def test_a_reader_that_closes_the_pipe_is_not_an_internal_error(file_vault: VaultEnv) -> None:
    """`vaultfs versions docs | head -0`: the reader left; exit 141 (as SIGPIPE), no message."""
    src = file_vault.add_collection("docs", tier="warm")
    (src / "a.txt").write_bytes(b"a")
    file_vault.run("init")
    file_vault.run("snapshot")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails
    try:
        proc = subprocess.run(
            [*VAULTFS, "--config", str(file_vault.config_path), "versions", "docs"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=file_vault.env(),
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
