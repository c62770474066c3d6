#!/usr/bin/env bash
# A Debian forky root filesystem holding podman 5.8 (whose pasta command
# line is Podman 6's), pasta (passt), slirp4netns, netavark with
# aardvark-dns and nftables (rootless bridge networks), runc, conmon,
# catatonit, uidmap, iproute2 and busybox-static: the real pasta that
# tests/pasta.rs runs in netferry's place (by this tree's dynamic
# loader), and the callers for the pasta-mode tests to come. Its user
# nfpodman6 (uid 4760, ids 600000-665535) is for podman.
#
# Usage: forky-rootfs.sh DIR
# Built once per machine (debian-tree.sh) by .ci/run. Debian 12's
# debootstrap has no forky script: sid's builds it. Exit 2 when the
# archive cannot be reached.
set -euo pipefail
root=${1:?usage: forky-rootfs.sh DIR}
stamp=$root/.complete-v1
[ -e "$stamp" ] && exit 0
suite=forky
. "$(dirname "$0")/debian-mirror.sh"
. "$(dirname "$0")/debian-tree.sh"
build_tree forky "$root" "$stamp" \
    podman,passt,slirp4netns,netavark,aardvark-dns,nftables,runc,conmon,catatonit,uidmap,busybox-static,iproute2 \
    nfpodman6 4760 600000 /usr/share/debootstrap/scripts/sid
