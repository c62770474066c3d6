#!/usr/bin/env bash
# rootlesskit 2 (Debian trixie's) for tests/rootlesskit2.rs: Debian 12
# ships rootlesskit 1.1, and rootlesskit 2 is a static Go binary that runs
# here unchanged, so its package is fetched and unpacked, not installed.
#
# Usage: rootlesskit2.sh DIR   (the binary ends up in DIR/usr/bin)
# Done once per machine (a stamp is written last). The mirror is the one
# this machine's apt already uses; apt runs with a private configuration
# and state, so the machine's own package lists are untouched. Exit 2
# when the archive cannot be reached.
set -euo pipefail
root=${1:?usage: rootlesskit2.sh DIR}
stamp=$root/.complete-v1
[ -e "$stamp" ] && exit 0

. "$(dirname "$0")/debian-mirror.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
          -o Dir::State::Status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
echo "== fetching rootlesskit from trixie"
apt-get "${apt_opts[@]}" update -q >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download rootlesskit >/dev/null)
rm -rf "$root"
mkdir -p "$root"
dpkg-deb -x "$work"/rootlesskit_*.deb "$root"
"$root/usr/bin/rootlesskit" --version
touch "$stamp"
