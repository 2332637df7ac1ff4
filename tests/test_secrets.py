"""``--debug`` never shows a credential: not on stdout, stderr, nor in mount.log.

botocore's DEBUG log carries every signed request (``Authorization`` with the access
key id, ``X-Amz-Security-Token``). The commands run against moto with recognisable
fake credentials in their environment, and every output is searched for them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.moto_server import S3Bucket
from tests.mounts import alive, mount_log, mount_pid, unmount, wait_for
from tests.vaultenv import VaultEnv

KEY_ID = "AKIAVAULTFSTESTKEY42"
SECRET = "vaultfsTestSecret/0123456789abcdefghijABCDEFGHIJ"
TOKEN = "vaultfsTestSessionToken+0123456789abcdefghijklmnopqrstuvwxyz=="
FORBIDDEN = (
    KEY_ID,
    SECRET,
    TOKEN,
    "authorization",
    "x-amz-security-token",
    "x-amz-credential",
    "x-amz-signature",
)


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [f for f in FORBIDDEN if f.lower() in lowered]


def test_debug_logs_hold_no_credentials(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
    src = env.add_collection("p")
    (src / "a.bin").write_bytes(os.urandom(100_000))
    creds = env.env(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN)
    outputs: dict[str, str] = {}
    for args in (
        ("init",),
        ("snapshot",),
        ("check", "--read-data"),
        ("versions", "p"),
        ("restore", "fetch", "p@v1", "--to", str(tmp_path / "back")),
    ):
        proc = env.run("--debug", *args, env=creds)
        outputs[" ".join(args)] = proc.stdout + proc.stderr
    assert "vaultfs: INFO:" in outputs["snapshot"]  # the --debug log is on, and searched
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = env.run("--debug", "mount", str(mnt), "--log", str(mount_log(env)), env=creds)
    outputs["mount"] = proc.stdout + proc.stderr
    pid = mount_pid(mnt)
    try:
        subprocess.run(["cat", str(mnt / "p" / "latest" / "a.bin")], check=True, capture_output=True)
    finally:
        unmount(mnt)
        wait_for(lambda: not alive(pid), f"mount process {pid} to exit after unmount")
    outputs["mount.log"] = mount_log(env).read_text()
    assert "INFO" in outputs["mount.log"]
    leaks = {what: _leaks(text) for what, text in outputs.items() if _leaks(text)}
    assert not leaks, leaks
