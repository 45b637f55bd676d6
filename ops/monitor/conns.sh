#!/usr/bin/env bash
# Connections of a HealthSync server, as ss and netstat see them: per port and
# TCP state, per port and remote host, and the kernel's counters for listen
# queue overflows and retransmits. Only the server side of each connection is
# counted (the local port is the service's), so clients on the same host do not
# count twice. Every command is bounded by a timeout.
set -euo pipefail

readonly PROG=${0##*/}
readonly STEP_TIMEOUT=10

usage() {
    cat <<EOF
Usage: $PROG [--ports "NAME:PORT ..."] [-h|--help]

Report TCP connections to the HealthSync ports, from ss (netstat as fallback):

  by port and state     e.g.  7000   ingest       ESTAB        5
  by port and remote    e.g.  7000   ingest       127.0.0.1    5
  kernel counters       listen queue overflows, SYNs dropped, segments
                        retransmitted (netstat -s)

  --ports LIST   the ports to report, as NAME:PORT separated by spaces or commas
                 (default: \$HEALTHSYNC_PORTS, else "ingest:7000 ingest-tls:7443 api:8000").
                 The embedded Kafka and Redis use free ports: add them, e.g.
                 "kafka:40123 redis:40555" (see the first lines of healthsync up).

Exit status: 0 done; 64 bad usage; 69 neither ss nor netstat installed.
EOF
}

die() {
    local code=$1
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

# One line per TCP socket: "state local_port remote_host".
sockets() {
    if command -v ss >/dev/null; then
        timeout "$STEP_TIMEOUT" ss -Htan | awk '{
            port = $4; sub(/.*:/, "", port)
            host = $5; sub(/:[^:]*$/, "", host); gsub(/^\[|\]$/, "", host)
            sub(/^::ffff:/, "", host)
            print $1, port, host
        }'
    else
        timeout "$STEP_TIMEOUT" netstat -tan | awk 'NR > 2 {
            port = $4; sub(/.*:/, "", port)
            host = $5; sub(/:[^:]*$/, "", host); sub(/^::ffff:/, "", host)
            state = $6; if (state == "ESTABLISHED") state = "ESTAB"
            print state, port, host
        }'
    fi
}

kernel_counters() {
    local stats
    if ! stats=$(timeout "$STEP_TIMEOUT" netstat -s 2>/dev/null); then
        echo "netstat -s unavailable"
        return
    fi
    awk '
        /times the listen queue of a socket overflowed/ { overflows = $1 }
        /SYNs to LISTEN sockets dropped/ { dropped = $1 }
        /segments retransmitted/ { retrans = $1 }
        END {
            printf "listen queue overflows     %d\n", overflows
            printf "SYNs to LISTEN dropped     %d\n", dropped
            printf "segments retransmitted     %d\n", retrans
        }' <<<"$stats"
}

# Counts the sockets on the named ports by the fields given (2 = state, 3 = remote).
count_by() {
    local field=$1 map=$2 table=$3
    awk -v map="$map" -v field="$field" '
        BEGIN {
            n = split(map, pairs, " ")
            for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); name[kv[1]] = kv[2] }
        }
        ($2 in name) && (field == 1 || $1 != "LISTEN") { count[$2 " " $field]++ }
        END {
            for (k in count) {
                split(k, f, " ")
                printf "%-6s %-12s %-40s %d\n", f[1], name[f[1]], f[2], count[k]
            }
        }' <<<"$table" | sort
}

main() {
    local ports=${HEALTHSYNC_PORTS:-"ingest:7000 ingest-tls:7443 api:8000"}
    while (($#)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --ports)
                (($# >= 2)) || die 64 "--ports needs a value"
                ports=$2
                shift
                ;;
            *) die 64 "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    command -v ss >/dev/null || command -v netstat >/dev/null ||
        die 69 "neither ss nor netstat found; install iproute2 or net-tools"
    local spec map=""
    for spec in ${ports//,/ }; do
        [[ $spec =~ ^[A-Za-z0-9_-]+:[0-9]+$ ]] || die 64 "bad port spec: $spec (NAME:PORT)"
        map+="${spec##*:}=${spec%%:*} "
    done
    local table
    table=$(sockets)
    echo "== connections by port and state"
    count_by 1 "$map" "$table"
    echo "== connections by port and remote host (LISTEN sockets left out)"
    count_by 3 "$map" "$table"
    echo "== kernel counters (netstat -s)"
    kernel_counters
}

main "$@"
