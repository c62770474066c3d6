#!/usr/bin/env bash
# Build netferry and run it for a fresh network namespace, as a newcomer's
# first look: the namespace gets tap0 with 10.0.2.100, pings the gateway
# and takes a DHCP lease. Everything stays inside the namespace; it cleans
# up after itself. Needs: cargo, util-linux (unshare, nsenter), iproute2,
# busybox (installed when missing and run as root); and a /dev/net/tun you
# can open.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v busybox >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static
    else
        echo "try.sh needs busybox (apt-get install busybox-static)" >&2
        exit 1
    fi
fi
cargo build --release
# Wherever cargo put it (CARGO_TARGET_DIR moves it).
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/netferry"

unshare -Urn sleep infinity &
holder=$!
trap 'kill $netferry $holder 2>/dev/null || true' EXIT
# Wait until unshare has made the namespace (its net ns differs from ours).
while [ "$(readlink /proc/$holder/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done

"$bin" -c "$holder" tap0 &
netferry=$!
in_ns() { nsenter -t "$holder" -U -n -- "$@"; }
for _ in $(seq 200); do
    in_ns ip -4 addr show tap0 2>/dev/null | grep -q 10.0.2.100 && break
    if ! kill -0 "$netferry" 2>/dev/null; then
        echo "netferry exited before tap0 was up; its error is above" >&2
        exit 1
    fi
    sleep 0.05
done
in_ns ip -4 addr show tap0 2>/dev/null | grep -q 10.0.2.100 || { echo "tap0 never came up" >&2; exit 1; }

echo "== inside the namespace"
in_ns ip addr show tap0
in_ns ip route
echo "== ping the gateway (10.0.2.2) and the DNS address (10.0.2.3)"
in_ns busybox ping -c 2 10.0.2.2
in_ns busybox ping -c 1 10.0.2.3
echo "== DHCP: the first lease is 10.0.2.15"
in_ns ip addr flush dev tap0
in_ns busybox udhcpc -i tap0 -f -q -n -s /bin/true
