#!/usr/bin/env bash
# Side by side: a 10 GiB sparse file with 3 x 16 KiB of data, backed up and restored by
# vaultfs, restic and borg (one run, same machine state). Prints wall seconds and the
# restored file's allocated bytes (du). Needs `tools/setup --bench` (restic, borg) and bc.
# restic 0.14 has no sparse restore; borg needs its fixed chunker for --sparse.
set -euo pipefail
W=/tmp/sparse-cmp; rm -rf $W; mkdir -p $W/src/vms
python3 - <<'PY'
import os
with open("/tmp/sparse-cmp/src/vms/disk.img", "wb") as f:
    f.truncate(10 << 30)
    for off in (0, 3 << 30, (10 << 30) - (16 << 10)):
        f.seek(off); f.write(os.urandom(16 << 10))
PY
du --block-size=1 $W/src/vms/disk.img
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VF="$REPO/.venv/bin/python -m vaultfs.cli --config $W/vault.toml"
cat > $W/vault.toml <<TOML
[vault]
store = "file://$W/store"
state_dir = "$W/state"
[collections.vms]
path = "$W/src/vms"
tier = "cold"
TOML
t() { local s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
$VF init >/dev/null
echo "vaultfs snapshot: $(t $VF snapshot) s"
echo "vaultfs restore:  $(t $VF restore fetch vms --to $W/out-vaultfs) s; du $(du --block-size=1 $W/out-vaultfs/disk.img | cut -f1)"
export RESTIC_PASSWORD=x RESTIC_REPOSITORY=$W/restic
restic init >/dev/null
echo "restic backup:    $(t restic backup $W/src/vms) s"
echo "restic restore:   $(t restic restore latest --target $W/out-restic) s; du $(du --block-size=1 $W/out-restic$W/src/vms/disk.img | cut -f1)"
export BORG_PASSPHRASE=x BORG_REPO=$W/borg BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
borg init -e none >/dev/null 2>&1
echo "borg create --sparse (fixed chunker): $(t borg create --sparse --chunker-params fixed,4194304 ::a $W/src/vms) s"
mkdir -p $W/out-borg; cd $W/out-borg
echo "borg extract --sparse: $(t borg extract --sparse ::a) s; du $(du --block-size=1 $W/out-borg$W/src/vms/disk.img | cut -f1)"
cmp <(head -c 16384 $W/src/vms/disk.img) <(head -c 16384 $W/out-vaultfs/disk.img) && echo same-head
