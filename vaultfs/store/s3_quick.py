"""Ranged GETs from S3 without importing boto3: the start-up of short reading commands.

Importing boto3 and making its S3 client costs ~0.25 s of CPU, more than everything else
`vaultfs restore fetch` of one file does. A ranged GET is one HTTP request signed with
AWS Signature Version 4, so a command that only reads (`open_store(..., quick=True)`)
gets a `QuickS3Store`: its ``get_range`` signs the request here (``hmac``/``hashlib``)
and sends it with ``http.client`` (TLS verified by Python's default context); every
other call — and every GET this module cannot answer for certain — goes to the real
`vaultfs.store.s3.S3Store`, made (and boto3 imported) on first need.

What the quick path takes on, and what it leaves to boto3 (docs/stores.md):

* credentials only from the places boto3 reads static keys first: the ``AWS_*``
  environment variables, or the profile's keys in the shared credentials file when the
  profile's config section names no role, process or SSO; anything else (instance roles,
  SSO, ``credential_process`` …) → boto3;
* a region from ``[s3].region``, ``AWS_REGION``/``AWS_DEFAULT_REGION`` or the profile;
  none → boto3; a proxy or ``AWS_ENDPOINT_URL*`` → boto3; ``AWS_CA_BUNDLE`` is honoured;
* addresses: ``[s3].endpoint_url`` path-style (what S3-compatible servers all serve);
  AWS virtual-hosted (``https://BUCKET.s3.REGION.amazonaws.com/KEY``), for bucket names
  without dots;
* answers: only a ``206`` whose ``Content-Range`` starts where asked, and a ``416`` (past
  the end: ``b""``) are final; any other status, a network error or a short body sends
  the same GET through boto3, whose retries and error messages apply. So the quick
  path never decides that an object is missing or archived, and the bytes it returns
  are verified by the caller like any others (a blob's SHA-256).

The signing is checked in the tests against botocore's own signer and against moto's
server with signature checks on.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from vaultfs.config import S3Settings
from vaultfs.store.base import ObjectInfo, ProgressCallback
from vaultfs.store.limit import Bandwidth

if TYPE_CHECKING:
    from vaultfs.store.s3 import S3Store

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# Settings boto3 honours that the quick path does not: with any of them set, boto3 it is.
_BOTO_ONLY_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
)
# A profile's config keys that make its credentials something other than static keys.
_NOT_STATIC = ("role_arn", "credential_process", "credential_source", "web_identity_token_file")


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a bucket's objects are: scheme, host[:port] and the path before the key."""

    https: bool
    host: str
    base_path: str  # "/bucket" (path-style) or "" (virtual-hosted)


def _profile_sections(environ: Mapping[str, str], profile: str) -> tuple[dict[str, str], dict[str, str]]:
    """The profile's sections of the shared config and credentials files (empty when absent)."""
    home = Path.home() / ".aws"
    config = _read_ini(environ.get("AWS_CONFIG_FILE") or str(home / "config"))
    creds = _read_ini(environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / "credentials"))
    config_name = "default" if profile == "default" else f"profile {profile}"
    return dict(config.get(config_name, {})), dict(creds.get(profile, {}))


def _read_ini(path: str) -> dict[str, dict[str, str]]:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):  # usual with credentials in the environment: nothing to parse
        return {}
    import configparser  # here: ~3 ms of start-up that most fetches do not need

    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (configparser.Error, OSError, UnicodeDecodeError):
        return {}
    return {name: dict(parser.items(name)) for name in parser.sections()}


def static_setup(settings: S3Settings, environ: Mapping[str, str]) -> tuple[Credentials, str] | None:
    """The static credentials and region boto3 would use, or None when finding them
    needs boto3 (roles, SSO, instance metadata, …) or a setting only boto3 honours."""
    if any(environ.get(name) for name in _BOTO_ONLY_ENV):
        return None
    profile = settings.profile or environ.get("AWS_PROFILE") or "default"
    config, creds = _profile_sections(environ, profile)
    region = settings.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    region = region or config.get("region")
    if not region:
        return None
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if settings.profile is None and key and secret:  # boto3's first source, before any profile
        return Credentials(key, secret, environ.get("AWS_SESSION_TOKEN") or None), region
    if any(config.get(k) for k in _NOT_STATIC) or any(k.startswith("sso_") for k in config):
        return None
    key, secret = creds.get("aws_access_key_id"), creds.get("aws_secret_access_key")
    if not (key and secret):
        return None
    return Credentials(key, secret, creds.get("aws_session_token") or None), region


