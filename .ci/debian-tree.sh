# Sourced by the .ci scripts that build a Debian tree for tests whose
# programs need a newer glibc than this machine's Debian 12 (they run
# inside the tree, entered with pivot_root, or by its dynamic loader).
#
# build_tree SUITE ROOT STAMP PACKAGES USER UID FIRST_ID [SCRIPT]
# debootstraps SUITE (with debootstrap's SCRIPT, for a suite it has no
# script of its own for) into ROOT from `$mirror` (debian-mirror.sh),
# with PACKAGES (comma-separated), adds USER (uid and gid UID, home
# /home/USER, a mount point each test binds a fresh directory on) with
# subordinate ids FIRST_ID..+65535 in the tree's own files, and writes
# STAMP (ROOT/.complete-vN, N bumped by the caller whenever PACKAGES
# change, so an old tree is rebuilt) last, so an interrupted build is
# started over.
build_tree() {
    local suite=$1 root=$2 stamp=$3 packages=$4 user=$5 uid=$6 first_id=$7 script=${8:-}
    echo "== debootstrap $suite into $root (from $mirror)"
    local start
    start=$(date +%s)
    # An interrupted debootstrap may have left /proc, /sys or /dev
    # mounted inside: unmount them before removing anything.
    if [ -d "$root" ]; then
        awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo |
            sort -r | xargs -r -n1 umount -l
        rm -rf --one-file-system "$root"
    fi
    mkdir -p "$(dirname "$root")"
    # shellcheck disable=SC2086 # $script is empty or one path
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" $script
    chroot "$root" useradd --uid "$uid" --user-group --home-dir "/home/$user" \
        --create-home --shell /bin/sh "$user"
    echo "$user:$first_id:65536" >"$root/etc/subuid"
    echo "$user:$first_id:65536" >"$root/etc/subgid"
    # No apt caches worth keeping.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    touch "$stamp"
    echo "== $suite tree built in $(( $(date +%s) - start ))s"
}
