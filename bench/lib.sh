# Shared by bench/compare.sh (slirp4netns mode) and bench/pasta.sh (pasta
# mode): what to install, the host and sink namespaces, the servers on the
# host's side, and recording and parsing results. Sourced, not run.
#
# The host namespace (HOSTNS) has 198.51.100.1/24 on a veth to an empty
# sink namespace (SINKNS, 198.51.100.2) and a default route through it:
# pasta wants a routable interface to copy, and nothing can leave the
# machine. Everything runs as the unprivileged user nobody (pasta refuses
# root).

# want GROUP: whether ONLY (unset: every group) lets GROUP run.
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

HOSTNS=nfbench$$
SINKNS=nfsink$$
USER_ARGS=(--reuid=65534 --regid=65534 --clear-groups --)
IPERF_PORT=5201       # iperf3 on the host's loopback
IPERF6_PORT=5202      # iperf3 on the host's ::1
LAT_PORT=11111        # sockperf on the host's loopback
CONN_PORT=12000       # connrate on the host's loopback
HOLD_PORT=12001       # accepts and holds idle connections on the host's loopback
RESULTS=$(mktemp)
WORK=$(mktemp -d)
chmod 0777 "$WORK"
TICKS=$(getconf CLK_TCK)
# Background jobs call ip directly (not through a function) so that $!
# is the process itself: ip, setpriv and unshare all exec in place.
NS=(ip netns exec "$HOSTNS" setpriv "${USER_ARGS[@]}")

# install_missing PKG...: install what is missing (Debian), so a script
# runs on a fresh machine.
install_missing() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
}

# build_netferry: netferry and the connection-rate probe, release, into
# $WORK. Two builds: built together, the example's dev-dependencies would
# turn on netferry's `test-support` feature in the binary measured too.
build_netferry() {
    cargo build --release --quiet --bin netferry
    cargo build --release --quiet --example connrate
    install -m 0755 target/release/netferry "$WORK/netferry"
    install -m 0755 target/release/examples/connrate "$WORK/connrate"
}

cleanup() {
    set +e
    for ns in "$HOSTNS" "$SINKNS"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
    [ -f "$WORK/holders" ] && xargs -r kill -9 <"$WORK/holders" 2>/dev/null
    ip netns del "$HOSTNS" 2>/dev/null
    ip netns del "$SINKNS" 2>/dev/null
    rm -rf "$WORK" "$RESULTS"
}

# make_namespaces: the host and sink namespaces, removed on exit.
make_namespaces() {
    trap cleanup EXIT
    ip netns add "$HOSTNS"
    ip netns add "$SINKNS"
    ip -n "$HOSTNS" link set lo up
    ip -n "$SINKNS" link set lo up
    ip link add "vb$$" type veth peer name "vs$$"
    ip link set "vb$$" netns "$HOSTNS"
    ip link set "vs$$" netns "$SINKNS"
    ip -n "$HOSTNS" addr add 198.51.100.1/24 dev "vb$$"
    ip -n "$SINKNS" addr add 198.51.100.2/24 dev "vs$$"
    ip -n "$HOSTNS" link set "vb$$" up
    ip -n "$SINKNS" link set "vs$$" up
    ip -n "$HOSTNS" route add default via 198.51.100.2
}

# start_servers: iperf3 on 127.0.0.1 and ::1, sockperf, connrate and the
# idle-connection holder on the host's loopback. They live as long as the
# host namespace (cleanup kills what is in it); started from subshells so
# the shell does not report their end.
start_servers() {
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
}

# hold PID: a namespace holder to kill on exit, whatever else happens.
hold() { echo "$1" >>"$WORK/holders"; }

in_guest() { nsenter -t "$holder" -U -n "$@"; }

rss_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$helper/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$helper/stat"; }

record() { echo "$1 $2 $3" >>"$RESULTS"; }

# record_tcp TOOL NAME JSON T0 T1: an iperf3 TCP result (Gbit/s received)
# and the helper's CPU seconds per GB moved, from CPU ticks T0 to T1. A
# failed run (iperf3 reports an error instead of a sum) is left out.
record_tcp() {
    local tool=$1 name=$2 json=$3 t0=$4 t1=$5 gbps bytes
    read -r gbps bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; print(e["bits_per_second"]/1e9, e["bytes"])' <<<"$json" 2>/dev/null) || true
    [ -n "${gbps:-}" ] && [ -n "${bytes:-}" ] || return 0
    record "$tool" "$name" "$gbps"
    record "$tool" "cpu_s_per_GB_$name" "$(python3 -c "print(($t1-$t0)/$TICKS/($bytes/1e9))")"
}

