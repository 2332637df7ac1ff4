"""The hub's frame format, defined here and nowhere else (docs/hub.md, "Protocol").

A frame is::

    u32 header length | u32 payload length | header (UTF-8 JSON object) | payload (bytes)

big-endian, the header at most `MAX_HEADER` bytes and the payload at most `MAX_PAYLOAD`:
a frame announcing more is refused before anything is allocated for it. The header's
``"op"`` names the message; everything else in it is that message's fields. Binary data
(tree encodings, file contents, lists of digests) travels in the payload, never in JSON.

Both ends read with `Channel.read` and write with `Channel.send`; a malformed frame, a
truncated one or an end of stream in the middle of one is a `ProtocolError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import IO, Any

from vaultfs.errors import VaultError

PROTOCOL = 1  # the version both ends say in ``hello``/``welcome``
MAX_HEADER = 1024 * 1024
MAX_PAYLOAD = 32 * 1024 * 1024  # a tree encoding must fit (≈ 200 000 entries in one directory)
DATA_CHUNK = 1024 * 1024  # file content is sent in payloads of at most this
DIGEST = 32  # bytes of a SHA-256
_PREFIX = struct.Struct(">II")


class ProtocolError(VaultError):
    """The other end sent something that is not a valid frame or message, or went away."""


class Disconnected(ProtocolError):
    """The stream ended (the other end exited or was killed)."""


@dataclass(slots=True)
class Frame:
    op: str
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        """A header field of the given type; ProtocolError when it is missing or of another type
        (bool is not taken for int)."""
        value = self.header.get(key, default)
        if value is None and default is None:
            raise ProtocolError(f"a {self.op!r} message without {key!r}")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"a {self.op!r} message whose {key!r} is not a {kind.__name__}")
        return value


def encode(op: str, payload: bytes = b"", **header: Any) -> bytes:
    """One frame's bytes."""
    head = json.dumps({"op": op, **header}, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise ProtocolError(
            f"a {op!r} message over the frame bound (header {len(head)}, payload {len(payload)})"
        )
    return _PREFIX.pack(len(head), len(payload)) + head + payload


def digests(payload: bytes) -> list[bytes]:
    """A payload of concatenated SHA-256 digests, split."""
    if len(payload) % DIGEST:
        raise ProtocolError("a list of digests whose length is not a multiple of 32")
    return [payload[i : i + DIGEST] for i in range(0, len(payload), DIGEST)]


class Channel:
    """Frames over a pair of byte streams (a subprocess's pipes, or stdin/stdout)."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.rfile, self.wfile = rfile, wfile
        self.bytes_sent = 0
        self.bytes_received = 0

    def send(self, op: str, payload: bytes = b"", **header: Any) -> None:
        data = encode(op, payload, **header)
        self.wfile.write(data)
        self.wfile.flush()
        self.bytes_sent += len(data)

    def read(self) -> Frame:
        prefix = self._exactly(_PREFIX.size, at_start=True)
        head_len, payload_len = _PREFIX.unpack(prefix)
        if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
            raise ProtocolError(
                f"a frame over the bound (header {head_len} > {MAX_HEADER} or payload "
                f"{payload_len} > {MAX_PAYLOAD} bytes)"
            )
        raw = self._exactly(head_len)
        payload = self._exactly(payload_len)
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("a frame whose header is not JSON") from None
        if not isinstance(header, dict) or not isinstance(header.get("op"), str):
            raise ProtocolError("a frame whose header is not an object with an 'op'")
        op = header.pop("op")
        return Frame(op, header, payload)

    def expect(self, *ops: str) -> Frame:
        """The next frame, which must be one of `ops` (an ``error`` from the other end is
        raised as a VaultError carrying its message and exit code)."""
        frame = self.read()
        if frame.op == "error" and "error" not in ops:
            raise remote_error(frame)
        if frame.op not in ops:
            raise ProtocolError(f"expected {' or '.join(ops)}, got {frame.op!r}")
        return frame

    def _exactly(self, n: int, *, at_start: bool = False) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self.rfile.read(n - got)
            if not chunk:
                if at_start and got == 0:
                    raise Disconnected("the other end closed the connection")
                raise Disconnected("the connection ended in the middle of a frame")
            chunks.append(chunk)
            got += len(chunk)
        self.bytes_received += n
        return b"".join(chunks)


def remote_error(frame: Frame) -> VaultError:
    """The VaultError an ``error`` frame stands for (its one-line message and exit code)."""
    message = frame.header.get("message")
    code = frame.header.get("code")
    err = VaultError(str(message) if isinstance(message, str) else "the hub failed")
    if isinstance(code, int) and not isinstance(code, bool) and 1 <= code <= 4:
        err.exit_code = code
    return err
