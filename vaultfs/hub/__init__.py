"""The hub: other machines back up to this vault over SSH (docs/hub.md).

One program split in two by a small network stack. A snapshot has two halves: the
intake (scan, the files cache, read and hash) and the vault side (which blobs are new,
pack bands, upload, commit). On a hub the client runs the intake and ``vaultfs serve
--stdio`` runs the vault side — the same `vaultfs.snapshot.Snapshot`, fed by the session
instead of a scan — with framed messages between them over SSH's stdin and stdout:

* `protocol` — the frame format and its bounds, defined once;
* `server` — the vault side of one client's session (snapshot, versions, fetch);
* `client` — the intake side: scan, files cache, hashes first, contents on request.
"""
