"""The canonical tree encoding: the fast encoder writes exactly the reference bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vaultfs.model import (
    KINDS,
    Entry,
    decode_tree,
    encode_tree,
    encode_tree_reference,
)

names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)
digests = st.binary(min_size=32, max_size=32)
ints = st.integers(min_value=0, max_value=2**63 - 1)

entries = st.builds(
    Entry,
    name=names,
    kind=st.sampled_from(KINDS),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    mtime_ns=st.integers(-(2**62), 2**62),
    size=ints,
    blob=st.none() | digests,
    tree=st.none() | digests,
    target=st.none() | st.binary(max_size=60),
    rdev=ints,
    nlink=st.integers(1, 1000),
    hardlink=st.none() | st.binary(min_size=1, max_size=60),
    xattrs=st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=50)), max_size=3).map(
        tuple
    ),
    flags=st.integers(0, 2**32 - 1),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, max_size=8, unique_by=lambda e: e.name))
def test_fast_encoder_matches_the_reference(listing: list[Entry]) -> None:
    fast = encode_tree(listing)
    assert fast == encode_tree_reference(listing)
    assert list(decode_tree(fast)) == sorted(listing, key=lambda e: e.name)
