# Sourced by the .ci scripts that fetch from Debian's archive: sets
# `mirror` to the first archive this machine's apt already uses (so no
# host is named here), or exits 2 when there is none or it cannot be
# reached for trixie (or `$suite`, when set).
mirror=
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n1)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
    echo "$(basename "$0"): no Debian mirror in this machine's apt configuration" >&2
    exit 2
fi
if ! curl -fsS -o /dev/null --max-time 30 "$mirror/dists/${suite:-trixie}/Release"; then
    echo "$(basename "$0"): cannot reach the Debian archive ($mirror)" >&2
    exit 2
fi
