#!/usr/bin/env bash
# One bedside monitor for HealthSync, in bash and netcat.
#
# Sends a reading every --interval seconds in the device line protocol and
# prints the ingest server's reply to each. Every reading gets its own nc
# connection, so the script works from cron with --count 1; the seq counter and
# the last vitals persist in a state file so that successive runs continue the
# same patient instead of starting over (and never reuse a seq, which the
# server would take for a resend of an old reading).
#
# With --tls the reading goes to the TLS port with the device's certificate,
# through ncat --ssl or openssl s_client. A TLS connection ends when either side
# closes it (there is no half-close as with nc -N), so the script keeps it open
# until the reply has arrived and only then closes it.
set -euo pipefail

readonly PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG --device ID --patient ID [options]

Simulate one bedside monitor sending vitals to the HealthSync ingest server.

Options:
  --device ID       device id, e.g. mon-0001 (required)
  --patient ID      patient id, e.g. P-1001 (required)
  --host HOST       ingest host (default: \$HS_HOST or 127.0.0.1)
  --port PORT       ingest port (default: \$HS_PORT, or 7000; 7443 with --tls)
  --tls             send over TLS with the device certificate (mutual TLS)
  --cert FILE       device certificate (default: \$HS_CERT or run/certs/devices/ID.crt)
  --key FILE        device key (default: \$HS_KEY or run/certs-device-keys/ID.key)
  --ca FILE         CA certificate to check the server with
                    (default: \$HS_CA or run/certs/ca.crt)
  --server-name N   name or address the server certificate must carry
                    (default: the host)
  --tls-client C    ncat or openssl (default: ncat, or openssl s_client when
                    the server name is an IP address, which ncat cannot check)
  --interval SECS   seconds between readings, fractions allowed (default: 5)
  --count N         send N readings, then exit (default: run until stopped)
  --timeout SECS    how long to wait for a reply, whole seconds (default: 10)
  --retries N       resend a reading that got no reply or ERR 503 up to N times,
                    on a new connection, after 0.5 s, 1 s, 2 s ... (default: 3);
                    the same seq makes the server store it once
  --state-dir DIR   keeps the seq counter and last vitals between runs
                    (default: \$HS_STATE_DIR or ~/.local/state/healthsync)
  -h, --help        show this help

Each reply is printed on stdout as:  <UTC time> <device> seq=<n> <reply>

Exit status: 0 every reading got OK; 1 a reading got ERR; 2 a reading got no
reply (server down or too slow, or the TLS handshake refused); 64 bad usage;
69 nc (or ncat/openssl for --tls) missing; 75 another instance holds this
device's state.
EOF
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf "Try '%s --help'.\n" "$PROG" >&2
    exit 64
}

device=""
patient=""
host=${HS_HOST:-127.0.0.1}
port=${HS_PORT:-}
tls=0
cert=${HS_CERT:-}
key=${HS_KEY:-}
ca=${HS_CA:-}
server_name=""
tls_client=""
interval=5
count=""
timeout=10
retries=3
state_dir=${HS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/healthsync}

while (($# > 0)); do
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --tls)
        tls=1
        shift
        continue
        ;;
    --*=*)
        option=${1%%=*}
        value=${1#*=}
        shift
        ;;
    --*)
        (($# >= 2)) || usage_error "$1 needs a value"
        option=$1
        value=$2
        shift 2
        ;;
    *)
        usage_error "unexpected argument: $1"
        ;;
    esac
    case $option in
    --device) device=$value ;;
    --patient) patient=$value ;;
    --host) host=$value ;;
    --port) port=$value ;;
    --interval) interval=$value ;;
    --count) count=$value ;;
    --timeout) timeout=$value ;;
    --retries) retries=$value ;;
    --state-dir) state_dir=$value ;;
    --cert) cert=$value ;;
    --key) key=$value ;;
    --ca) ca=$value ;;
    --server-name) server_name=$value ;;
    --tls-client) tls_client=$value ;;
    *) usage_error "unknown option: $option" ;;
    esac
done

# The same rule the server applies to ids: better refused here than by ERR.
id_pattern='^[A-Za-z0-9._:-]{1,64}$'
[[ $device =~ $id_pattern ]] || usage_error "--device must be 1-64 of A-Z a-z 0-9 . _ : -"
[[ $patient =~ $id_pattern ]] || usage_error "--patient must be 1-64 of A-Z a-z 0-9 . _ : -"
[[ -n $host ]] || usage_error "--host must not be empty"
if [[ -z $port ]]; then
    port=7000
    ((tls == 0)) || port=7443
