#!/usr/bin/env bash
# A Debian trixie root filesystem holding podman 5 (with runc, conmon,
# catatonit, uidmap) and busybox-static, for tests/podman5.rs: trixie's
# podman needs a newer glibc than this machine's Debian 12, so the test
# runs it inside this tree (entered with pivot_root, not chroot).
#
# Usage: trixie-rootfs.sh DIR
# Built once per machine: the stamp is written last, so an interrupted
# build is started over; a change to what goes in changes the stamp's
# name (here and in tests/podman5.rs), so an old tree is rebuilt. The
# mirror is the one this machine's apt already uses. Exit 2 when the
# archive cannot be reached.
set -euo pipefail
root=${1:?usage: trixie-rootfs.sh DIR}
stamp=$root/.complete-v1
[ -e "$stamp" ] && exit 0

. "$(dirname "$0")/debian-mirror.sh"

packages=podman,runc,conmon,catatonit,uidmap,busybox-static
echo "== debootstrap trixie into $root (from $mirror)"
start=$(date +%s)
# An interrupted debootstrap may have left /proc, /sys or /dev mounted
# inside: unmount them before removing anything.
if [ -d "$root" ]; then
    awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo |
        sort -r | xargs -r -n1 umount -l
    rm -rf --one-file-system "$root"
fi
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase --include="$packages" trixie "$root" "$mirror"
# The unprivileged user podman runs as, with subordinate ids of its own
# (newuidmap reads this tree's /etc/subuid once the test has entered it).
# Its home is a mount point: each test binds a fresh directory there.
chroot "$root" useradd --uid 4750 --user-group --home-dir /home/nfpodman5 \
    --create-home --shell /bin/sh nfpodman5
echo "nfpodman5:500000:65536" >"$root/etc/subuid"
echo "nfpodman5:500000:65536" >"$root/etc/subgid"
# No apt caches worth keeping.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
touch "$stamp"
echo "== trixie rootfs built in $(( $(date +%s) - start ))s"
