#!/usr/bin/env bash
# Compare netferry with slirp4netns and pasta on the same machine in the
# same run: each measurement gets a fresh container namespace, tools take
# turns run by run, and the table shows medians and netferry-to-other
# ratios.
#
#   sudo bash bench/compare.sh [RUNS] [SECONDS]
#
# ONLY=throughput|forward|udp|small|density limits a run to one group of
# measurements (small: memory, latency and connection rate; density: the
# memory of DENSITY idle instances at once, 100 unless set).
#
# Everything runs as the unprivileged user nobody (pasta refuses root),
# inside a host network namespace this script creates and deletes; its
# only other link is a veth to an empty sink namespace (pasta wants a
# routable interface to copy), so no traffic leaves the machine.
# Installs what it needs from Debian when missing: iperf3, sockperf,
# slirp4netns, passt (pasta), iproute2, util-linux, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
SECS=${2:-5}
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }
HOSTNS=nfbench$$
SINKNS=nfsink$$
USER_ARGS=(--reuid=65534 --regid=65534 --clear-groups --)
IPERF_PORT=5201       # iperf3 on the host's loopback
IPERF6_PORT=5202      # iperf3 on the host's ::1
FWD_PORT=15201        # host port forwarded to iperf3 in the guest
LAT_PORT=11111        # sockperf on the host's loopback
CONN_PORT=12000       # connrate on the host's loopback
HOLD_PORT=12001       # accepts and holds idle connections on the host's loopback
IDLE=${IDLE:-1000 5000} # idle connections open beside a transfer, round trip and connection rate (each count in turn)
DENSITY=${DENSITY:-100} # idle instances at once, each with its own namespace
RESULTS=$(mktemp)
WORK=$(mktemp -d)
chmod 0777 "$WORK"

# Install what is missing (Debian), so the script runs on a fresh machine.
missing=()
for p in iperf3 sockperf slirp4netns passt iproute2 util-linux python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Two builds: built together, the example's dev-dependencies would turn on
# netferry's `test-support` feature in the binary measured here too.
cargo build --release --quiet --bin netferry
cargo build --release --quiet --example connrate
install -m 0755 target/release/netferry "$WORK/netferry"
install -m 0755 target/release/examples/connrate "$WORK/connrate"

tools=(netferry slirp4netns)
command -v pasta >/dev/null && tools+=(pasta)

cleanup() {
    set +e
    for ns in "$HOSTNS" "$SINKNS"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
    pkill -9 -f "sleep 86400 #$HOSTNS" 2>/dev/null
    ip netns del "$HOSTNS" 2>/dev/null
    ip netns del "$SINKNS" 2>/dev/null
    rm -rf "$WORK" "$RESULTS"
}
trap cleanup EXIT

ip netns add "$HOSTNS"
ip netns add "$SINKNS"
ip -n "$HOSTNS" link set lo up
ip link add "vb$$" type veth peer name "vs$$"
ip link set "vb$$" netns "$HOSTNS"
ip link set "vs$$" netns "$SINKNS"
ip -n "$HOSTNS" addr add 198.51.100.1/24 dev "vb$$"
ip -n "$SINKNS" addr add 198.51.100.2/24 dev "vs$$"
ip -n "$HOSTNS" link set "vb$$" up
ip -n "$SINKNS" link set "vs$$" up
ip -n "$HOSTNS" route add default via 198.51.100.2