fi
if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
    usage_error "--port must be 1-65535"
fi
[[ $interval =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "--interval must be a number of seconds"
[[ -z $count || $count =~ ^[1-9][0-9]{0,8}$ ]] || usage_error "--count must be a positive integer"
[[ $timeout =~ ^[1-9][0-9]{0,4}$ ]] || usage_error "--timeout must be a positive whole number"
[[ $retries =~ ^[0-9]{1,2}$ ]] || usage_error "--retries must be a whole number 0-99"

ip_pattern='^([0-9]{1,3}(\.[0-9]{1,3}){3}|.*:.*)$'
if ((tls)); then
    cert=${cert:-run/certs/devices/$device.crt}
    key=${key:-run/certs-device-keys/$device.key}
    ca=${ca:-run/certs/ca.crt}
    server_name=${server_name:-$host}
    if [[ -z $tls_client ]]; then
        tls_client=ncat
        [[ $server_name =~ $ip_pattern ]] && tls_client=openssl
    fi
    [[ $tls_client == ncat || $tls_client == openssl ]] ||
        usage_error "--tls-client must be ncat or openssl"
    for file in "$cert" "$key" "$ca"; do
        [[ -r $file ]] || usage_error "cannot read $file (see --cert, --key, --ca)"
    done
    command -v "$tls_client" >/dev/null || {
        printf '%s: %s not found; install %s\n' "$PROG" "$tls_client" "$tls_client" >&2
        exit 69
    }
else
    command -v nc >/dev/null || {
        printf '%s: nc not found; install netcat-openbsd\n' "$PROG" >&2
        exit 69
    }
fi

# send_tls LINE: print the reply to LINE sent over TLS (nothing when none came).
# The client runs as a coprocess, so the connection stays open until the reply
# is read (closing it first would end the TLS session before the answer).
send_tls() {
    local -a client
    if [[ $tls_client == ncat ]]; then
        client=(ncat --ssl --ssl-verify --ssl-servername "$server_name" --ssl-trustfile "$ca"
            --ssl-cert "$cert" --ssl-key "$key" -w "$timeout" "$host" "$port")
    else
        local check=-verify_hostname
        [[ $server_name =~ $ip_pattern ]] && check=-verify_ip
        client=(openssl s_client -quiet -no_ign_eof -verify_return_error "$check" "$server_name"
            -cert "$cert" -key "$key" -CAfile "$ca" -connect "$host:$port")
    fi
    local answer=""
    coproc TLS_CLIENT { exec "${client[@]}" 2>/dev/null; }
    local pid=$TLS_CLIENT_PID to_client=${TLS_CLIENT[1]} from_client=${TLS_CLIENT[0]}
    if printf '%s\n' "$1" >&"$to_client"; then
        read -r -t "$timeout" answer <&"$from_client" || true
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '%s\n' "$answer"
}

# --- the patient ---------------------------------------------------------------

# A personal baseline derived from the patient id, so the same patient looks the
# same from run to run and different patients differ. Temperature in tenths of a
# degree: bash only has integers.
digest=$(printf '%s' "$patient" | cksum)
digest=${digest%% *}
base_hr=$((62 + digest % 25))
base_spo2=$((95 + digest / 25 % 5))
base_temp=$((364 + digest / 125 % 9))
base_rr=$((12 + digest / 1125 % 7))
base_sys=$((108 + digest / 7875 % 30))
base_dia=$((65 + digest / 236250 % 20))

# drift NAME BASELINE PULL NOISE LOW HIGH: a step of the random walk. The value
# moves 1/PULL of the way back towards the baseline plus up to +-NOISE, and is
# kept within LOW..HIGH.
drift() {
    local -n current=$1
    local base=$2 pull=$3 noise=$4 low=$5 high=$6
    current=$((current + (base - current) / pull + RANDOM % (2 * noise + 1) - noise))
    ((current >= low)) || current=$low
    ((current <= high)) || current=$high
}

mkdir -p -- "$state_dir"
state_file=$state_dir/$device.state

# Two runs for one device (a slow cron run overlapping the next) would read the
# same seq: the later reading would then be dropped downstream as a resend.
if command -v flock >/dev/null; then
    exec 9>"$state_file.lock"
    flock -w "$((timeout + 5))" 9 || {
        printf '%s: another instance is running for %s\n' "$PROG" "$device" >&2
        exit 75
    }
fi

seq="" hr="" spo2="" temp="" rr="" sys="" dia=""
if [[ -r $state_file ]]; then
    read -r seq hr spo2 temp rr sys dia <"$state_file" || true
fi
if ! [[ "$seq $hr $spo2 $temp $rr $sys $dia" =~ ^[0-9]+( [0-9]+){6}$ ]]; then
    # A fresh device starts its seq at the clock in milliseconds: above anything
    # an earlier, forgotten state of the same device id can have reached.
    seq=$(($(date +%s) * 1000))
    hr=$base_hr spo2=$base_spo2 temp=$base_temp rr=$base_rr sys=$base_sys dia=$base_dia
fi

# --- sending ---------------------------------------------------------------------

no_reply=0
refused=0
# One attempt: the first line of the reply, or nothing.
send_once() {
    local reply
    # -N half-closes after the line, so the server answers and closes and nc
    # exits at once; -w bounds the wait when it does not.
    if ((tls)); then
        reply=$(send_tls "$1") || true
    else
        reply=$(printf '%s\n' "$1" | nc -N -w "$timeout" "$host" "$port") || true
    fi
    reply=${reply%%$'\n'*}
    printf '%s' "${reply%$'\r'}"
}

sent=0
while [[ -z $count ]] || ((sent < count)); do
    drift hr "$base_hr" 4 2 40 180
    drift spo2 "$base_spo2" 2 1 85 100
    drift temp "$base_temp" 3 1 350 410
    drift rr "$base_rr" 3 1 8 30
    drift sys "$base_sys" 4 3 85 190
    drift dia "$base_dia" 4 2 45 $((sys - 20))
    seq=$((seq + 1))
    # Saved before sending: should this run die mid-send, the next one must not
    # give the same seq to different values.
    printf '%s %s %s %s %s %s %s\n' "$seq" "$hr" "$spo2" "$temp" "$rr" "$sys" "$dia" \
        >"$state_file.tmp"
    mv -f -- "$state_file.tmp" "$state_file"

    # Literally what a device types: aliases, a comma, a percent sign.
    line="device_id=$device patient_id=$patient seq=$seq heart_rate=$hr, oxygen=$spo2%"
    line+=" temp=$((temp / 10)).$((temp % 10)) rr=$rr bp=$sys/$dia on_oxygen=false"
    line+=" consciousness=A"

    # A lost connection or a busy server is not the reading's fault: the same
    # line again (same seq, so stored once), with a growing pause in between.
    attempt=0
    pause=0.5
    while :; do
        reply=$(send_once "$line")
        case $reply in
        "OK "* | "ERR "[!5]*) break ;;
        esac
        ((attempt < retries)) || break
        attempt=$((attempt + 1))
        printf '%s seq=%s unanswered (%s); resending in %s s\n' "$device" "$seq" \
            "${reply:-no reply}" "$pause" >&2
        sleep "$pause"
        pause=$(awk -v p="$pause" 'BEGIN { p *= 2; print (p > 30 ? 30 : p) }')
    done
    stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    case $reply in
    "OK "*)
        printf '%s %s seq=%s %s\n' "$stamp" "$device" "$seq" "$reply"
        ;;
    "ERR "*)
        printf '%s %s seq=%s %s\n' "$stamp" "$device" "$seq" "$reply"
        refused=$((refused + 1))
        ;;
    "")
        printf '%s %s seq=%s no reply from %s:%s\n' "$stamp" "$device" "$seq" "$host" "$port" >&2
        no_reply=$((no_reply + 1))
        ;;
    *)
        printf '%s %s seq=%s unexpected reply: %s\n' "$stamp" "$device" "$seq" "$reply" >&2
        no_reply=$((no_reply + 1))
        ;;
    esac
    sent=$((sent + 1))

    if [[ -z $count ]] || ((sent < count)); then
        sleep "$interval"
    fi
done

if ((no_reply > 0)); then
    exit 2
fi
if ((refused > 0)); then
    exit 1
fi
exit 0
