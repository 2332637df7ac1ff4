"""The tar layer: headers of the regular-file members a band's tar stream is made of.

A member is a ustar header block, preceded by a pax ``x`` header only when a field does
not fit ustar (long or non-ASCII name, huge size, sub-second or far-future mtime, large
ids, long or non-ASCII owner names, xattrs). Pax headers use only keywords GNU tar knows
(path, size, mtime, uid, gid, uname, gname, SCHILY.xattr.*, SCHILY.acl.*, GNU.sparse.*);
names that are not UTF-8 go into ``path`` raw (GNU tar 1.34 warns about ``hdrcharset``, so
it is not written). A sparse file is a member in GNU tar's pax sparse format 1.0: its data
begins with the map (`_sparse_map`), and the header this module returns includes the map,
so the blob (the data extents) starts right after it.
`member_header` is on the hot path of a snapshot of small files: the constant bytes of a
header and its checksum are computed once.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from vaultfs.sparse import MAX_EXTENTS, Extents

BLOCK = 512  # tar's block: headers, and content padded to a multiple of it
_OCT7, _OCT11 = 0o7777777, 0o77777777777


@dataclass(frozen=True, slots=True)
class MemberMeta:
    """Metadata of the file a blob was first seen as (written into its tar header)."""

    mode: int  # permission bits (st_mode & 0o7777)
    uid: int
    gid: int
    mtime_ns: int
    uname: str = ""
    gname: str = ""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # (name, value)
    sparse: tuple[int, Extents] | None = None  # a sparse file: (its size, its data map)


class MapGoesOn(ValueError):
    """The stream ends inside a sparse member's map: more of it is needed to parse it."""


def _pax_record(key: bytes, value: bytes) -> bytes:
    n = len(key) + len(value) + 3  # " ", "=", "\n"
    digits = len(str(n))
    total = n + digits
    if len(str(total)) > digits:
        total += 1
    return b"%d %s=%s\n" % (total, key, value)


_USTAR_TAIL = b"\0" * 100 + b"ustar\x0000"  # linkname, magic, version
_USTAR_END = b"0000000\x000000000\x00" + b"\0" * 167  # devmajor, devminor, prefix, pad
_CONST_SUM = 8 * ord(" ") + sum(_USTAR_TAIL) + sum(_USTAR_END)  # chksum field counts as spaces


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    uname: bytes,
    gname: bytes,
) -> bytes:
    fields = b"%07o%07o%07o%011o%011o" % (mode, uid, gid, size, mtime)
    # The checksum sums every byte; NULs add nothing, so sum only the non-constant bytes.
    chksum = sum(b"%s%s%s%s%s" % (name, fields, typeflag, uname, gname)) + _CONST_SUM
    return b"%s%s\0%s\0%s\0%s\0%s\0%06o\0 %s%s%s%s%s" % (
        name.ljust(100, b"\0"),
        fields[:7],
        fields[7:14],
        fields[14:21],
        fields[21:32],
        fields[32:],
        chksum,
        typeflag,
        _USTAR_TAIL,
        uname.ljust(32, b"\0"),
        gname.ljust(32, b"\0"),
        _USTAR_END,
    )


@functools.lru_cache(maxsize=1024)
def _pax_block(size: int) -> bytes:
    return _ustar(b"././@PaxHeader", 0o644, 0, 0, size, 0, b"x", b"", b"")


def _xattr_key(name: bytes) -> bytes:
    # GNU tar percent-encodes '%' and '=' in xattr names (xheader.c: xattr_encode_keyword).
    return b"SCHILY.xattr." + name.replace(b"%", b"%25").replace(b"=", b"%3D")


# POSIX ACLs: the kernel's xattr (version 2, then (tag u16, perm u16, id u32) entries,
# little-endian) → the text GNU tar writes (acl_to_text: one entry a line), so that
# ``tar -x --acls`` restores them. Ids stay numeric: the band knows no user names.
_ACL_KEYS = {
    b"system.posix_acl_access": b"SCHILY.acl.access",
    b"system.posix_acl_default": b"SCHILY.acl.default",
}
_ACL_TAGS = {
    0x01: b"user:",
    0x02: b"user:",
    0x04: b"group:",
    0x08: b"group:",
    0x10: b"mask:",
    0x20: b"other:",
}


