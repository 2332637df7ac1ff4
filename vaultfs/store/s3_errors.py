"""What S3's answers mean: botocore failures as `StoreError` kinds, and the one-line messages.

`classify` turns any botocore/boto3 failure into a `StoreError` whose
``transient`` flag says whether retrying may help; problems of the setup
(credentials, permissions, the bucket) are `StoreRefused` with the same
message `S3Store.check_access` gives (`credentials_refused`, `access_denied`,
`no_such_bucket`). Imported only with `vaultfs.store.s3` (it imports botocore).
"""

from __future__ import annotations

import logging

import botocore.exceptions as bex

from vaultfs.store.base import (
    ObjectArchived,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreRefused,
)

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_TRANSIENT_EXCEPTIONS = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy errors
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bex.IncompleteReadError,
    OSError,  # socket errors (reset, timeout) while sending or reading a body
)
NO_CREDENTIALS = (
    "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "or [s3].profile, or run where an instance role is available"
)


_PERMISSIONS = "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:RestoreObject"
# Where boto3 found the credentials (Credentials.method) -> (which ones, what to fix).
_CREDENTIAL_SOURCES = {
    "env": (
        "from the environment",
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if set), "
        "or unset them and set [s3].profile",
    ),
    "shared-credentials-file": (
        "of profile {profile} in ~/.aws/credentials",
        "fix that profile's keys, or choose another with [s3].profile",
    ),
    "config-file": (
        "of profile {profile} in ~/.aws/config",
        "fix that profile's keys, or choose another with [s3].profile",
    ),
    "iam-role": ("of this machine's instance role", "check the role attached to the instance"),
    "container-role": ("of the container's role", "check the role of the task or pod"),
}


def credentials_refused(code: str, method: str | None, profile: str | None) -> str:
    """The one message for refused credentials (access check and any later request alike)."""
    which, fix = _CREDENTIAL_SOURCES.get(
        method or "",
        (
            f"from {method or 'an unknown source'} (profile {{profile}})",
            "refresh or fix them, or choose other ones with [s3].profile",
        ),
    )
    which = which.format(profile=profile or "default")
    return f"the S3 credentials were refused ({code}): they are the ones {which}: {fix}"


def access_denied(code: str, bucket: str) -> str:
    return f"access to bucket {bucket} was denied ({code}): the credentials need {_PERMISSIONS} on it"


def no_such_bucket(bucket: str, endpoint: str, *, bare_404: bool = False) -> str:
    """The one message for a missing bucket, or an endpoint answering 404 for it."""
    why = " (it answered HTTP 404 without an S3 error code)" if bare_404 else ""
    return (
        f"no such bucket {bucket} at {endpoint}{why}: check [s3].endpoint_url and the "
        "bucket name in [vault].store (vaultfs never creates buckets: create it first)"
    )


def error_code(exc: bex.ClientError) -> str:
    """The S3 error code, or the HTTP status as a string for body-less answers (HEAD)."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "")
    if not code:
        code = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def classify(
    exc: Exception,
    *,
    what: str,
    bucket: str,
    endpoint: str = "S3",
    credentials: tuple[str | None, str | None] = (None, None),
) -> StoreError:
    """Turn a botocore/boto3 failure of ``what`` (e.g. "GET s3://b/k") into a StoreError.

    Transient: throttling, 5xx, timeouts, broken connections. Problems of the
    configuration (credentials, permissions, the bucket) are `StoreRefused`
    with the same message `S3Store.check_access` gives; ``credentials`` is
    (Credentials.method, profile) for saying which credentials were refused.
    Everything else is permanent; the message names the request and says what
    to check. A bare 404 is ObjectNotFound here; `S3Store` tells a missing
    bucket from a missing key.
    """
    if isinstance(exc, bex.ClientError):
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = exc.response.get("Error", {}).get("Message") or code
        if code == "NoSuchBucket":
            return StoreRefused(no_such_bucket(bucket, endpoint))
        if code in ("NoSuchKey", "NotFound", "404"):
            return ObjectNotFound(f"{what}: no such object")
        if code in ("PreconditionFailed", "412"):
            return ObjectExists(f"{what}: the object already exists")
        if code == "InvalidObjectState":
            return ObjectArchived(f"{what}: the object is archived: restore it first (vaultfs restore start)")
        if code in TRANSIENT_CODES or status >= 500:
            return StoreError(f"{what}: S3 answered {code}", transient=True)
        if code in CREDENTIAL_CODES:
            log.debug("%s: %s", what, code)
            return StoreRefused(credentials_refused(code, *credentials))
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            log.debug("%s: %s", what, code)
            return StoreRefused(access_denied(code, bucket))
        return StoreError(f"{what}: S3 answered {code}: {text}")
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return StoreRefused(NO_CREDENTIALS)
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return StoreError(f"{what}: {type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, bex.BotoCoreError):
        return StoreError(f"{what}: {exc}")
    raise TypeError(f"not an S3 failure: {exc!r}") from exc
