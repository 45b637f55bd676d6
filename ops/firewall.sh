#!/usr/bin/env bash
# Host firewall for a HealthSync server: iptables (and ip6tables) rules in a
# dedicated chain, jumped to from INPUT.
#
# Devices reach the ingest ports only from their networks, clinicians the API
# only from theirs, and Kafka and Redis answer only loopback and the
# application hosts; every other new inbound connection is dropped. Rules are
# loaded with iptables-restore in one transaction, so applying again replaces
# the chain atomically: the same rules, never a moment without them.
set -euo pipefail

readonly PROG=${0##*/}
readonly CONFIG_VARS=(CHAIN DEVICE_NETS CLINICIAN_NETS APP_HOSTS INGEST_PORTS API_PORTS
    KAFKA_PORTS REDIS_PORTS OPEN_TCP_PORTS)

usage() {
    cat <<EOF
Usage: $PROG [--env-file FILE] apply|remove|status

Firewall rules for a HealthSync server, in the iptables chain \$CHAIN
(default HEALTHSYNC-IN), jumped to from INPUT, for IPv4 and IPv6.

  apply    create or replace the chain (idempotent: twice = the same rules)
  remove   delete the jump and the chain; the host is as before apply
  status   print the chain's rules with packet counters; exit 3 if not applied

Configuration, from the environment or KEY=VALUE lines in --env-file (default
\$HEALTHSYNC_FIREWALL_ENV, else /etc/healthsync/firewall.env if it exists);
the environment wins over the file. Lists are separated by spaces or commas.

  DEVICE_NETS      networks (CIDR) allowed to the ingest ports     (default: none)
  CLINICIAN_NETS   networks allowed to the API ports                (default: none)
  APP_HOSTS        hosts/networks allowed to Kafka and Redis         (default: none)
  INGEST_PORTS     ingest ports, plain and TLS                      (default: 7000 7443)
  API_PORTS        REST API ports                                   (default: 8000)
  KAFKA_PORTS      Kafka broker ports, TLS front included           (default: 9092)
  REDIS_PORTS      Redis ports, TLS included                        (default: 6379)
  OPEN_TCP_PORTS   ports left open to everyone, e.g. SSH            (default: 22)
  CHAIN            chain name                                       (default: HEALTHSYNC-IN)

Loopback, replies to the host's own connections and ICMP are always allowed.
Exit status: 0 done; 3 status found no chain; 64 bad usage or configuration;
69 iptables missing.
EOF
}

die() {
    local code=$1
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

# Reads KEY=VALUE lines without executing them; the environment keeps precedence.
load_env_file() {
    local file=$1 line key value number=0
    [[ -r $file ]] || die 64 "cannot read env file $file"
    while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        line=${line%%#*}
        [[ $line =~ ^[[:space:]]*$ ]] && continue
        [[ $line =~ ^[[:space:]]*([A-Z_0-9]+)=(.*)$ ]] ||
            die 64 "$file:$number: expected KEY=VALUE"
        key=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]}
        value=${value%"${value##*[![:space:]]}"}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        is_config_var "$key" || die 64 "$file:$number: unknown setting $key"
        [[ -v $key ]] || printf -v "$key" '%s' "$value"
    done <"$file"
}

is_config_var() {
    local name
    for name in "${CONFIG_VARS[@]}"; do
        [[ $name == "$1" ]] && return 0
    done
    return 1
}

# Splits a space/comma separated list into the array named by $2.
split_list() {
    local IFS=$' \t,'
    read -r -a "$2" <<<"$1"
}

check_port() {
    if [[ ! $1 =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 65535)); then
        die 64 "$2: '$1' is not a port (1-65535)"
    fi
}

check_net() {
    local addr=${1%/*} prefix=
    [[ $1 == */* ]] && prefix=${1#*/}
    if [[ $addr == *:* ]]; then
        [[ $addr =~ ^[0-9A-Fa-f:.]+$ ]] || die 64 "$2: '$1' is not an IPv6 address or network"
        [[ -z $prefix || ($prefix =~ ^[0-9]+$ && prefix -le 128) ]] ||
            die 64 "$2: bad prefix length in '$1'"
    else
        local octet
        # No leading zeros: iptables reads 010 as octal (8), bash fails on 08.
        [[ $addr =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]] ||
            die 64 "$2: '$1' is not an IPv4 address or network"
        for octet in "${BASH_REMATCH[@]:1}"; do
            ((10#$octet <= 255)) || die 64 "$2: '$1' is not an IPv4 address or network"
        done
        [[ -z $prefix || ($prefix =~ ^[0-9]+$ && prefix -le 32) ]] ||
            die 64 "$2: bad prefix length in '$1'"
    fi
}

load_config() {
    local file=${ENV_FILE:-${HEALTHSYNC_FIREWALL_ENV:-}}
    if [[ -n $file ]]; then
        load_env_file "$file"
    elif [[ -r /etc/healthsync/firewall.env ]]; then
        load_env_file /etc/healthsync/firewall.env
    fi
    CHAIN=${CHAIN:-HEALTHSYNC-IN}
    [[ $CHAIN =~ ^[A-Za-z][A-Za-z0-9_-]{0,28}$ ]] || die 64 "CHAIN: '$CHAIN' is not a chain name"
    split_list "${DEVICE_NETS:-}" device_nets
    split_list "${CLINICIAN_NETS:-}" clinician_nets
    split_list "${APP_HOSTS:-}" app_hosts
    split_list "${INGEST_PORTS:-7000 7443}" ingest_ports
    split_list "${API_PORTS:-8000}" api_ports
    split_list "${KAFKA_PORTS:-9092}" kafka_ports
    split_list "${REDIS_PORTS:-6379}" redis_ports
    split_list "${OPEN_TCP_PORTS-22}" open_ports
    local item
    for item in "${device_nets[@]}"; do check_net "$item" DEVICE_NETS; done
    for item in "${clinician_nets[@]}"; do check_net "$item" CLINICIAN_NETS; done
    for item in "${app_hosts[@]}"; do check_net "$item" APP_HOSTS; done
    for item in "${ingest_ports[@]}"; do check_port "$item" INGEST_PORTS; done
    for item in "${api_ports[@]}"; do check_port "$item" API_PORTS; done
    for item in "${kafka_ports[@]}"; do check_port "$item" KAFKA_PORTS; done
    for item in "${redis_ports[@]}"; do check_port "$item" REDIS_PORTS; done
    for item in "${open_ports[@]}"; do check_port "$item" OPEN_TCP_PORTS; done
}

# Prints "-A CHAIN" rules that let the sources of one family reach some ports.
allow_rules() {
    local family=$1 sources_name=$2 ports_name=$3 source port
    local -n sources=$sources_name ports=$ports_name
    for source in "${sources[@]}"; do
        if [[ $family == 6 && $source != *:* ]] || [[ $family == 4 && $source == *:* ]]; then
            continue
        fi
        for port in "${ports[@]}"; do
            echo "-A $CHAIN -s $source -p tcp --dport $port -j ACCEPT"
        done
    done
}

# The whole chain for one family, in iptables-restore format. With --noflush,
# declaring the chain creates it or empties it inside the same transaction.
ruleset() {
    local family=$1 port icmp=icmp
    [[ $family == 6 ]] && icmp=ipv6-icmp
    echo "*filter"
    echo ":$CHAIN - [0:0]"
    echo "-A $CHAIN -i lo -j ACCEPT"
    echo "-A $CHAIN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    echo "-A $CHAIN -m conntrack --ctstate INVALID -j DROP"
    echo "-A $CHAIN -p $icmp -j ACCEPT"
    allow_rules "$family" device_nets ingest_ports
    allow_rules "$family" clinician_nets api_ports
    allow_rules "$family" app_hosts kafka_ports
    allow_rules "$family" app_hosts redis_ports
    for port in "${open_ports[@]}"; do
        echo "-A $CHAIN -p tcp --dport $port -j ACCEPT"
    done
    echo "-A $CHAIN -j DROP"
    echo "COMMIT"
}

tools() {
    command -v iptables >/dev/null || die 69 "iptables not found (apt-get install iptables)"
    families=(4)
    if command -v ip6tables >/dev/null && ip6tables -S INPUT >/dev/null 2>&1; then
        families+=(6)
    fi
}

ipt() {
    local family=$1
    shift
    if [[ $family == 6 ]]; then ip6tables -w 5 "$@"; else iptables -w 5 "$@"; fi
}

restore() {
    if [[ $1 == 6 ]]; then ip6tables-restore -w 5 --noflush; else iptables-restore -w 5 --noflush; fi
}

apply() {
    local family
    for family in "${families[@]}"; do
        ruleset "$family" | restore "$family"
        ipt "$family" -C INPUT -j "$CHAIN" 2>/dev/null || ipt "$family" -I INPUT 1 -j "$CHAIN"
    done
    echo "$PROG: $CHAIN applied (${families[*]/#/IPv})"
}

remove() {
    local family
    for family in "${families[@]}"; do
        while ipt "$family" -C INPUT -j "$CHAIN" 2>/dev/null; do
            ipt "$family" -D INPUT -j "$CHAIN"
        done
        if ipt "$family" -S "$CHAIN" >/dev/null 2>&1; then
            ipt "$family" -F "$CHAIN"
            ipt "$family" -X "$CHAIN"
        fi
    done
    echo "$PROG: $CHAIN removed"
}

status() {
    local family applied=0
    for family in "${families[@]}"; do
        echo "# IPv$family"
        if ipt "$family" -S "$CHAIN" >/dev/null 2>&1; then
            if ipt "$family" -C INPUT -j "$CHAIN" 2>/dev/null; then
                applied=1
            else
                echo "# (chain exists but INPUT does not jump to it)"
            fi
            ipt "$family" -L "$CHAIN" -n -v --line-numbers
        else
            echo "# $CHAIN not present"
        fi
    done
    ((applied)) || return 3
}

main() {
    ENV_FILE=
    ACTION=
    while (($#)); do
        case $1 in
        --env-file)
            (($# >= 2)) || die 64 "--env-file needs a file"
            ENV_FILE=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        apply | remove | status)
            [[ -z ${ACTION:-} ]] || die 64 "one action at a time"
            ACTION=$1
            shift
            ;;
        *)
            usage >&2
            exit 64
            ;;
        esac
    done
    [[ -n ${ACTION:-} ]] || {
        usage >&2
        exit 64
    }
    load_config
    tools
    case $ACTION in
    apply) apply ;;
    remove) remove ;;
    status) status ;;
    esac
}

declare -a device_nets clinician_nets app_hosts ingest_ports api_ports kafka_ports redis_ports
declare -a open_ports families
main "$@"
