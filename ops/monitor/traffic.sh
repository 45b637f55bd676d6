#!/usr/bin/env bash
# What crosses the HealthSync ports for a few seconds, from tcpdump: packets,
# bytes and new connections per port, and a check that the TLS ports carry
# only TLS. The capture runs under a timeout and is deleted afterwards.
#
# gawk, for strtonum() and and().
#
# The TLS check looks at the first payload a client sends on each connection
# to a TLS port: a TLS client's first bytes are a handshake record (0x16 0x03).
# Anything else is plaintext, and the script names the connection and shows
# the first printable characters (at most 24, as they may hold patient data).
set -euo pipefail

readonly PROG=${0##*/}
readonly SHOWN_CHARS=24
capture=""
capturing=""

usage() {
    cat <<EOF
Usage: $PROG [--seconds N] [--ports "NAME:PORT ..."] [--tls-ports "PORT ..."]
             [--interface IF] [-h|--help]

Capture N seconds of traffic on the HealthSync ports with tcpdump and report:

  per port      packets, bytes (IP lengths) and new connections (SYNs)
  TLS check     on each TLS port, every connection whose first client payload
                is not a TLS record, named with its first printable characters

  --seconds N       capture time (default 5, at most 600)
  --ports LIST      NAME:PORT separated by spaces or commas (default: \$HEALTHSYNC_PORTS,
                    else "ingest:7000 ingest-tls:7443 api:8000"); add the embedded
                    Kafka and Redis ports from the first lines of healthsync up
  --tls-ports LIST  the ports that must carry only TLS (default: 7443 8000)
  --interface IF    where to capture (default lo: the embedded stack is on loopback)

Needs root (or CAP_NET_RAW). Exit status: 0 no plaintext on a TLS port;
1 plaintext found; 64 bad usage; 69 tcpdump missing; 77 not allowed to capture.
EOF
}

die() {
    local code=$1
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

# From `tcpdump -nn -tt -x -r`: one line per packet with
# "src_port dst_port ip_length flags payload_hex_prefix", IPv4 or IPv6.
packets() {
    tcpdump -nn -tt -x -r "$1" 2>/dev/null | gawk '
        function flush() {
            if (hex == "") return
            if (substr(hex, 1, 1) == "6") {
                # IPv6: a 40-byte header, TCP next (an extension header is not read).
                if (substr(hex, 13, 2) != "06") { hex = ""; return }
                ihl = 40
                total = 40 + strtonum("0x" substr(hex, 9, 4))
            } else {
                ihl = strtonum("0x" substr(hex, 2, 1)) * 4
                total = strtonum("0x" substr(hex, 5, 4))
            }
            tcp = ihl * 2
            sport = strtonum("0x" substr(hex, tcp + 1, 4))
            dport = strtonum("0x" substr(hex, tcp + 5, 4))
            doff = int(strtonum("0x" substr(hex, tcp + 25, 1))) * 4
            flags = strtonum("0x" substr(hex, tcp + 27, 2))
            payload = substr(hex, (ihl + doff) * 2 + 1, 96)
            if (total - ihl - doff <= 0) payload = "-"
            print sport, dport, total, flags, payload
            hex = ""
        }
        /^[0-9]/ { flush(); next }
        /^\t0x/ { line = $0; sub(/^\t0x[0-9a-f]+:  /, "", line); gsub(/ /, "", line); hex = hex line }
        END { flush() }'
}

main() {
    local seconds=5 interface=lo
    local ports=${HEALTHSYNC_PORTS:-"ingest:7000 ingest-tls:7443 api:8000"} tls_ports="7443 8000"
    while (($#)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --seconds | --ports | --tls-ports | --interface)
                (($# >= 2)) || die 64 "$1 needs a value"
                case $1 in
                    --seconds) seconds=$2 ;;
                    --ports) ports=$2 ;;
                    --tls-ports) tls_ports=$2 ;;
                    --interface) interface=$2 ;;
                esac
                shift
                ;;
            *) die 64 "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1 || seconds > 600)); then
        die 64 "--seconds must be 1..600"
    fi
    command -v tcpdump >/dev/null || die 69 "tcpdump not found; install tcpdump"
    command -v gawk >/dev/null || die 69 "gawk not found; install gawk"
    local spec map="" filter=""
    for spec in ${ports//,/ }; do
        [[ $spec =~ ^[A-Za-z0-9_-]+:[0-9]+$ ]] || die 64 "bad port spec: $spec (NAME:PORT)"
        map+="${spec##*:}=${spec%%:*} "
        filter+="${filter:+ or }port ${spec##*:}"
    done
    local port
    for port in ${tls_ports//,/ }; do
        [[ $port =~ ^[0-9]+$ ]] || die 64 "bad TLS port: $port"
    done
    capture=$(mktemp "${TMPDIR:-/tmp}/healthsync-traffic.XXXXXX")
    trap 'rm -f "$capture" "$capture.err"' EXIT
    local status=0
    # In the background and waited for, so that a signal to this script is handled
    # at once: stopped early (Ctrl-C, kill), it stops tcpdump (timeout passes the
    # signal on) and exits, and the EXIT trap removes the capture.
    timeout --signal=INT "$seconds" tcpdump -i "$interface" -nn -U -s 256 -w "$capture" \
        "tcp and ($filter)" 2>"$capture.err" &
    capturing=$!
    trap 'kill -TERM "$capturing" 2>/dev/null; exit 130' INT TERM
    wait "$capturing" || status=$?
    trap - INT TERM
    # timeout's 124 is the normal end of the capture.
    if ((status != 0 && status != 124)); then
        local reason
        reason=$(cat "$capture.err")
        rm -f "$capture.err"
        [[ $reason == *"ermission"* || $reason == *"ot permitted"* ]] && die 77 "$reason"
        die 69 "tcpdump failed: $reason"
    fi
    rm -f "$capture.err"
    local table
    table=$(packets "$capture")
    echo "== traffic per port over ${seconds} s"
    printf "%-6s %-12s %8s %10s %6s\n" port name packets bytes conns
    gawk -v map="$map" '
        BEGIN {
            n = split(map, pairs, " ")
            for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); name[kv[1]] = kv[2] }
        }
        {
            port = ($2 in name) ? $2 : $1
            if (!(port in name)) next
            packets[port]++; bytes[port] += $3
            # SYN without ACK to the port: a new connection.
            if ($2 == port && and($4, 18) == 2) conns[port]++
        }
        END {
            for (p in name) printf "%-6s %-12s %8d %10d %6d\n", p, name[p], packets[p], bytes[p], conns[p]
        }' <<<"$table" | sort
    echo "== plaintext on TLS ports"
    local found
    found=$(gawk -v tls=" ${tls_ports//,/ } " -v shown="$SHOWN_CHARS" '
        function text(hex,    out, i, c) {
            out = ""
            for (i = 1; i <= length(hex) && length(out) < shown; i += 2) {
                c = strtonum("0x" substr(hex, i, 2))
                out = out ((c >= 32 && c < 127) ? sprintf("%c", c) : ".")
            }
            return out
        }
        index(tls, " " $2 " ") && $5 != "-" {
            conn = $1 ">" $2
            if (conn in checked) next
            checked[conn] = 1
            if (substr($5, 1, 4) !~ /^1[4-7]03$/) printf "port %s from client port %s: \"%s\"\n", $2, $1, text($5)
        }' <<<"$table")
    if [[ -n $found ]]; then
        echo "$found"
        return 1
    fi
    echo "none"
}

main "$@"
