"""The commit of a snapshot: the last band, the version record, the catalog.

Order (the version record is the commit point; nothing is visible before it):

1. The last band is closed with the new trees and the version record in its catalog
   (a run that read nothing new opens a metadata-only band for them).
2. The uploader is stopped, which waits until every band of the version is stored.
3. The version record is written to the store with If-None-Match.
4. The catalog records the trees, the version, the files cache rows of the files read
   and their scrub rows (read and hashed now: verified; rows of deleted files are
   dropped), the directory memo rows and what the rules left out.

A run whose root tree and root metadata equal the latest version's writes no version:
`record_unchanged` adds a verification time to the latest one instead.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from vaultfs import testpoints
from vaultfs.catalog import CatalogWriter, ScrubRow
from vaultfs.model import ChangeStats, RootMeta, TreeId, VersionInfo, content_key, to_text
from vaultfs.snapshot.diff import Changes
from vaultfs.snapshot.files import FileSaver
from vaultfs.snapshot.spool import Uploader
from vaultfs.snapshot.trees import TreeSaver
from vaultfs.vault import Vault


def commit_version(
    vault: Vault,
    files: FileSaver,
    uploader: Uploader,
    trees: TreeSaver,
    changes: Changes,
    *,
    root: TreeId,
    root_meta: RootMeta | None,
    latest: VersionInfo | None,
    now: Callable[[], int],
    left_out: set[bytes] | None = None,
) -> VersionInfo:
    """Write the new version (steps 1–4 above) and return its record. `left_out`: what the
    run's rules left out, when the catalog's left-out rows must change."""
    now_ns = now()
    if files.band is None:
        files.open_band()  # a metadata-only band carries the trees and the record
    version = VersionInfo(
        collection=files.collection,
        number=(latest.number + 1) if latest else 1,
        created_ns=now_ns,
        root=root,
        bands=tuple(files.band_ids),
        stats=ChangeStats(
            files=trees.files,
            bytes=trees.size,
            added=changes.added,
            changed=changes.changed,
            removed=changes.removed,
            bytes_added=files.bytes_added,
        ),
        previous_created_ns=latest.created_ns if latest else None,
        host=socket.gethostname(),
        root_meta=root_meta,
    )
    files.close_band(
        final_extra={
            "version": version.to_json(),
            "trees": {tid.hex(): to_text(enc) for tid, enc in trees.new.items()},
        }
    )
    uploader.stop(abort=False)
    testpoints.reach("before-commit")
    vault.commit_version(version)
    testpoints.reach("version-record-written")
    with vault.catalog.writer() as w:
        for tid, enc in trees.new.items():
            w.put_tree(tid, enc)
        w.put_version(version)
        _write_files_cache(w, files, changes.deleted, root, trees, now_ns)
        if left_out is not None:
            w.replace_left_out(files.collection, sorted(left_out))
    return version


def record_unchanged(
    vault: Vault,
    files: FileSaver,
    uploader: Uploader,
    trees: TreeSaver,
    latest: VersionInfo,
    now: Callable[[], int],
    left_out: set[bytes] | None = None,
) -> VersionInfo:
    """Nothing changed: store what was packed anyway — content stored again because its band
    was lost (`vaultfs.heal`), which heals every version naming it — and record that `latest`
    was verified. `Snapshot.run` then publishes the new bands to the consolidated index."""
    files.drop_empty_band()
    files.close_band(final_extra=None)  # new content no version needs yet (rare)
    uploader.stop(abort=False)
    now_ns = now()
    verified = VersionInfo.from_json({**latest.to_json(), "verified_ns": [*latest.verified_ns, now_ns]})
    with vault.catalog.writer() as w:
        w.put_version(verified)
        _write_files_cache(w, files, [], latest.root, trees, now_ns)
        if left_out is not None:
            w.replace_left_out(files.collection, sorted(left_out))
    return verified


def _write_files_cache(
    w: CatalogWriter, files: FileSaver, deleted: list[bytes], root: TreeId, trees: TreeSaver, now_ns: int
) -> None:
    """The files cache rows of the files read, and their scrub rows: each was re-read and
    hashed now, and its blob is what the version holds (`vaultfs.check.scrub`)."""
    collection = files.collection
    for rel, row in files.cache_rows:
        w.put_file(collection, rel, row)
        w.put_scrub(collection, rel, ScrubRow(now_ns, content_key(row.blob, row.size, row.sparse)))
    for rel in deleted:
        w.delete_file(collection, rel)
        w.delete_scrub(collection, rel)
    if trees.memos_replaced:
        w.replace_dir_memos(collection, root, trees.memo_rows)
