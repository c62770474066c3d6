#!/usr/bin/env bash
# Compare netferry with slirp4netns (and pasta, when installed) on the same
# machine in the same run. Each measurement gets a fresh container
# namespace; tools alternate run by run; the table shows medians and the
# netferry-to-other ratios.
#
#   sudo bash bench/compare.sh [RUNS] [SECONDS]
#
# Everything runs as the unprivileged user nobody (pasta refuses root),
# inside a host network namespace this script creates and deletes, so no
# traffic leaves the machine. Needs: iperf3, slirp4netns, iproute2,
# util-linux, python3; passt (pasta) optional.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
SECS=${2:-5}
PORT=5201
HOSTNS=nfbench$$
USER_ARGS=(--reuid=65534 --regid=65534 --clear-groups --)
RESULTS=$(mktemp)
WORK=$(mktemp -d)
chmod 0777 "$WORK"

cargo build --release --quiet
install -m 0755 target/release/netferry "$WORK/netferry"

tools=(netferry slirp4netns)
command -v pasta >/dev/null && tools+=(pasta)

cleanup() {
    set +e
    pkill -f "sleep 86400 #$HOSTNS" 2>/dev/null
    ip netns pids "$HOSTNS" 2>/dev/null | xargs -r kill 2>/dev/null
    ip netns del "$HOSTNS" 2>/dev/null
    rm -rf "$WORK" "$RESULTS"
}
trap cleanup EXIT

ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up
# Background jobs call ip directly (not through a function) so that $!
# is the process itself: ip, setpriv and unshare all exec in place.
NS=(ip netns exec "$HOSTNS" setpriv "${USER_ARGS[@]}")
"${NS[@]}" iperf3 -s -B 127.0.0.1 -p $PORT >/dev/null 2>&1 &

# start TOOL MTU: make a container namespace, attach TOOL to it; sets
# $holder and $helper.
start() {
    local tool=$1 mtu=$2
    "${NS[@]}" unshare -Urn sh -c "exec sleep 86400 #$HOSTNS" &
    holder=$!
    while [ "$(readlink /proc/$holder/ns/net)" = "$(readlink /proc/self/ns/net)" ] ||
          [ "$(cat /proc/$holder/comm 2>/dev/null)" != sleep ]; do sleep 0.02; done
    case $tool in
    netferry)    "${NS[@]}" "$WORK/netferry" -c --mtu "$mtu" "$holder" tap0 >/dev/null 2>&1 & ;;
    slirp4netns) "${NS[@]}" slirp4netns -c --mtu "$mtu" "$holder" tap0 >/dev/null 2>&1 & ;;
    pasta)       "${NS[@]}" pasta --config-net -m "$mtu" -a 10.0.2.100 -n 24 -g 10.0.2.2 \
                     --map-gw -t none -u none -T none -U none --foreground "$holder" >/dev/null 2>&1 & ;;
    esac
    helper=$!
    local i
    for i in $(seq 200); do
        nsenter -t "$holder" -U -n ip -4 route 2>/dev/null | grep -q default && return 0
        sleep 0.05
    done
    echo "$tool did not come up" >&2
    return 1
}

stop() {
    kill "$helper" "$holder" 2>/dev/null || true
    wait "$helper" "$holder" 2>/dev/null || true
}

# iperf3 from the guest to the gateway (= host loopback); prints Gbit/s.
iperf() {
    nsenter -t "$holder" -U -n iperf3 -c 10.0.2.2 -p $PORT -t "$SECS" -J "$@" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
}

for run in $(seq "$RUNS"); do
    for mtu in 65520 1500; do
        for tool in "${tools[@]}"; do
            start "$tool" "$mtu" || { stop; continue; }
            up=$(iperf) || up=nan
            down=$(iperf -R) || down=nan
            stop
            echo "$tool up$mtu $up" >>"$RESULTS"
            echo "$tool down$mtu $down" >>"$RESULTS"
            echo "run $run: $tool mtu $mtu: up $up down $down Gbit/s" >&2
        done
    done
done

python3 - "$RESULTS" "${tools[@]}" <<'EOF'
import statistics, sys
path, tools = sys.argv[1], sys.argv[2:]
data = {}
for line in open(path):
    tool, metric, value = line.split()
    if value != "nan":
        data.setdefault((tool, metric), []).append(float(value))
metrics = ["up65520", "down65520", "up1500", "down1500"]
med = {k: statistics.median(v) for k, v in data.items()}
head = f"| metric (Gbit/s, median) | " + " | ".join(tools) + " | " + " | ".join(f"netferry/{t}" for t in tools[1:]) + " |"
print(head)
print("|" + "---|" * (1 + len(tools) + len(tools) - 1))
for m in metrics:
    row = [f"{med.get((t, m), float('nan')):.2f}" for t in tools]
    nf = med.get(("netferry", m))
    ratios = []
    for t in tools[1:]:
        o = med.get((t, m))
        ratios.append(f"{nf / o:.2f}x" if nf and o else "n/a")
    print(f"| {m} | " + " | ".join(row) + " | " + " | ".join(ratios) + " |")
EOF