# Background jobs call ip directly (not through a function) so that $!
# is the process itself: ip, setpriv and unshare all exec in place.
NS=(ip netns exec "$HOSTNS" setpriv "${USER_ARGS[@]}")
# The servers live as long as the host namespace (cleanup kills what is
# in it); started from subshells so the shell does not report their end.
("${NS[@]}" iperf3 -s -B 127.0.0.1 -p $IPERF_PORT >/dev/null 2>&1 &)
("${NS[@]}" iperf3 -s -B ::1 -p $IPERF6_PORT >/dev/null 2>&1 &)
("${NS[@]}" sockperf sr --tcp -i 127.0.0.1 -p $LAT_PORT >/dev/null 2>&1 &)
("${NS[@]}" "$WORK/connrate" serve 127.0.0.1:$CONN_PORT >/dev/null 2>&1 &)
("${NS[@]}" /usr/bin/python3 -c "
import resource, socket
# Unprivileged: the soft limit may rise to the hard one, no further.
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $HOLD_PORT)); s.listen(4096)
# Hold each connection until its guest end closes, then let it go: a run
# opens tens of thousands over its measurements.
import selectors
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            sel.register(s.accept()[0], selectors.EVENT_READ)
            continue
        try:
            gone = not key.fileobj.recv(1)
        except OSError:
            gone = True
        if gone:
            sel.unregister(key.fileobj)
            key.fileobj.close()
" >/dev/null 2>&1 &)
sleep 0.5

in_guest() { nsenter -t "$holder" -U -n "$@"; }

# start TOOL MTU [6]: a fresh container namespace with TOOL attached (and
# IPv6 on, waiting for the guest's SLAAC default route, with 6); sets
# $holder and $helper (the tool's pid).
start() {
    launch "$@" && await_up "$1" "${3:-}"
}

# launch TOOL MTU [6]: start's first half, without waiting for the guest's
# route. pasta forwards $pasta_t (a port unless the caller sets none).
launch() {
    local tool=$1 mtu=$2 v6=${3:-}
    local six=()
    [ -n "$v6" ] && six=(--enable-ipv6)
    "${NS[@]}" unshare -Urn sh -c "exec sleep 86400 #$HOSTNS" &
    holder=$!
    while [ "$(readlink /proc/$holder/ns/net)" = "$(readlink /proc/self/ns/net)" ] ||
          [ "$(cat /proc/$holder/comm 2>/dev/null)" != sleep ]; do sleep 0.02; done
    api="$WORK/api-$holder.sock"
    case $tool in
    netferry)    "${NS[@]}" "$WORK/netferry" -c "${six[@]}" --mtu "$mtu" -a "$api" "$holder" tap0 >/dev/null 2>&1 & ;;
    slirp4netns) "${NS[@]}" slirp4netns -c "${six[@]}" --mtu "$mtu" -a "$api" "$holder" tap0 >/dev/null 2>&1 & ;;
    pasta)       "${NS[@]}" pasta --config-net -m "$mtu" -a 10.0.2.100 -n 24 -g 10.0.2.2 \
                     -t "${pasta_t:-$FWD_PORT:$IPERF_PORT}" -u none -T none -U none --foreground "$holder" >/dev/null 2>&1 & ;;
    esac
    helper=$!
}

# await_up TOOL [6]: wait for $holder's guest to have its default route.
await_up() {
    local tool=$1 v6=${2:-} i
    local family=-4
    [ -n "$v6" ] && family=-6
    for i in $(seq 300); do
        # With IPv6, also wait out duplicate address detection: a
        # tentative address cannot be connected from.
        if in_guest ip $family route 2>/dev/null | grep -q default &&
           { [ -z "$v6" ] || ! in_guest ip -6 addr show scope global 2>/dev/null | grep -q tentative; }; then
            sleep 0.2
            return 0
        fi
        sleep 0.05
    done
    echo "$tool did not come up" >&2
    return 1
}

stop() {
    kill "$helper" "$holder" 2>/dev/null || true
    wait "$helper" "$holder" 2>/dev/null || true
}

