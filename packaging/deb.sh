#!/usr/bin/env bash
# Build a Debian package of netferry from this tree with dpkg-deb alone
# (no cargo-deb: nothing to install beyond what every Debian system has).
#
#   packaging/deb.sh [OUT_DIR]          # default OUT_DIR: target/debian
#   NETFERRY_BIN=path packaging/deb.sh  # package this binary instead of
#                                       # building target/release/netferry
#
# The package installs /usr/bin/netferry, the man pages, the docs, and
# /usr/lib/netferry/{pasta,slirp4netns}: links to /usr/bin/netferry in a
# helper directory of their own, never in /usr/bin, so Debian's passt and
# slirp4netns packages stay as they are. `netferry setup podman --system`
# then points podman at /usr/lib/netferry.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-target/debian}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
bin=${NETFERRY_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked
    bin=target/release/netferry
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/netferry_${version}_$arch

install -D -m 0755 "$bin" "$root/usr/bin/netferry"
strip --strip-unneeded "$root/usr/bin/netferry" 2>/dev/null || true
# Relative links, as Debian policy asks within /usr; they also resolve
# in a tree unpacked anywhere.
install -d -m 0755 "$root/usr/lib/netferry"
for name in pasta slirp4netns; do
    ln -s ../../bin/netferry "$root/usr/lib/netferry/$name"
done
install -d -m 0755 "$root/usr/share/man/man1"
for page in man/*.1; do
    gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
doc=$root/usr/share/doc/netferry
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 -t "$doc/docs" docs/*.md
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: netferry"
    echo
    echo "Files: *"
    echo "License: Apache-2.0"
    echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
} > "$doc/copyright"
chmod 0644 "$doc/copyright"

install -d -m 0755 "$root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: netferry
Version: $version
Architecture: $arch
Maintainer: netferry developers <netferry@localhost>
Installed-Size: $installed_size
Depends: libc6
Recommends: uidmap
Suggests: podman, rootlesskit
Section: net
Priority: optional
Description: rootless user-mode networking for containers
 A fast drop-in replacement for slirp4netns and pasta: it joins a
 container's network namespace, opens a tap there and carries the
 container's traffic through ordinary sockets of the user who runs it.
 .
 /usr/lib/netferry holds pasta and slirp4netns links to netferry, for
 podman's helper_binaries_dir ("netferry setup podman --system"); the
 distribution's own passt and slirp4netns are left in place.
EOF

mkdir -p "$out"
deb=$out/netferry_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
