"""A vault for a test: a source tree, a config file, and the real `vaultfs` command.

``vault_env`` is parametrised over the two kinds of store, ``file://`` and
``s3://`` on moto's HTTP server, so every end-to-end test runs against both.
Commands run as subprocesses (``python -m vaultfs.cli``), exactly as a user
runs them; their exit status, stdout and stderr are what tests check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class VaultEnv:
    tmp: Path
    store_url: str
    s3_endpoint: str | None = None
    bucket: Any = None
    band_size: str = "4MiB"
    collections: dict[str, tuple[Path, str]] = field(default_factory=dict)
    extra_config: str = ""
    vault_extra: str = ""  # more keys of the [vault] table, e.g. "threads = 1\n"
    s3_extra: str = ""  # more keys of the [s3] table (s3:// stores), e.g. 'warm_class = "STANDARD_IA"\n'

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @classmethod
    def on_s3(cls, tmp: Path, bucket: Any, band_size: str = "4MiB", s3_extra: str = "") -> VaultEnv:
        """A vault under `tmp` whose store is `bucket` on moto's server (its config not yet
        written: add collections first, or call `write_config`)."""
        return cls(
            tmp,
            f"s3://{bucket.name}/vault",
            s3_endpoint=bucket.endpoint_url,
            bucket=bucket,
            band_size=band_size,
            s3_extra=s3_extra,
        )

    @property
    def config_path(self) -> Path:
        return self.tmp / "vault.toml"

    def add_collection(self, name: str, tier: str = "cold") -> Path:
        path = self.tmp / "src" / name
        path.mkdir(parents=True, exist_ok=True)
        self.collections[name] = (path, tier)
        self.write_config()
        return path

    def write_config(self) -> None:
        text = (
            textwrap.dedent(f"""\
            [vault]
            store = "{self.store_url}"
            state_dir = "{self.state_dir}"
            band_size = "{self.band_size}"
            """)
            + self.vault_extra
        )
        if self.s3_endpoint:
            text += textwrap.dedent(f"""\
                [s3]
                endpoint_url = "{self.s3_endpoint}"
                region = "us-east-1"
                multipart_threshold = "5MiB"
                multipart_chunksize = "5MiB"
                """)
            text += self.s3_extra
        for name, (path, tier) in self.collections.items():
            text += f'[collections.{name}]\npath = "{path}"\ntier = "{tier}"\n'
        text += self.extra_config
        self.config_path.write_text(text)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VAULTFS_CONFIG", None)
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        expect: int | None = 0,
        env: dict[str, str] | None = None,
        config: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vaultfs.cli"]
        if config:
            cmd += ["--config", str(self.config_path)]
        proc = subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            env=env or self.env(),
            cwd=REPO,
            timeout=240,
        )
        if expect is not None:
            assert proc.returncode == expect, (
                f"vaultfs {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "vaultfs.cli", "--config", str(self.config_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or self.env(),
            cwd=REPO,
        )

    def json(self, *args: str, expect: int | None = 0) -> Any:
        return json.loads(self.run(*args, "--json", expect=expect).stdout)

    def versions(self, collection: str) -> list[dict[str, Any]]:
        return list(self.json("versions", collection)["versions"])

    @property
    def store_dir(self) -> Path:
        """The directory of a file:// store."""
        assert self.store_url.startswith("file://"), "not a file:// store"
        return Path(self.store_url[len("file://") :])

    def open_vault(self) -> Any:
        """The vault opened in this process (to arrange or inspect what the CLI cannot)."""
        from vaultfs.config import load_config
        from vaultfs.vault import Vault

        return Vault.open(load_config(self.config_path))

    def move_bands_to(self, storage_class: str) -> None:
        """Move every band object on the s3 store to ``storage_class`` behind vaultfs's back."""
        client = self.bucket.client()
        for key in self.store_keys("bands/"):
            if key.endswith(".tar.zst"):
                client.copy_object(
                    Bucket=self.bucket.name,
                    Key="vault/" + key,
                    CopySource={"Bucket": self.bucket.name, "Key": "vault/" + key},
                    StorageClass=storage_class,
                )

    def store_keys(self, prefix: str = "") -> list[str]:
        """Every object key on the store (relative to the vault's prefix)."""
        if self.store_url.startswith("file://"):
            root = self.store_dir
            return sorted(
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.is_file() and str(p.relative_to(root)).startswith(prefix)
            )
        client = self.bucket.client()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.name, Prefix="vault/" + prefix
        ):
            keys += [o["Key"][len("vault/") :] for o in page.get("Contents", [])]
        return sorted(keys)

    def fetch_object(self, key: str, to: Path) -> Path:
        """Copy a store object to a local file (to inspect it with standard tools)."""
        if self.store_url.startswith("file://"):
            to.write_bytes((self.store_dir / key).read_bytes())
        else:
            self.bucket.client().download_file(self.bucket.name, "vault/" + key, str(to))
        return to


@pytest.fixture(params=["file", "s3"])
def vault_env(request: pytest.FixtureRequest, tmp_path: Path) -> VaultEnv:
    if request.param == "file":
        env = VaultEnv(tmp_path, f"file://{tmp_path / 'store'}")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        env = VaultEnv.on_s3(tmp_path, bucket)
    env.write_config()
    return env


@pytest.fixture
def file_vault(tmp_path: Path) -> VaultEnv:
    """A vault on a file:// store only (for tests whose subject is not the store)."""
    env = VaultEnv(tmp_path, f"file://{tmp_path / 'store'}")
    env.write_config()
    return env


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A temporary directory that another user can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="vaultfs-test-"))
    base.chmod(0o755)
    yield base
    subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
    shutil.rmtree(base, ignore_errors=True)
