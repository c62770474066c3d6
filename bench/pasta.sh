#!/usr/bin/env bash
# pasta mode against the real pasta, on the same machine in the same run:
# netferry called as `pasta` and each real pasta found (Debian forky's and
# trixie's, from the trees .ci/run builds, run with their own libraries;
# the system's, if installed) get the same command line, take turns run
# by run, and the table shows medians and netferry-to-pasta ratios.
#
#   sudo bash bench/pasta.sh [RUNS] [SECONDS]
#
# ONLY=throughput|forward|udp|small|start|density limits a run to one
# group. DENSITY (default "50 100") sets the idle-instance counts.
#
# The container side gets the host's address (198.51.100.1/24, copied by
# --config-net) and reaches: the host's loopback through the gateway
# (198.51.100.2, mapped as pasta maps it), the host's own address through
# --map-guest-addr 169.254.1.2, and the host's loopback through -T.
# Forwarded ports (-t) are reached from the host's loopback and from the
# sink namespace (a non-loopback client, whose address pasta keeps).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
SECS=${2:-5}
DENSITY=${DENSITY:-50 100}
FWD_PORT=15201   # -t: host port forwarded to iperf3 in the namespace
GUEST_PORT=5301  # iperf3 inside the namespace
NS_T_PORT=5201   # -T: the namespace's loopback port led to the host's
HOSTADDR_PORT=5203 # iperf3 on the host's own address (--map-guest-addr)
TREES=/var/cache/netferry-ci
. bench/lib.sh

install_missing iperf3 sockperf iproute2 util-linux python3
build_netferry
mkdir -p "$WORK/netferry-pasta"
ln -s "$WORK/netferry" "$WORK/netferry-pasta/pasta"

# Each implementation is a command named pasta; its label carries pasta's
# version, so the table says what it measured.
declare -A bin
tools=(netferry)
bin[netferry]=$WORK/netferry-pasta/pasta
# pasta re-executes its AVX2 build where the CPU has it; run by another
# dynamic loader it cannot find it, so the script picks it itself.
avx2=
grep -qw avx2 /proc/cpuinfo && avx2=.avx2
# label VERSION: pasta's Debian version as the date of its snapshot.
label() { echo "pasta-$(sed -n 's/.*git\([0-9]\{4\}\)\([0-9]\{2\}\)\([0-9]\{2\}\).*/\1-\2-\3/p' <<<"$1")"; }
for tree in forky trixie; do
    root=$TREES/$tree-rootfs
    [ -x "$root/usr/bin/pasta" ] || continue
    exe=$root/usr/bin/pasta$avx2
    [ -x "$exe" ] || exe=$root/usr/bin/pasta
    mkdir -p "$WORK/$tree"
    cat >"$WORK/$tree/pasta" <<SH
#!/bin/sh
exec $root/lib64/ld-linux-x86-64.so.2 --library-path $root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu $exe "\$@"
SH
    chmod 0755 "$WORK/$tree/pasta"
    name=$(label "$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Version}' passt)")
    tools+=("$name")
    bin[$name]=$WORK/$tree/pasta
