"""Ranged GETs signed without boto3 (`vaultfs.store.s3_quick`): the signature is botocore's,
moto's signature-checking server accepts it, and anything the quick path cannot vouch for
goes to boto3 (credentials it does not know, a refused key)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from tests.moto_server import AuthServer
from tests.vaultenv import VaultEnv
from vaultfs.config import S3Settings
from vaultfs.store.s3_quick import Credentials, endpoint_for, sign_get, static_setup

NOW = datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=datetime.UTC)


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//token+with/odd=chars"])
@pytest.mark.parametrize("key", ["bands/ab/cd.band", "odd key/with spaces+plus/é~x"])
def test_the_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, token: str | None, key: str) -> None:
    """The oracle: botocore's own S3 signer, at the same instant, for the same GET."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    endpoint = endpoint_for("my-bucket", "eu-west-3", "http://127.0.0.1:9000")
    assert endpoint is not None
    from urllib.parse import quote

    path = f"{endpoint.base_path}/{quote(key, safe='/~')}"
    ours = sign_get(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        "eu-west-3",
        endpoint.host,
        path,
        {"Range": "bytes=5-104"},
        NOW.timestamp(),
    )
    request = AWSRequest(method="GET", url=f"http://{endpoint.host}{path}", headers={"Range": "bytes=5-104"})
    creds = BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-3").add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


def _ini(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_only_static_credentials_take_the_quick_path(tmp_path: Path) -> None:
    """Where boto3 would find static keys first, the quick path uses the same keys;
    wherever boto3 would do more (a role, SSO, a proxy), it is boto3's turn."""
    creds = _ini(
        tmp_path / "credentials",
        "[default]\naws_access_key_id = AKF\naws_secret_access_key = SF\n"
        "[work]\naws_access_key_id = AKW\naws_secret_access_key = SW\n",
    )
    config = _ini(
        tmp_path / "config",
        "[default]\nregion = eu-north-1\n"
        "[profile work]\nregion = ap-south-1\n[profile role]\nrole_arn = arn:aws:iam::1:role/x\n",
    )
    files = {"AWS_SHARED_CREDENTIALS_FILE": creds, "AWS_CONFIG_FILE": config}
    env_keys = {"AWS_ACCESS_KEY_ID": "AKE", "AWS_SECRET_ACCESS_KEY": "SE", "AWS_SESSION_TOKEN": "T"}
    plain = S3Settings()
    assert static_setup(plain, {**files, **env_keys}) == (Credentials("AKE", "SE", "T"), "eu-north-1")
    assert static_setup(plain, files) == (Credentials("AKF", "SF"), "eu-north-1")
    work = S3Settings(profile="work", region="us-west-2")  # a named profile beats the environment
    assert static_setup(work, {**files, **env_keys}) == (Credentials("AKW", "SW"), "us-west-2")
    assert static_setup(plain, {**files, "AWS_PROFILE": "work"}) == (Credentials("AKW", "SW"), "ap-south-1")
    assert static_setup(S3Settings(profile="role"), files) is None  # assume-role: boto3
    assert static_setup(plain, {**files, **env_keys, "HTTPS_PROXY": "http://proxy:3128"}) is None
    assert static_setup(plain, {**env_keys, "AWS_CONFIG_FILE": os.devnull}) is None  # no region known
    assert endpoint_for("dotted.bucket", "us-east-1", None) is None  # virtual-hosting needs TLS names
    assert endpoint_for("plain-bucket", "us-east-1", None) is not None


def test_fetch_through_a_signature_checking_server(s3_auth_server: AuthServer, tmp_path: Path) -> None:
    """The quick GET is accepted by a server that checks signatures; a refused key is told
    in boto3's words (the quick path never decides an error)."""
    env = VaultEnv(tmp_path, f"s3://{s3_auth_server.bucket}/quick", s3_endpoint=s3_auth_server.endpoint_url)
    src = env.add_collection("code", tier="warm")
    (src / "a file.py").write_bytes(b"print('quick')\n" * 700)
    good = env.env(**s3_auth_server.good)
    env.run("init", env=good)
    env.run("snapshot", env=good)
    out = tmp_path / "out"
    proc = env.run(
        "restore",
        "fetch",
        "code@v1",
        "a file.py",
        "--to",
        str(out),
        env={**good, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert (out / "a file.py").read_bytes() == (src / "a file.py").read_bytes()
    assert "botocore" not in proc.stderr  # served by the quick path alone
    wrong = {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = env.run("restore", "fetch", "code@v1", "--to", str(tmp_path / "o2"), expect=2, env=wrong)
    assert "the S3 credentials were refused (SignatureDoesNotMatch)" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "o2" / "a file.py").exists()