# timed_tcp TOOL NAME COMMAND...: run the iperf3 TCP client COMMAND (with
# -J) and record its result and the helper's CPU ticks meanwhile.
timed_tcp() {
    local tool=$1 name=$2 t0 t1 json; shift 2
    t0=$(cpu_ticks)
    json=$("$@") || return 0
    t1=$(cpu_ticks)
    record_tcp "$tool" "$name" "$json" "$t0" "$t1"
}

# guest_udp TOOL NAME LEN DST [iperf3 args]: iperf3 UDP at an unlimited
# rate from the guest to DST:$IPERF_PORT, LEN bytes a datagram, recorded.
guest_udp() {
    local tool=$1 name=$2 len=$3 dst=$4 json; shift 4
    json=$(in_guest iperf3 -c "$dst" -p "$IPERF_PORT" -u -b 0 -l "$len" -t "$SECS" -J "$@") || return 0
    record_udp "$tool" "$name" "$len" "$json"
}

# udp_both_ways TOOL: the script's iperf_udp up and down (-R), with
# 1400-byte datagrams for throughput and 64-byte ones (as DNS and QUIC
# acks produce) for the datagram rate.
udp_both_ways() {
    iperf_udp "$1" up1400 1400
    iperf_udp "$1" down1400 1400 -R
    iperf_udp "$1" up64 64
    iperf_udp "$1" down64 64 -R
}

# record_udp TOOL NAME LEN JSON: what the receiver of an iperf3 UDP run
# got: Gbit/s, k datagrams/s and the loss %. Up, the client sends: end.sum
# holds its packet count and the loss the server reported back. Down (-R),
# the client receives: its own intervals count what arrived (packets
# expected - lost), which stays honest even when nothing arrives (end.sum
# then shows no loss).
record_udp() {
    local tool=$1 name=$2 len=$3 json=$4 gbps pps loss
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

# round_trip ADDR: sockperf's median TCP round trip (µs) from the guest to
# ADDR:$LAT_PORT; the mean it leads with is dragged around by the odd
# scheduling hiccup of a busy VM.
round_trip() {
    in_guest sockperf pp --tcp -i "$1" -p $LAT_PORT -t "$SECS" 2>&1 |
        sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p'
}

# pss_per_instance PID...: prints "PSS-kB RSS-kB total-PSS-MB" per
# instance over the given processes and their children, from
# /proc/PID/smaps_rollup. PSS splits each shared page among the processes
# that map it, so it is what N instances really cost.
pss_per_instance() {
    python3 - "$@" <<'PY'
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
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                f = line.split()
                if f[0] in total:
                    total[f[0]] += int(f[1])
        except OSError:
            pass
n = len(sys.argv) - 1
print(total["Pss:"] / n, total["Rss:"] / n, total["Pss:"] / 1024)
PY
}

# print_table ROWS TOOL...: medians per tool for each row of the file
# ROWS (lines "key<TAB>label"), and netferry's ratio to each other tool.
print_table() {
    python3 - "$RESULTS" "$@" <<'PY'
import statistics, sys
path, rows_path, tools = sys.argv[1], sys.argv[2], sys.argv[3:]
data = {}
for line in open(path):
    tool, metric, value = line.split()
    data.setdefault((tool, metric), []).append(float(value))
rows = [line.rstrip("\n").split("\t") for line in open(rows_path) if line.strip()]
others = tools[1:]
print("| metric | " + " | ".join(tools) + " | " + " | ".join(f"netferry/{t}" for t in others) + " |")
print("|---" * (1 + len(tools) + len(others)) + "|")
for key, label, *_ in rows:
    med = {t: statistics.median(data[(t, key)]) for t in tools if (t, key) in data}
    if not med:
        continue
    cells = [f"{med[t]:.2f}" if t in med else "n/a" for t in tools]
    nf = med.get("netferry")
    ratios = [f"{nf / med[t]:.2f}x" if nf is not None and med.get(t) else "n/a" for t in others]
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
}
