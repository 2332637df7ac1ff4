"""`vaultfs init` and configuration errors: one clear line, no traceback, exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.moto_server import AuthServer, free_port
from tests.vaultenv import VaultEnv


def one_line_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vaultfs: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_init_on_both_stores_is_idempotent(vault_env: VaultEnv) -> None:
    vault_env.add_collection("photos")
    assert vault_env.json("init")["created"] is True
    assert vault_env.store_keys() == ["vault.json"]
    assert vault_env.json("init")["created"] is False


def test_missing_config_file(tmp_path: Path, file_vault: VaultEnv) -> None:
    proc = file_vault.run("--config", str(tmp_path / "nope.toml"), "init", expect=None, config=False)
    one_line_error(proc, "nope.toml not found")


def test_no_config_anywhere(file_vault: VaultEnv, tmp_path: Path) -> None:
    proc = file_vault.run("init", expect=None, config=False, env=file_vault.env(HOME=str(tmp_path)))
    if Path("/etc/vaultfs/vault.toml").exists():
        pytest.fail("this machine has /etc/vaultfs/vault.toml; the test needs it absent")
    one_line_error(proc, "no configuration found")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[vault\nstore=1", ("not valid TOML",)),
        ("[vault]\nstate_dir = '/tmp/x'\n", ("[vault].store is missing",)),
        ("[vault]\nstore = 'ftp://x'\n", ("[vault].store = 'ftp://x'",)),
        ("[vault]\nstore = 'file:///tmp/s'\nband_size = 'lots'\n", ("[vault].band_size = 'lots'",)),
        ("[vault]\nstore = 'file:///tmp/s'\nbandsize = '1GiB'\n", ("unknown key [vault].bandsize",)),
        (
            "[vault]\nstore = 'file:///tmp/s'\n[collections.p]\ntier = 'cold'\n",
            ("[collections.p].path is missing",),
        ),
        (
            "[vault]\nstore = 'file:///tmp/s'\n[collections.p]\npath = '/x'\ntier = 'icy'\n",
            ("[collections.p].tier = 'icy'",),
        ),
        (
            "[vault]\nstore = 'file:///tmp/s'\n[collections.p]\npath = '/x'\nkeep_versions = 'ten'\n",
            ("[collections.p].keep_versions = 'ten'", "expected an integer"),
        ),
        ("[vault]\nstore = 's3://b/p'\n[s3]\nrestore_tier = 'Fast'\n", ("[s3].restore_tier",)),
        (
            "[vault]\nstore = 'file:///tmp/s'\n[mount]\non_restore_ready = \"notify 'me\"\n",
            ("[mount].on_restore_ready", "No closing quotation"),
        ),
        (
            "[vault]\nstore = 'file:///tmp/s'\n[mount]\non_restore_requested = \"notify 'me\"\n",
            ("[mount].on_restore_requested", "No closing quotation"),
        ),
    ],
)
def test_bad_config(file_vault: VaultEnv, text: str, needles: tuple[str, ...]) -> None:
    file_vault.config_path.write_text(text)
    proc = file_vault.run("init", expect=None)
    one_line_error(proc, str(file_vault.config_path), *needles)


def s3_config(env: VaultEnv, endpoint: str, bucket: str) -> None:
    env.config_path.write_text(
        textwrap.dedent(f"""\
        [vault]
        store = "s3://{bucket}/vault"
        state_dir = "{env.state_dir}"
        [s3]
        endpoint_url = "{endpoint}"
        region = "us-east-1"
        """)
    )


def test_unreachable_endpoint(file_vault: VaultEnv) -> None:
    s3_config(file_vault, f"http://127.0.0.1:{free_port()}", "bucket")
    one_line_error(file_vault.run("init", expect=None), "cannot reach the S3 endpoint")


def test_missing_bucket(file_vault: VaultEnv, moto_endpoint: str) -> None:
    s3_config(file_vault, moto_endpoint, "no-such-bucket-here")
    one_line_error(file_vault.run("init", expect=None), "no such bucket no-such-bucket-here")


def test_wrong_and_right_credentials(file_vault: VaultEnv, s3_auth_server: AuthServer) -> None:
    s3_config(file_vault, s3_auth_server.endpoint_url, s3_auth_server.bucket)
    bad = file_vault.env(AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope")
    one_line_error(file_vault.run("init", expect=None, env=bad), "credentials")
    good = file_vault.env(**s3_auth_server.good)
    file_vault.run("init", env=good)


def test_store_holding_a_different_vault(tmp_path: Path) -> None:
    a = VaultEnv(tmp_path / "a", f"file://{tmp_path / 'store_a'}")
    b = VaultEnv(tmp_path / "b", f"file://{tmp_path / 'store_b'}")
    for env in (a, b):
        env.tmp.mkdir()
        env.write_config()
        env.run("init")
    # a's state directory pointed at b's store: refused, both left as they were.
    mixed = VaultEnv(tmp_path / "a", f"file://{tmp_path / 'store_b'}")
    mixed.write_config()
    one_line_error(mixed.run("init", expect=None), "holds a different vault")


def test_store_with_versions_of_an_unknown_vault(tmp_path: Path) -> None:
    first = VaultEnv(tmp_path / "first", f"file://{tmp_path / 'store'}")
    first.tmp.mkdir()
    src = first.add_collection("photos")
    (src / "a").write_bytes(b"a")
    first.run("init")
    first.run("snapshot")
    newcomer = VaultEnv(tmp_path / "second", f"file://{tmp_path / 'store'}")
    newcomer.tmp.mkdir()
    newcomer.write_config()
    one_line_error(newcomer.run("init", expect=None), "already holds vault", "index rebuild")


def test_non_empty_directory_that_is_not_a_vault(file_vault: VaultEnv) -> None:
    store = file_vault.store_dir
    store.mkdir()
    (store / "holiday.jpg").write_bytes(b"not a vault")
    one_line_error(file_vault.run("init", expect=None), "is not empty and holds no vault")


def test_snapshot_before_init(file_vault: VaultEnv) -> None:
    file_vault.add_collection("photos")
    proc = file_vault.run("snapshot", expect=1)
    assert "run `vaultfs init` first" in proc.stderr


def test_unknown_collection(file_vault: VaultEnv) -> None:
    file_vault.add_collection("photos")
    file_vault.run("init")
    proc = file_vault.run("snapshot", "fotos", expect=2)
    assert "no collection named 'fotos'" in proc.stderr and "photos" in proc.stderr