done
# The system's pasta only when there is no tree: Debian 12's (2023) knows
# neither --map-guest-addr nor podman 5's other options.
if [ ${#tools[@]} = 1 ] && command -v pasta >/dev/null; then
    name=$(label "$(dpkg-query -W -f='${Version}' passt)")
    tools+=("$name")
    bin[$name]=$(command -v pasta)
fi
[ ${#tools[@]} -gt 1 ] || echo "no real pasta found (bash .ci/run builds the Debian trees): netferry alone" >&2
for t in "${tools[@]}"; do echo "== $t: ${bin[$t]}" >&2; done

make_namespaces
start_servers
("${NS[@]}" iperf3 -s -B 198.51.100.1 -p $HOSTADDR_PORT >/dev/null 2>&1 &)
sleep 0.3

# podman's argv (createPastaArgs), with the ports this script uses; the
# target comes last.
# With PORTS=none (many instances at once in one host namespace), no
# ports at all.
argv() {
    local mtu=$1
    if [ "${PORTS:-}" = none ]; then
        echo --config-net -m "$mtu" -t none -u none -T none -U none
    else
        echo --config-net -m "$mtu" -t "$FWD_PORT:$GUEST_PORT" -u "$FWD_PORT:$GUEST_PORT" -T "$NS_T_PORT" -U none
    fi
    echo --dns-forward 169.254.1.1 --quiet --map-guest-addr 169.254.1.2
}

# start TOOL MTU: a fresh container namespace (a user and network
# namespace of nobody's, held by a sleep) with TOOL serving it in the
# foreground; sets $holder and $helper (the tool's pid).
start() {
    local tool=$1 mtu=$2 i
    "${NS[@]}" unshare -Urn sh -c "exec sleep 86400" &
    holder=$!
    hold "$holder"
    while [ "$(readlink /proc/$holder/ns/net)" = "$(readlink /proc/self/ns/net)" ] ||
          [ "$(cat /proc/$holder/comm 2>/dev/null)" != sleep ]; do sleep 0.02; done
    # shellcheck disable=SC2046
    "${NS[@]}" "${bin[$tool]}" $(argv "$mtu") --foreground "$holder" >"$WORK/$tool.log" 2>&1 &
    helper=$!
    for i in $(seq 300); do
        if in_guest ip -4 route 2>/dev/null | grep -q default; then
            sleep 0.2
            # The wrapper scripts exec the loader: $helper is pasta itself.
            return 0
        fi
        sleep 0.05
    done
    echo "$tool did not come up: $(cat "$WORK/$tool.log")" >&2
    return 1
}

stop() {
    kill "$helper" "$holder" 2>/dev/null || true
    wait "$helper" "$holder" 2>/dev/null || true
}

# iperf TOOL NAME FROM DST PORT [iperf3 args]: TCP through the path NAME
# names; FROM is guest, host (the host's loopback) or sink (a
# non-loopback client in the sink namespace).
iperf() {
    local tool=$1 name=$2 from=$3 dst=$4 port=$5; shift 5
    local run=()
    case $from in
    guest) run=(in_guest) ;;
    host) run=(ip netns exec "$HOSTNS") ;;
    sink) run=(ip netns exec "$SINKNS") ;;
    esac
    timed_tcp "$tool" "$name" "${run[@]}" iperf3 -c "$dst" -p "$port" -t "$SECS" -J "$@"
}

# iperf_udp TOOL NAME LEN [iperf3 args]: UDP from the guest to the sink.
iperf_udp() { guest_udp "$1" "$2" "$3" 198.51.100.2 "${@:4}"; }

# start_latency TOOL: podman's own way, once: the daemon (no
# --foreground) on a namespace file, from exec to the parent's exit
# (which pasta's callers wait for); the namespace file's removal ends it.
start_latency() {
    local tool=$1 t0 t1 file=$WORK/netns-$1
    "${NS[@]}" unshare --user --map-root-user --mount sh -c "exec sleep 86400" &
    holder=$!
    hold "$holder"
    while [ "$(readlink /proc/$holder/ns/user)" = "$(readlink /proc/self/ns/user)" ] ||
          [ "$(cat /proc/$holder/comm 2>/dev/null)" != sleep ]; do sleep 0.02; done
    local caller=(ip netns exec "$HOSTNS" nsenter -t "$holder" -U -m --)
    "${caller[@]}" sh -c "touch $file && unshare --net=$file true"
    t0=$(date +%s%N)
    # shellcheck disable=SC2046
    if "${caller[@]}" "${bin[$tool]}" $(argv 65520) --netns "$file" </dev/null >/dev/null 2>&1; then
        t1=$(date +%s%N)
        record "$tool" start_ms "$(python3 -c "print(($t1-$t0)/1e6)")"
    fi
    "${caller[@]}" sh -c "umount -l $file; rm -f $file"
    # netns-quit ends it within a second or so; the holder's end, the rest.
    sleep 1.5
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
}

# density TOOL N: N idle instances at once, each with its own namespace.
density() {
    local tool=$1 n=$2 i up=0
    local helpers=() holders=()
    for i in $(seq "$n"); do
        if PORTS=none start "$tool" 65520; then up=$((up + 1)); fi
        helpers+=("$helper")
        holders+=("$holder")
    done
    sleep 2
    if [ "$up" = "$n" ]; then
        read -r pss rss total < <(pss_per_instance "${helpers[@]}")
        record "$tool" "density${n}_pss_kB" "$pss"
        record "$tool" "density${n}_total_MB" "$total"
    else
        echo "$tool: only $up of $n instances came up" >&2
    fi
    kill "${helpers[@]}" "${holders[@]}" 2>/dev/null || true
    wait "${helpers[@]}" "${holders[@]}" 2>/dev/null || true
}

for run in $(seq "$RUNS"); do
    for tool in "${tools[@]}"; do
        want throughput && for mtu in 65520 1500; do
            start "$tool" "$mtu" || { stop; continue; }
            iperf "$tool" "up$mtu" guest 198.51.100.2 $IPERF_PORT
            iperf "$tool" "down$mtu" guest 198.51.100.2 $IPERF_PORT -R
            stop
        done
        if want throughput && start "$tool" 65520; then
            iperf "$tool" up_guestaddr guest 169.254.1.2 $HOSTADDR_PORT
            iperf "$tool" up_T guest 127.0.0.1 $NS_T_PORT
            stop
        fi
        if want forward && start "$tool" 65520; then
            in_guest iperf3 -s -p $GUEST_PORT >/dev/null 2>&1 &
            guest_iperf=$!
            sleep 0.3
            iperf "$tool" fwd_lo host 127.0.0.1 $FWD_PORT
            iperf "$tool" fwd_remote sink 198.51.100.1 $FWD_PORT
            kill $guest_iperf 2>/dev/null; wait $guest_iperf 2>/dev/null || true
            stop
        fi
        if want udp && start "$tool" 65520; then
            udp_both_ways "$tool"
            stop
        fi
        if want small && start "$tool" 65520; then
            lat=$(round_trip 198.51.100.2)
            [ -n "$lat" ] && record "$tool" latency_us "$lat"
            conns=$(in_guest "$WORK/connrate" run 198.51.100.2:$CONN_PORT "$SECS") &&
                record "$tool" conn_per_s "$conns"
            stop
        fi
        want start && start_latency "$tool"
        if want density; then for n in $DENSITY; do density "$tool" "$n"; done; fi
        echo "run $run: $tool done" >&2
    done
done

echo
echo "$(nproc) cores, $(uname -r), $RUNS runs of ${SECS}s, medians; pasta mode, podman's argv:"
{
    printf 'up65520\tnamespace→host loopback via the gateway Gbit/s, MTU 65520\n'
    printf 'down65520\thost loopback→namespace via the gateway Gbit/s, MTU 65520\n'
    printf 'up1500\tnamespace→host loopback via the gateway Gbit/s, MTU 1500\n'
    printf 'down1500\thost loopback→namespace via the gateway Gbit/s, MTU 1500\n'
    printf 'up_guestaddr\tnamespace→host address via --map-guest-addr Gbit/s\n'
    printf 'up_T\tnamespace→host loopback via -T Gbit/s\n'
    printf 'fwd_lo\thost loopback client→namespace via -t Gbit/s\n'
    printf 'fwd_remote\tnon-loopback client→namespace via -t Gbit/s\n'
    printf 'udp_up1400_gbps\tUDP namespace→host Gbit/s received, 1400-byte datagrams\n'
    printf 'udp_down1400_gbps\tUDP host→namespace Gbit/s received, 1400-byte datagrams\n'
    printf 'udp_up64_kpps\tUDP namespace→host k datagrams/s received, 64 bytes\n'
    printf 'udp_down64_kpps\tUDP host→namespace k datagrams/s received, 64 bytes\n'
    printf 'latency_us\tTCP round trip µs, median (lower is better)\n'
    printf 'conn_per_s\tconnections/s\n'
    printf 'start_ms\tstart, exec to the parent'"'"'s exit, ms (lower is better)\n'
    for n in $DENSITY; do
        printf 'density%s_pss_kB\tidle PSS per instance kB, %s instances (lower is better)\n' "$n" "$n"
    done
    printf 'cpu_s_per_GB_up65520\tCPU s/GB namespace→host 65520 (lower is better)\n'
    printf 'cpu_s_per_GB_down65520\tCPU s/GB host→namespace 65520 (lower is better)\n'
    printf 'cpu_s_per_GB_fwd_lo\tCPU s/GB via -t from loopback (lower is better)\n'
} >"$WORK/rows"
print_table "$WORK/rows" "${tools[@]}"