# density TOOL: $DENSITY idle instances at once, each serving its own
# container namespace; once all are up and settled, records the PSS and
# RSS per instance (each tool's processes, children included, from
# /proc/PID/smaps_rollup) and the total PSS. PSS splits each shared page
# among the processes that map it, so it is what N instances really cost.
density() {
    local tool=$1 i up=0 pasta_t=none
    local helpers=() holders=()
    for i in $(seq "$DENSITY"); do
        launch "$tool" 65520
        helpers+=("$helper")
        holders+=("$holder")
    done
    for i in "${!holders[@]}"; do
        holder=${holders[$i]}
        await_up "$tool" && up=$((up + 1))
    done
    sleep 2
    if [ "$up" = "$DENSITY" ]; then
        python3 - "${helpers[@]}" >"$WORK/density.out" <<'EOF'
import os, sys
def tree(pid):
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in open(f"/proc/{pid}/task/{task}/children").read().split():
                pids += tree(child)
    except OSError:
        pass
    return pids
total = {"Pss:": 0, "Rss:": 0}
for helper in sys.argv[1:]:
    for pid in tree(helper):
        for line in open(f"/proc/{pid}/smaps_rollup"):
            f = line.split()
            if f[0] in total:
                total[f[0]] += int(f[1])
n = len(sys.argv) - 1
print(total["Pss:"] / n, total["Rss:"] / n, total["Pss:"] / 1024)
EOF
        read -r pss rss total <"$WORK/density.out"
        record "$tool" density_pss_kB "$pss"
        record "$tool" density_rss_kB "$rss"
        record "$tool" density_total_MB "$total"
    else
        echo "$tool: only $up of $DENSITY instances came up" >&2
    fi
    kill "${helpers[@]}" "${holders[@]}" 2>/dev/null || true
    wait "${helpers[@]}" "${holders[@]}" 2>/dev/null || true
}

rss_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$helper/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$helper/stat"; }
TICKS=$(getconf CLK_TCK)

record() { echo "$1 $2 $3" >>"$RESULTS"; }

# iperf3 from the guest to the gateway (= host loopback) or, with
# "forward", from the host to the guest through a forwarded port. Records
# Gbit/s and the helper's CPU seconds per GB moved.
iperf() {
    local tool=$1 name=$2; shift 2
    local t0 json gbps bytes t1
    t0=$(cpu_ticks)
    if [ "$name" = forward ]; then
        json=$(ip netns exec "$HOSTNS" iperf3 -c 127.0.0.1 -p $FWD_PORT -t "$SECS" -J) || return 0
    else
        local dst=10.0.2.2 port=$IPERF_PORT
        [ "$name" = up6 ] && { dst=fd00::2; port=$IPERF6_PORT; }
        json=$(in_guest iperf3 -c $dst -p $port -t "$SECS" -J "$@") || return 0
    fi
    t1=$(cpu_ticks)
    # A failed run (iperf3 reports an error instead of a sum) is left out.
    read -r gbps bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"]/1e9, e["bytes"])' <<<"$json" 2>/dev/null) || true
    [ -n "${gbps:-}" ] && [ -n "${bytes:-}" ] || return 0
    record "$tool" "$name" "$gbps"
    record "$tool" "cpu_s_per_GB_$name" "$(python3 -c "print(($t1-$t0)/$TICKS/($bytes/1e9))")"
}