def endpoint_for(bucket: str, region: str, endpoint_url: str | None) -> Endpoint | None:
    """Path-style under a configured endpoint; virtual-hosted on AWS; None → boto3."""
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            return None
        https = parts.scheme == "https"
        host = parts.netloc
        if parts.port == (443 if https else 80):  # signed as botocore signs it: no default port
            host = host.rsplit(":", 1)[0]
        return Endpoint(https, host, "/" + quote(bucket, safe=""))
    if not _DNS_BUCKET.match(bucket) or not re.fullmatch(r"[a-z0-9-]+", region):
        return None
    return Endpoint(True, f"{bucket}.s3.{region}.amazonaws.com", "")


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_get(
    creds: Credentials, region: str, host: str, path: str, headers: Mapping[str, str], now: float
) -> dict[str, str]:
    """``headers`` plus the SigV4 headers of ``GET path`` on ``host`` (path already
    URI-encoded, no query string), for service ``s3`` at time ``now``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    day = stamp[:8]
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": EMPTY_SHA256})
    if creds.token:
        signed["x-amz-security-token"] = creds.token
    names = sorted(signed)
    canonical = "\n".join(
        ["GET", path, "", *(f"{n}:{signed[n]}" for n in names), "", ";".join(names), EMPTY_SHA256]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join([_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{creds.secret_key}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"{_ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


class QuickS3Store:
    """An `S3Store` whose ranged GETs start without boto3 (see the module's docstring).

    ``real`` makes the boto3-backed store on first need; every method but ``get_range``
    is that store's.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: S3Settings,
        environ: Mapping[str, str],
        bandwidth: Bandwidth | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.bandwidth = bandwidth or Bandwidth()
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        setup = static_setup(settings, environ)
        self._setup = setup
        self._endpoint = endpoint_for(bucket, setup[1], settings.endpoint_url) if setup else None
        self._ca_bundle = environ.get("AWS_CA_BUNDLE") or None
        self._real: S3Store | None = None
        self._made = threading.Lock()
        self._local = threading.local()  # one keep-alive connection per thread

    def real(self) -> S3Store:
        with self._made:
            if self._real is None:
                from vaultfs.store.s3 import S3Store  # the import this class exists to defer

                self._real = S3Store(self.bucket, self.prefix, self.settings, bandwidth=self.bandwidth)
            return self._real

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; the quick path when it can answer for certain."""
        if start >= 0 and length > 0:
            data = self._quick_get(key, start, length)
            if data is not None:
                return data
        return self.real().get_range(key, start, length)

    def _quick_get(self, key: str, start: int, length: int) -> bytes | None:
        if self._setup is None or self._endpoint is None or not key or key.startswith("/"):
            return None
        full_key = f"{self.prefix}/{key}" if self.prefix else key
        path = f"{self._endpoint.base_path}/{quote(full_key, safe='/~')}"
        headers = sign_get(
            *self._setup,
            self._endpoint.host,
            path,
            {"range": f"bytes={start}-{start + length - 1}"},
            time.time(),
        )
        try:
            status, content_range, body = self._send(path, headers)
        except (OSError, http.client.HTTPException):
            self._drop_connection()
            return None
        if status == 416:
            return b""
        if status != 206 or not content_range.startswith(f"bytes {start}-") or len(body) > length:
            return None
        self.bandwidth.down.take(len(body))  # after the fact: the next transfer waits for it
        return body

    def _send(self, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._endpoint is not None
            if self._endpoint.https:
                tls = ssl.create_default_context(cafile=self._ca_bundle)
                conn = http.client.HTTPSConnection(self._endpoint.host, timeout=60.0, context=tls)
            else:
                conn = http.client.HTTPConnection(self._endpoint.host, timeout=60.0)
            self._local.conn = conn
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, response.getheader("Content-Range", ""), body

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- everything else is the real store's ----------------------------------------

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        self.real().put(key, data, if_none_match=if_none_match)

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: bytes,
        progress: ProgressCallback | None = None,
        storage_class: str = "STANDARD",
    ) -> None:
        self.real().put_file(key, path, sha256=sha256, progress=progress, storage_class=storage_class)

    def get(self, key: str) -> bytes:
        return self.real().get(key)

    def get_to_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self.real().get_to_file(key, path, progress)

    def head(self, key: str) -> ObjectInfo:
        return self.real().head(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.real().list(prefix)

    def delete(self, key: str) -> None:
        self.real().delete(key)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return self.real().abort_incomplete_uploads(prefix)

    def check_access(self) -> None:
        self.real().check_access()

    def copy_to_class(self, key: str, storage_class: str) -> None:
        self.real().copy_to_class(key, storage_class)

    def restore(self, key: str, days: int, tier: str) -> None:
        self.real().restore(key, days, tier)

    def __repr__(self) -> str:
        return f"QuickS3Store({self.url!r})"
