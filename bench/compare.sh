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
FWD_PORT=15201        # host port forwarded to iperf3 in the guest
IDLE=${IDLE:-1000 5000} # idle connections open beside a transfer, round trip and connection rate (each count in turn)
DENSITY=${DENSITY:-100} # idle instances at once, each with its own namespace
. bench/lib.sh

install_missing iperf3 sockperf slirp4netns passt iproute2 util-linux python3
build_netferry

tools=(netferry slirp4netns)
command -v pasta >/dev/null && tools+=(pasta)

make_namespaces
start_servers

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
    "${NS[@]}" unshare -Urn sh -c "exec sleep 86400" &
    holder=$!
    hold "$holder"
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
        pss_per_instance "${helpers[@]}" >"$WORK/density.out"
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

# iperf3 from the guest to the gateway (= host loopback) or, with
# "forward", from the host to the guest through a forwarded port. Records
# Gbit/s and the helper's CPU seconds per GB moved.
iperf() {
    local tool=$1 name=$2; shift 2
    if [ "$name" = forward ]; then
        timed_tcp "$tool" "$name" ip netns exec "$HOSTNS" iperf3 -c 127.0.0.1 -p $FWD_PORT -t "$SECS" -J
    else
        local dst=10.0.2.2 port=$IPERF_PORT
        [ "$name" = up6 ] && { dst=fd00::2; port=$IPERF6_PORT; }
        timed_tcp "$tool" "$name" in_guest iperf3 -c $dst -p $port -t "$SECS" -J "$@"
    fi
}

# iperf3 UDP at an unlimited rate between the guest and the gateway (=
# host loopback): NAME up sends guest->host; down uses -R, so the host's
# server sends into the flow the guest opened (the one path all three
# tools carry: no forward needed). LEN is the payload per datagram.
# Records what the receiver got: Gbit/s, datagrams/s and the loss %.
iperf_udp() { guest_udp "$1" "$2" "$3" 10.0.2.2 "${@:4}"; }

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
                lat=$(round_trip 10.0.2.2)
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
            udp_both_ways "$tool"
            stop
        fi
        # Many idle instances at once: what a host of containers pays.
        want density && density "$tool"
        # Idle memory, latency, connection rate, then peak memory.
        want small || continue
        start "$tool" 65520 || { stop; continue; }
        sleep 1
        record "$tool" idle_rss_MB "$(python3 -c "print($(rss_kb VmRSS)/1024)")"
        lat=$(round_trip 10.0.2.2)
        [ -n "$lat" ] && record "$tool" latency_us "$lat"
        conns=$(in_guest "$WORK/connrate" run 10.0.2.2:$CONN_PORT "$SECS") && record "$tool" conn_per_s "$conns"
        record "$tool" peak_rss_MB "$(python3 -c "print($(rss_kb VmHWM)/1024)")"
        stop
        echo "run $run: $tool done" >&2
    done
done

echo
echo "$(nproc) cores, $(uname -r), $RUNS runs of ${SECS}s, medians:"
{
    printf 'up65520\tguest→host Gbit/s, MTU 65520\n'
    printf 'down65520\thost→guest Gbit/s, MTU 65520\n'
    printf 'up1500\tguest→host Gbit/s, MTU 1500\n'
    printf 'down1500\thost→guest Gbit/s, MTU 1500\n'
    printf 'up6\tguest→host Gbit/s over IPv6 (fd00::2), MTU 65520\n'
    for c in $IDLE; do printf 'up_idle%s\tguest→host Gbit/s, MTU 65520, beside %s idle connections\n' "$c" "$c"; done
    printf 'forward\thost→guest Gbit/s via port forward\n'
    printf 'udp_up1400_gbps\tUDP guest→host Gbit/s received, 1400-byte datagrams\n'
    printf 'udp_down1400_gbps\tUDP host→guest Gbit/s received, 1400-byte datagrams\n'
    printf 'udp_up1400_loss\tUDP guest→host loss %%, 1400-byte datagrams (sender unpaced)\n'
    printf 'udp_down1400_loss\tUDP host→guest loss %%, 1400-byte datagrams (sender unpaced)\n'
    printf 'udp_up64_kpps\tUDP guest→host k datagrams/s received, 64 bytes\n'
    printf 'udp_down64_kpps\tUDP host→guest k datagrams/s received, 64 bytes\n'
    printf 'latency_us\tTCP round trip µs, median (lower is better)\n'
    for c in $IDLE; do printf 'latency_idle%s_us\tTCP round trip µs beside %s idle connections (lower is better)\n' "$c" "$c"; done
    printf 'conn_per_s\tconnections/s\n'
    for c in $IDLE; do printf 'conn_per_s_idle%s\tconnections/s beside %s idle connections\n' "$c" "$c"; done
    printf 'idle_rss_MB\tidle RSS MB (lower is better)\n'
    printf 'peak_rss_MB\tpeak RSS MB (lower is better)\n'
    printf 'density_pss_kB\tidle PSS per instance kB, %s instances (lower is better)\n' "$DENSITY"
    printf 'density_rss_kB\tidle RSS per instance kB, %s instances (lower is better)\n' "$DENSITY"
    printf 'density_total_MB\ttotal PSS MB for %s instances (lower is better)\n' "$DENSITY"
    printf 'cpu_s_per_GB_up65520\tCPU s/GB guest→host 65520 (lower is better)\n'
    printf 'cpu_s_per_GB_down65520\tCPU s/GB host→guest 65520 (lower is better)\n'
} >"$WORK/rows"
print_table "$WORK/rows" "${tools[@]}"