# iperf3 UDP at an unlimited rate between the guest and the gateway (=
# host loopback): NAME up sends guest->host; down uses -R, so the host's
# server sends into the flow the guest opened (the one path all three
# tools carry: no forward needed). LEN is the payload per datagram.
# Records what the receiver got: Gbit/s, datagrams/s and the loss %.
iperf_udp() {
    local tool=$1 name=$2 len=$3; shift 3
    local json gbps pps loss
    json=$(in_guest iperf3 -c 10.0.2.2 -p $IPERF_PORT -u -b 0 -l "$len" -t "$SECS" -J "$@") || return 0
    # Up, the client sends: end.sum holds its packet count and the loss
    # the server reported back. Down (-R), the client receives: its own
    # intervals count what arrived (packets expected - lost), which stays
    # honest even when nothing arrives (end.sum then shows no loss).
    read -r gbps pps loss < <(python3 -c '
import json, sys
j = json.load(sys.stdin)
s = j["end"]["sum"]
if j["start"]["test_start"]["reverse"]:
    got = sum(i["sum"]["packets"] - i["sum"]["lost_packets"] for i in j["intervals"])
else:
    got = s["packets"] - s["lost_packets"]
print(got * int(sys.argv[1]) * 8 / s["seconds"] / 1e9, got / s["seconds"], 100 * (1 - got / s["packets"]))' "$len" <<<"$json" 2>/dev/null) || true
    [ -n "${gbps:-}" ] && [ -n "${pps:-}" ] || return 0
    record "$tool" "udp_${name}_gbps" "$gbps"
    record "$tool" "udp_${name}_kpps" "$(python3 -c "print($pps/1e3)")"
    record "$tool" "udp_${name}_loss" "$loss"
}

add_forward() {
    [ "$1" = pasta ] && return 0
    python3 - "$api" <<EOF
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":$FWD_PORT,"guest_port":$IPERF_PORT}}')
s.shutdown(socket.SHUT_WR)
reply = s.recv(4096)
assert b"return" in reply, reply
EOF
}

for run in $(seq "$RUNS"); do
    for tool in "${tools[@]}"; do
        # Throughput both ways at both MTUs.
        want throughput && for mtu in 65520 1500; do
            start "$tool" "$mtu" || { stop; continue; }
            iperf "$tool" "up$mtu"
            iperf "$tool" "down$mtu" -R
            stop
        done
        # The same transfer with idle connections open beside it (each
        # count in $IDLE): the cost of a flow must not grow with the
        # number of flows.
        for idle in $IDLE; do
            want throughput && start "$tool" 65520 || break
            in_guest /usr/bin/python3 -c "
import resource, socket, time
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
held = [socket.create_connection(('10.0.2.2', $HOLD_PORT)) for _ in range($idle)]
print('open', flush=True); time.sleep(3600)
" >"$WORK/idle.out" 2>/dev/null &
            opener=$!
            for i in $(seq 600); do grep -q open "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
            if grep -q open "$WORK/idle.out" 2>/dev/null; then
                iperf "$tool" "up_idle$idle"
                lat=$(in_guest sockperf pp --tcp -i 10.0.2.2 -p $LAT_PORT -t "$SECS" 2>&1 |
                      sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p')
                [ -n "$lat" ] && record "$tool" "latency_idle${idle}_us" "$lat"
                conns=$(in_guest "$WORK/connrate" run 10.0.2.2:$CONN_PORT "$SECS") &&
                    record "$tool" "conn_per_s_idle$idle" "$conns"
            fi
            kill $opener 2>/dev/null || true
            wait $opener 2>/dev/null || true
            pkill -f "for _ in range($idle)" 2>/dev/null || true
            rm -f "$WORK/idle.out"
            stop
        done
        # IPv6, guest to host through fd00::2 (pasta has no host IPv6
        # address to copy here).
        if want throughput && [ "$tool" != pasta ] && start "$tool" 65520 6; then
            iperf "$tool" up6
            stop
        fi
        # Through a port forward: host client, iperf3 server in the guest.
        if want forward && start "$tool" 65520; then
            in_guest iperf3 -s -p $IPERF_PORT >/dev/null 2>&1 &
            guest_iperf=$!
            sleep 0.3
            if add_forward "$tool"; then iperf "$tool" forward; fi
            kill $guest_iperf 2>/dev/null; wait $guest_iperf 2>/dev/null || true
            stop
        fi
        # UDP both ways: large datagrams for throughput, 64-byte ones (as
        # DNS and QUIC acks produce) for the datagram rate.
        if want udp && start "$tool" 65520; then
            iperf_udp "$tool" up1400 1400
            iperf_udp "$tool" down1400 1400 -R
            iperf_udp "$tool" up64 64
            iperf_udp "$tool" down64 64 -R
            stop
        fi
        # Many idle instances at once: what a host of containers pays.
        want density && density "$tool"
        # Idle memory, latency, connection rate, then peak memory.
        want small || continue
        start "$tool" 65520 || { stop; continue; }
        sleep 1
        record "$tool" idle_rss_MB "$(python3 -c "print($(rss_kb VmRSS)/1024)")"
        # The median round trip: the mean that sockperf leads with is
        # dragged around by the odd scheduling hiccup of a busy VM.
        lat=$(in_guest sockperf pp --tcp -i 10.0.2.2 -p $LAT_PORT -t "$SECS" 2>&1 |
              sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p')
        [ -n "$lat" ] && record "$tool" latency_us "$lat"
        conns=$(in_guest "$WORK/connrate" run 10.0.2.2:$CONN_PORT "$SECS") && record "$tool" conn_per_s "$conns"
        record "$tool" peak_rss_MB "$(python3 -c "print($(rss_kb VmHWM)/1024)")"
        stop
        echo "run $run: $tool done" >&2
    done
done

echo
echo "$(nproc) cores, $(uname -r), $RUNS runs of ${SECS}s, medians:"
IDLE="$IDLE" DENSITY=$DENSITY python3 - "$RESULTS" "${tools[@]}" <<'EOF'
import os, statistics, sys
path, tools = sys.argv[1], sys.argv[2:]
n = os.environ["DENSITY"]
idle = [int(c) for c in os.environ["IDLE"].split()]
data = {}
for line in open(path):
    tool, metric, value = line.split()
    data.setdefault((tool, metric), []).append(float(value))
rows = [
    ("up65520", "guest→host Gbit/s, MTU 65520", True),
    ("down65520", "host→guest Gbit/s, MTU 65520", True),
    ("up1500", "guest→host Gbit/s, MTU 1500", True),
    ("down1500", "host→guest Gbit/s, MTU 1500", True),
    ("up6", "guest→host Gbit/s over IPv6 (fd00::2), MTU 65520", True),
    *[(f"up_idle{c}", f"guest→host Gbit/s, MTU 65520, beside {c:,} idle connections", True) for c in idle],
    ("forward", "host→guest Gbit/s via port forward", True),
    ("udp_up1400_gbps", "UDP guest→host Gbit/s received, 1400-byte datagrams", True),
    ("udp_down1400_gbps", "UDP host→guest Gbit/s received, 1400-byte datagrams", True),
    ("udp_up1400_loss", "UDP guest→host loss %, 1400-byte datagrams (sender unpaced)", False),
    ("udp_down1400_loss", "UDP host→guest loss %, 1400-byte datagrams (sender unpaced)", False),
    ("udp_up64_kpps", "UDP guest→host k datagrams/s received, 64 bytes", True),
    ("udp_down64_kpps", "UDP host→guest k datagrams/s received, 64 bytes", True),
    ("latency_us", "TCP round trip µs, median (lower is better)", False),
    *[(f"latency_idle{c}_us", f"TCP round trip µs beside {c:,} idle connections (lower is better)", False) for c in idle],
    ("conn_per_s", "connections/s", True),
    *[(f"conn_per_s_idle{c}", f"connections/s beside {c:,} idle connections", True) for c in idle],
    ("idle_rss_MB", "idle RSS MB (lower is better)", False),
    ("peak_rss_MB", "peak RSS MB (lower is better)", False),
    ("density_pss_kB", f"idle PSS per instance kB, {n} instances (lower is better)", False),
    ("density_rss_kB", f"idle RSS per instance kB, {n} instances (lower is better)", False),
    ("density_total_MB", f"total PSS MB for {n} instances (lower is better)", False),
    ("cpu_s_per_GB_up65520", "CPU s/GB guest→host 65520 (lower is better)", False),
    ("cpu_s_per_GB_down65520", "CPU s/GB host→guest 65520 (lower is better)", False),
]
others = tools[1:]
print("| metric | " + " | ".join(tools) + " | " + " | ".join(f"netferry/{t}" for t in others) + " |")
print("|---" * (1 + len(tools) + len(others)) + "|")
for key, label, _ in rows:
    med = {t: statistics.median(data[(t, key)]) for t in tools if (t, key) in data}
    if not med:
        continue
    cells = [f"{med[t]:.2f}" if t in med else "n/a" for t in tools]
    nf = med.get("netferry")
    ratios = [f"{nf / med[t]:.2f}x" if nf is not None and med.get(t) else "n/a" for t in others]
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
EOF
