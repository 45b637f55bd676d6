#!/usr/bin/env bash
# CPU and memory of every process of one `healthsync up`, grouped by stage,
# from top in batch mode (htop has no batch mode). The processes are `up` and
# everything below it, so other HealthSync runs on the same host are not
# counted. Two top iterations a second apart, so CPU is a rate, not a
# since-start average; bounded by a timeout.
set -euo pipefail

readonly PROG=${0##*/}
readonly TOP_TIMEOUT=30

usage() {
    cat <<EOF
Usage: $PROG [--pid PID | --run-dir DIR] [--delay SECONDS] [-h|--help]

CPU and memory of a running healthsync up and its children, by stage:

  stage        procs   cpu%   rss_mib
  ingest           2    4.0     81.3
  ...

Stages: up, ingest, process, api, push, simulate, redis, broker, haproxy.

  --pid PID        the pid of healthsync up
  --run-dir DIR    find it in DIR/state.json instead (default: ./run)
  --delay S        seconds between the two top samples (default 1)

Exit status: 0 done; 64 bad usage; 66 no running pipeline found; 69 top missing.
EOF
}

die() {
    local code=$1
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

# The pid and all its descendants, comma separated.
process_tree() {
    ps -e -o pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            keep[root] = 1; changed = 1
            while (changed) {
                changed = 0
                for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            }
            sep = ""; for (p in keep) { printf "%s%s", sep, p; sep = "," }
        }'
}

# Which stage a pid belongs to, from its command line.
stage_of() {
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || cmd=""
    case $cmd in
        *"healthsync up"*) echo up ;;
        *"healthsync ingest"*) echo ingest ;;
        *"healthsync process"*) echo process ;;
        *"healthsync api"*) echo api ;;
        *"healthsync push"*) echo push ;;
        *"healthsync archive"*) echo archive ;;
        *"healthsync scheduler"*) echo scheduler ;;
        *"healthsync simulate"*) echo simulate ;;
        *redis-server*) echo redis ;;
        *tansu*) echo broker ;;
        *haproxy*) echo haproxy ;;
        *) echo other ;;
    esac
}

main() {
    local pid="" run_dir=run delay=1
    while (($#)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --pid | --run-dir | --delay)
                (($# >= 2)) || die 64 "$1 needs a value"
                case $1 in
                    --pid) pid=$2 ;;
                    --run-dir) run_dir=$2 ;;
                    --delay) delay=$2 ;;
                esac
                shift
                ;;
            *) die 64 "unknown argument: $1 (see --help)" ;;
        esac
        shift
    done
    command -v top >/dev/null || die 69 "top not found; install procps"
    [[ $delay =~ ^[0-9]+([.][0-9]+)?$ ]] || die 64 "bad --delay: $delay"
    if [[ -z $pid ]]; then
        [[ -r $run_dir/state.json ]] || die 66 "no $run_dir/state.json: is healthsync up running?"
        pid=$(grep -o '"up_pid": *[0-9]*' "$run_dir/state.json" | grep -o '[0-9]*$') ||
            die 66 "no up_pid in $run_dir/state.json"
    fi
    [[ $pid =~ ^[0-9]+$ ]] || die 64 "bad --pid: $pid"
    kill -0 "$pid" 2>/dev/null || die 66 "no process $pid"
    local pids
    pids=$(process_tree "$pid")
    # Every process, kept to the tree below: `top -p` takes at most 20 pids, and `up` with
    # more ingest replicas or processors runs more.
    local sample
    sample=$(COLUMNS=512 timeout "$TOP_TIMEOUT" top -b -n 2 -d "$delay")
    # The second iteration only: its CPU is measured over the delay.
    local rows="" line p stage
    while read -r line; do
        p=${line%% *}
        stage=$(stage_of "$p")
        rows+="$stage $line"$'\n'
    done < <(awk -v want=",$pids," '/^ *PID /{ iteration++; next }
        iteration == 2 && $1 ~ /^[0-9]+$/ && index(want, "," $1 ",") { print $1, $6, $9 }' <<<"$sample")
    printf "%-12s %5s %6s %9s\n" stage procs "cpu%" rss_mib
    awk 'NF == 4 {
            rss = $3
            if (rss ~ /g$/) rss = rss * 1048576; else if (rss ~ /m$/) rss = rss * 1024; else rss = rss + 0
            procs[$1]++; cpu[$1] += $4; mem[$1] += rss
        }
        END { for (s in procs) printf "%-12s %5d %6.1f %9.1f\n", s, procs[s], cpu[s], mem[s] / 1024 }
    ' <<<"$rows" | sort
}

main "$@"