def acl_text(value: bytes) -> bytes:
    """``user::rw-\nuser:1000:r--\ngroup::r-x\nmask::r-x\nother::r--\n``; ValueError."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        raise ValueError("not a POSIX ACL")
    lines = []
    for tag, perm, qid in struct.iter_unpack("<HHI", value[4:]):
        if tag not in _ACL_TAGS:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        qualifier = b"%d" % qid if tag in (0x02, 0x08) else b""
        rwx = b"".join(c if perm & bit else b"-" for c, bit in ((b"r", 4), (b"w", 2), (b"x", 1)))
        lines.append(b"%s%s:%s\n" % (_ACL_TAGS[tag], qualifier, rwx))
    return b"".join(lines)


def _xattr_record(name: bytes, value: bytes) -> bytes:
    """An xattr as GNU tar writes it: ACLs as ``SCHILY.acl.*`` text (what ``--acls``
    restores), every other name as ``SCHILY.xattr.<name>`` with the raw value."""
    if name in _ACL_KEYS:
        try:
            return _pax_record(_ACL_KEYS[name], acl_text(value))
        except ValueError:
            pass  # not an ACL the kernel would have written: kept raw, like any xattr
    return _pax_record(_xattr_key(name), value)


def member_header(name: bytes, meta: MemberMeta, size: int) -> bytes:
    """The tar header block(s) of a regular-file member: a pax 'x' header only when needed."""
    records: list[bytes] = []
    sparse_map = b""
    if meta.sparse is not None:
        records += _sparse_records(name, *meta.sparse)
        sparse_map = _sparse_map(*meta.sparse)
        size += len(sparse_map)
        head, _, tail = name.rpartition(b"/")
        name = b"%s%sGNUSparseFile.0/%s" % (head, b"/" if head else b"", tail)
    if len(name) <= 100 and name.isascii():
        ustar_name = name
    else:
        records.append(_pax_record(b"path", name))
        ustar_name = name[:100].decode("ascii", "replace").encode("ascii", "replace")
    if size > _OCT11:
        records.append(_pax_record(b"size", b"%d" % size))
    # GNU tar warns about times before 1970 ("implausibly old time stamp"): clamp to 0.
    sec, ns = divmod(max(meta.mtime_ns, 0), 1_000_000_000)
    if ns or sec > _OCT11:
        records.append(_pax_record(b"mtime", b"%d.%09d" % (sec, ns)))
    uid, gid = meta.uid, meta.gid
    if uid < 0 or gid < 0:
        raise ValueError("negative uid/gid")
    if uid > _OCT7:
        records.append(_pax_record(b"uid", b"%d" % uid))
    if gid > _OCT7:
        records.append(_pax_record(b"gid", b"%d" % gid))
    uname = meta.uname.encode("utf-8", "surrogateescape")
    gname = meta.gname.encode("utf-8", "surrogateescape")
    if len(uname) > 32 or not uname.isascii():
        records.append(_pax_record(b"uname", uname))
        uname = b""
    if len(gname) > 32 or not gname.isascii():
        records.append(_pax_record(b"gname", gname))
        gname = b""
    for xname, xvalue in meta.xattrs:
        records.append(_xattr_record(xname, xvalue))
    block = _ustar(
        ustar_name,
        meta.mode & 0o7777,
        uid if uid <= _OCT7 else 0,
        gid if gid <= _OCT7 else 0,
        size if size <= _OCT11 else 0,
        sec if sec <= _OCT11 else 0,
        b"0",
        uname,
        gname,
    )
    if not records:
        return block
    pax = b"".join(records)
    return b"%s%s%s%s%s" % (_pax_block(len(pax)), pax, b"\0" * (-len(pax) % BLOCK), block, sparse_map)


def _sparse_records(name: bytes, size: int, extents: Extents) -> list[bytes]:
    """GNU tar's pax sparse format 1.0: the real name and size; the map is in the data."""
    return [
        _pax_record(b"GNU.sparse.major", b"1"),
        _pax_record(b"GNU.sparse.minor", b"0"),
        _pax_record(b"GNU.sparse.name", name),
        _pax_record(b"GNU.sparse.realsize", b"%d" % size),
    ]


def _sparse_map(size: int, extents: Extents) -> bytes:
    """The map block(s) that begin a sparse 1.0 member's data: the number of extents, then
    offset and length of each, one decimal per line, padded to a block. A file that ends
    in a hole gets a last empty extent at its end, as GNU tar writes it (so that tars that
    size the file from the map extend it)."""
    if not extents or sum(extents[-1]) < size:
        extents = (*extents, (size, 0))
    lines = [b"%d\n" % len(extents)]
    lines += [b"%d\n%d\n" % pair for pair in extents]
    text = b"".join(lines)
    return text + b"\0" * (-len(text) % BLOCK)


def _map_span(data: bytes) -> int:
    """Bytes the sparse map at the start of `data` takes (a multiple of BLOCK); MapGoesOn
    when `data` ends inside it, ValueError when it is not a map."""
    pos, numbers, count = 0, 0, None
    while count is None or numbers < 1 + 2 * count:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if len(data) - pos > 20:
                raise ValueError("bad sparse map")
            raise MapGoesOn("sparse map goes on")
        value = int(data[pos:nl])  # ValueError on anything but a decimal
        if count is None:
            count = value
            if not 0 < count <= 4 * MAX_EXTENTS:
                raise ValueError("bad sparse map")
        numbers, pos = numbers + 1, nl + 1
    return pos + (-pos % BLOCK)


def parse_member(stream: bytes) -> tuple[bytes, int, int]:
    """Parse the member at the start of `stream`: (name, content offset, size). ValueError.

    For a sparse member: its real name and its blob (the data after the map); MapGoesOn
    when `stream` ends inside the map."""
    pax: dict[bytes, bytes] = {}
    pos = 0
    while True:
        block = stream[pos : pos + BLOCK]
        if len(block) < BLOCK or int(block[148:156].strip(b"\0 ") or b"-1", 8) != (
            sum(block[:148]) + 256 + sum(block[156:])
        ):
            raise ValueError("bad tar header")
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        pos += BLOCK
        if block[156:157] != b"x":
            break
        data, pos = stream[pos : pos + size], pos + size + (-size % BLOCK)
        while data:
            length = int(data[: data.index(b" ")])
            if length <= 0:
                raise ValueError("bad pax record length")
            key, _, value = data[data.index(b" ") + 1 : length - 1].partition(b"=")
            pax[key], data = value, data[length:]
    name = pax.get(b"path", block[:100].rstrip(b"\0"))
    size = int(pax[b"size"]) if b"size" in pax else size
    if pax.get(b"GNU.sparse.major") == b"1":  # a sparse member: its blob follows the map
        try:
            span = _map_span(stream[pos : pos + size])
        except MapGoesOn:
            if len(stream) >= pos + size:
                raise ValueError("bad sparse map") from None
            raise
        return pax[b"GNU.sparse.name"], pos + span, size - span
    return name, pos, size
