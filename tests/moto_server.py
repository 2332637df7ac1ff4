"""moto's S3 server over HTTP on 127.0.0.1, for tests that talk to S3 through boto3.

* ``moto_endpoint`` (session): moto's S3 app on a free port, in a thread; its URL. Every request
  it serves is written into `REQUESTS` while a test records (fixture ``s3_requests``).
* ``s3_bucket`` (function): resets moto, creates a fresh bucket, returns an `S3Bucket`.
* ``s3_auth_server`` (session): a second moto server, in a subprocess, that checks
  signatures against IAM access keys (see `AuthServer`).

Fake credentials are put into ``os.environ`` at import time, before any test
runs, so that boto3 never finds real ones.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never read the developer's ~/.aws files.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)
for _name in _UNSET:
    os.environ.pop(_name, None)
os.environ.update(FAKE_ENV)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, data: bytes = b"") -> bytes:
    # Not form-encoded: werkzeug would swallow a form body, and reset-auth reads the raw body.
    headers = {"Content-Type": "application/octet-stream"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST")) as r:
        return bytes(r.read())


def _s3_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the session's moto server."""

    endpoint_url: str
    name: str
    env: dict[str, str] = field(default_factory=dict)  # for subprocesses: fake credentials

    def client(self) -> Any:
        """A plain boto3 client for arranging and inspecting state behind the store's back."""
        return _s3_client(self.endpoint_url)


@dataclass(frozen=True)
class Request:
    """One request the test server answered: method, path (bucket and key), Range header."""

    method: str
    path: str
    range: str | None


class RequestLog:
    """The requests the session's moto server serves while `recording` (server side: what
    vaultfs really sends, retries and all, whichever process sends it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recording = False
        self._entries: list[Request] = []

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """A WSGI middleware around moto's app that notes each request."""

        def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if not environ.get("PATH_INFO", "").startswith("/moto-api/"):
                with self._lock:
                    if self._recording:
                        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
                        self._entries.append(Request(method, path, environ.get("HTTP_RANGE")))
            return app(environ, start_response)

        return logged

    @contextmanager
    def recording(self) -> Iterator[list[Request]]:
        """Record the requests served inside the block into the list it yields."""
        with self._lock:
            self._entries, self._recording = [], True
        try:
            yield self._entries
        finally:
            with self._lock:
                self._recording = False


REQUESTS = RequestLog()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 app behind `REQUESTS`, served by werkzeug in a thread (what moto's own
    ThreadedMotoServer does, with the request log around the app)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = REQUESTS.wrap(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def s3_requests() -> RequestLog:
    """The log of the requests the session's moto server serves (see `RequestLog.recording`)."""
    return REQUESTS


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> S3Bucket:
    _post(f"{moto_endpoint}/moto-api/reset")
    bucket = S3Bucket(
        endpoint_url=moto_endpoint,
        name="vaultfs-test",
        env={**os.environ, **FAKE_ENV},
    )
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@dataclass(frozen=True)
class AuthServer:
    """A moto server that enforces authentication.

    moto checks signatures only after ``INITIAL_NO_AUTH_ACTION_COUNT`` requests
    (read from the environment when moto is imported, and settable later with
    ``POST /moto-api/reset-auth``). The fixture starts the server with auth off,
    creates ``bucket`` and an IAM user with full S3 access, then turns auth on:
    ``good`` are that user's keys, any other keys are refused (InvalidAccessKeyId).
    It runs in a subprocess because the setting is process-wide and would
    otherwise switch auth on for the shared server too.
    """

    endpoint_url: str
    bucket: str
    good: dict[str, str]


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[AuthServer]:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **FAKE_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json").close()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server with auth did not start") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="vaultfs")
        iam.put_user_policy(  # moto loads no AWS-managed policies unless asked to
            UserName="vaultfs",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="vaultfs")["AccessKey"]
        _s3_client(endpoint).create_bucket(Bucket="vaultfs-auth")
        _post(f"{endpoint}/moto-api/reset-auth", b"0")
        yield AuthServer(
            endpoint_url=endpoint,
            bucket="vaultfs-auth",
            good={
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            },
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
