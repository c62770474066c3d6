#!/usr/bin/env bash
# A Debian forky root filesystem holding podman 5.8 (whose pasta command
# line is Podman 6's), pasta (passt), slirp4netns, netavark with
# aardvark-dns and nftables (rootless bridge networks), runc, conmon,
# catatonit, uidmap and busybox-static, for the pasta-mode tests and the
# benchmark's pasta rows: forky's programs need a newer glibc than this
# machine's Debian 12, so they run inside this tree (entered with
# pivot_root, not chroot).
#
# Usage: forky-rootfs.sh DIR
# Built once per machine: the stamp is written last, so an interrupted
# build is started over; a change to what goes in changes the stamp's
# name, so an old tree is rebuilt. The mirror is the one this machine's
# apt already uses. debootstrap on Debian 12 has no forky script: forky
# is built with sid's, which is the same. Exit 2 when the archive cannot
# be reached. Run by .ci/run.
set -euo pipefail
root=${1:?usage: forky-rootfs.sh DIR}
stamp=$root/.complete-v1
[ -e "$stamp" ] && exit 0

suite=forky
. "$(dirname "$0")/debian-mirror.sh"

packages=podman,passt,slirp4netns,netavark,aardvark-dns,nftables,runc,conmon,catatonit,uidmap,busybox-static,iproute2
echo "== debootstrap forky into $root (from $mirror)"
start=$(date +%s)
if [ -d "$root" ]; then
    awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | xargs -r -n1 umount -l
    rm -rf --one-file-system "$root"
fi
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase --include="$packages" forky "$root" "$mirror" \
    /usr/share/debootstrap/scripts/sid
chroot "$root" useradd --uid 4760 --user-group --home-dir /home/nfpodman6 \
    --create-home --shell /bin/sh nfpodman6
echo "nfpodman6:600000:65536" >"$root/etc/subuid"
echo "nfpodman6:600000:65536" >"$root/etc/subgid"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
touch "$stamp"
echo "== forky rootfs built in $(( $(date +%s) - start ))s"
