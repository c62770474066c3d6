#!/usr/bin/env bash
# A Debian trixie root filesystem holding podman 5.4 (with runc, conmon,
# catatonit, uidmap), its pasta (passt) and busybox-static, for
# tests/podman5.rs and tests/podman_pasta.rs: trixie's
# podman needs a newer glibc than this machine's Debian 12, so the test
# runs it inside this tree (entered with pivot_root, not chroot). Its
# user nfpodman5 (uid 4750, ids 500000-565535) runs podman.
#
# Usage: trixie-rootfs.sh DIR
# Built once per machine (debian-tree.sh); a change to what goes in
# changes the stamp's name (there and in tests/podman5.rs), so an old
# tree is rebuilt. Exit 2 when the archive cannot be reached.
set -euo pipefail
root=${1:?usage: trixie-rootfs.sh DIR}
stamp=$root/.complete-v2
[ -e "$stamp" ] && exit 0
suite=trixie
. "$(dirname "$0")/debian-mirror.sh"
. "$(dirname "$0")/debian-tree.sh"
build_tree trixie "$root" "$stamp" podman,passt,runc,conmon,catatonit,uidmap,busybox-static \
    nfpodman5 4750 500000
