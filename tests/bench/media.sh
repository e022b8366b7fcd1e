#!/usr/bin/env bash
# ./x bench media (forwarding): RTP packets relayed per CPU-second by branchgate's
# media relay and by rtpengine (Debian, userspace forwarding: --table=-1, no kernel
# module) under the same call load, alternating rounds, on loopback.
#
# Load: N concurrent sipp calls (LOADS), each G.711 µ-law both ways at 50 packets/s
# per direction: the caller plays a 20 ms pcap (tests/bench/rtp_pcap.py), the
# callee (sipp -rtp_echo) echoes it. Through the box: caller → box (users
# 1001… dial a route to a trunk; one user and one sipp per 10 calls, as the box
# allows 16 calls per user) → callee; the box anchors the media. For rtpengine:
# caller → Kamailio (rtpengine_offer/answer/delete, record-route) → callee, with
# rtpengine relaying the media.
#
# Measured: only the relay's process (the box's, not sipp's; rtpengine's, not
# Kamailio's), over a steady-state window (WINDOW s) that starts once all N calls
# are up and ends before the first BYE, so no signalling falls in it. Packets:
# the box's per-call relay counters (GET /api/v1/sip/calls, both directions; the
# box refreshes them once a second, so each end is read just after they move) and
# rtpengine's rtpengine_packets_total{type="userspace"} (its /metrics, live over
# running calls), each read at both ends of the window. Loss is against what the
# load should have offered (N × 100 packets/s); receive-buffer drops on the
# relay's sockets and on the callee's media socket (/proc/net/udp) in the window
# cross-check where packets went. (The caller never reads the echo: its media
# socket overflows by design and is not counted.)
set -euo pipefail
BIN=${BRANCHGATE_BIN:?}
ROUNDS=${ROUNDS:-2}
LOADS=${LOADS:-"50 100 200"}
WINDOW=${WINDOW:-20}
RATE=${RATE:-50}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

for tool in sipp kamailio rtpengine python3 curl bc ss; do
  command -v "$tool" >/dev/null || {
    echo "bench media: '$tool' is missing (Debian: sip-tester kamailio rtpengine-daemon python3 curl bc iproute2; ./x bench media installs them)" >&2
    exit 1
  }
done
[[ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/rtpengine.so ]] || ls /usr/lib/*/kamailio/modules/rtpengine.so >/dev/null 2>&1 || {
  echo "bench media: Kamailio's rtpengine module is missing (Debian package kamailio)" >&2
  exit 1
}

work=$(mktemp -d)
declare -a started=()   # every process this script started, by pid
cleanup() {
  local p
  for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

# A UDP+TCP port nobody listens on.
free_port() {
  local p
  while :; do
    p=$(port)
    ss -Hlnu "sport = :$p or sport = :$((p + 2))" | grep -q . || ss -Hlnt "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}
# An even base of $1 consecutive ports with none in use (the relays' port ranges), below
# 49152 where the box's (disabled, still validated) TURN relay range starts.
free_range() {
  local base n=$1
  while :; do
    base=$((20000 + 2 * (RANDOM % ((49152 - 20000 - n) / 2))))
    [[ -z $(ss -Hlnu "sport >= :$base and sport <= :$((base + n))") ]] && { echo "$base"; return; }
  done
}
now() { date +%s.%N; }
# Receive-buffer drops counted on the UDP sockets bound to ports $1..$2 (a relay's range, the callee's media port).
socket_drops() {
  awk -v lo="$1" -v hi="$2" 'NR > 1 { split($2, a, ":"); p = 0
    for (i = 1; i <= 4; i++) p = p * 16 + index("0123456789ABCDEF", substr(a[2], i, 1)) - 1
    if (p >= lo && p <= hi) d += $NF } END { print d + 0 }' /proc/net/udp
}

max_load=$(printf '%s\n' $LOADS | sort -n | tail -1)
# Callers 1001, 1002, ...: one per 10 calls (the box allows 16 calls per user).
users_json=$(for i in $(seq 1 $(( (max_load + 9) / 10 ))); do printf '{"username": "%d", "password": "bench-secret-1"},' "$((1000 + i))"; done)
python3 "$ROOT/tests/bench/rtp_pcap.py" "$work/media.pcap" "$((max_load / RATE + WINDOW + 30))"

# The callee for both: answers at once, echoes the media.
uas_port=$(free_port); uas_media=$(free_port)
(cd "$work" && exec sipp -sf "$ROOT/tests/sipp/bench_uas.xml" -i 127.0.0.1 -p "$uas_port" -mp "$uas_media" -rtp_echo \
  -nostdin -trace_err -error_file "$work/uas-err.log" >/dev/null 2>&1) &
started+=($!)
sleep 0.5

# Relayed packets so far on the relay under test: "$1" is box or rtpe.
box_packets() {
  curl -sk -H "Cookie: $cookie" "https://127.0.0.1:$admin_port/api/v1/sip/calls" | tee "$work/calls.json" |
    { grep -oE '"packets_(a_to_b|b_to_a)":[0-9]+' || true; } | awk -F'[_":]+' '{ s[$3] += $NF; n++ } END { printf "%d %d %d %d\n", s["a"] + s["b"], n / 2, s["a"], s["b"] }'
}
rtpe_packets() {
  curl -s "http://127.0.0.1:$rtpe_http/metrics" |
    awk '/^rtpengine_packets_total\{type="userspace"\}/ { p = $2 } /^rtpengine_sessions\{type="own"\}/ { n = $2 } END { printf "%d %d - -\n", p, n }'
}

# Counters just updated, and when: the box publishes its calls table once a second,
# so its counters are read until they move (at most 2 s, every 0.05 s); rtpengine's
# move with every packet. Sets fresh_p and fresh_t.
fresh() {
  local first; first=$("${1}_packets")
  local deadline; deadline=$(echo "$(now) + 2" | bc)
  while :; do
    fresh_p=$("${1}_packets"); fresh_t=$(now)
    [[ ${fresh_p%% *} != "${first%% *}" ]] && return
    [[ $(echo "$fresh_t > $deadline" | bc) == 1 ]] && return
    sleep 0.05
  done
}

# One load of $1 calls against the SIP port $2, relay kind $3 (box|rtpe) with pid $4.
# Sets result to "packets cpu_s pkts_per_cpu_s loss% calls_up ok_calls relay_drops callee_drops"
# (not printed: a command substitution's subshell would keep sipp's pid from the cleanup).
measure() {
  local calls=$1 sip_port=$2 kind=$3 pid=$4
  local ramp=$(( (calls + RATE - 1) / RATE ))
  local hold_ms=$(( (ramp + WINDOW + 8) * 1000 ))
  # One caller (and one sipp) per 10 calls: the box allows 16 calls per user.
  local stats=() uacs=() g groups=$(( (calls + 9) / 10 ))
  for g in $(seq 1 "$groups"); do
    local n=$(( g < groups ? 10 : calls - 10 * (groups - 1) ))
    local stat="$work/stat-$kind-$calls-$g-$(date +%s%N).csv"
    stats+=("$stat")
    (cd "$work" && exec sipp "127.0.0.1:$sip_port" -sf "$ROOT/tests/sipp/media_uac.xml" -i 127.0.0.1 \
       -p "$(free_port)" -mp "$(free_port)" -s "$((1000 + g))" -au "$((1000 + g))" -ap bench-secret-1 -key domain branch.example -key number 95551234 \
       -r "$(( (RATE + groups - 1) / groups ))" -m "$n" -l "$n" -d "$hold_ms" -timeout "$((hold_ms / 1000 + ramp + 60))s" -nostdin \
       -trace_stat -stf "$stat" -trace_err -error_file "$work/uac-err-$g.log" >/dev/null 2>&1) &
    uacs+=($!); started+=($!)
  done
  # Until every call is up (or the ramp is long over), then a second for the media to settle.
  local deadline=$((SECONDS + ramp + 15)) up=0
  while ((SECONDS < deadline)); do
    up=$("${kind}_packets" | awk '{print $2}')
    ((up >= calls)) && break
    sleep 0.5
  done
  sleep 1
  local p1 p2 t1 t2 c1 c2 u1 u2 r1 r2 d1 d2
  r1=$(socket_drops "$relay_lo" "$relay_hi"); d1=$(socket_drops "$uas_media" "$uas_media")
  fresh "$kind"; t1=$fresh_t; p1=$fresh_p; c1=$(cpu_ticks "$pid"); u1=$(now)
  sleep "$WINDOW" & wait $!   # (a trap runs at once, not after a foreground sleep)
  fresh "$kind"; t2=$fresh_t; p2=$fresh_p; c2=$(cpu_ticks "$pid"); u2=$(now)
  r2=$(socket_drops "$relay_lo" "$relay_hi"); d2=$(socket_drops "$uas_media" "$uas_media")
  wait "${uacs[@]}" 2>/dev/null || true
  local ok=0 f; for f in "${stats[@]}"; do ok=$((ok + $(tail -1 "$f" 2>/dev/null | awk -F';' '{print $16 + 0}'))); done
  local packets=$(( ${p2%% *} - ${p1%% *} ))
  # Packets per second over the packet window, CPU seconds per second over the CPU window.
  local pps cpu_rate cpu_s
  pps=$(echo "$packets / ($t2 - $t1)" | bc -l)
  cpu_rate=$(echo "($c2 - $c1) / $hz / ($u2 - $u1)" | bc -l)
  cpu_s=$(echo "($c2 - $c1) / $hz" | bc -l)
  local per_cpu loss
  per_cpu=$(if [[ $c2 == "$c1" ]]; then echo 0; else echo "$pps / $cpu_rate" | bc -l; fi)
  loss=$(echo "100 * (1 - $pps / ($calls * 100))" | bc -l)
  result="$packets $cpu_s $per_cpu $loss $up ${ok:-0} $((r2 - r1)) $((d2 - d1))"
}

start_rtpengine() {
  rtpe_ng=$(free_port); rtpe_http=$(free_port)
  local base; base=$(free_range 2000)
  relay_lo=$base; relay_hi=$((base + 1999))
  rtpengine --config-file=none --foreground --table=-1 --interface=127.0.0.1 \
    --listen-ng="127.0.0.1:$rtpe_ng" --listen-http="127.0.0.1:$rtpe_http" \
    --port-min="$base" --port-max="$((base + 1999))" --log-stderr --log-level=4 >"$work/rtpengine.log" 2>&1 &
  rtpe_pid=$!; started+=($rtpe_pid)
  local i
  for i in $(seq 50); do curl -sf "http://127.0.0.1:$rtpe_http/metrics" >/dev/null && break; sleep 0.1; done
  kam_port=$(free_port)
  cat >"$work/kamailio.cfg" <<CFG
#!KAMAILIO
children=2
listen=udp:127.0.0.1:$kam_port
log_stderror=yes
debug=0
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "auth.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "rtpengine.so"
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:$rtpe_ng")
request_route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (has_totag()) {
    if (loose_route()) {
      if (is_method("BYE")) rtpengine_delete();
      t_relay(); exit;
    }
    if (is_method("ACK")) { if (t_check_trans()) t_relay(); exit; }
    sl_send_reply("404", "Not here"); exit;
  }
  if (is_method("CANCEL")) { if (t_check_trans()) t_relay(); exit; }
  if (t_check_trans()) { t_relay(); exit; }
  if (is_method("INVITE") && !pv_proxy_authenticate("branch.example", "bench-secret-1", "0")) {
    proxy_challenge("branch.example", "1"); exit;
  }
  consume_credentials();
  record_route();
  if (has_body("application/sdp")) rtpengine_offer();
  t_on_reply("MEDIA");
  \$du = "sip:127.0.0.1:$uas_port";
  t_relay();
}
onreply_route[MEDIA] {
  if (has_body("application/sdp")) rtpengine_answer();
}
CFG
  kamailio -f "$work/kamailio.cfg" -DD -E -m 64 -M 8 >"$work/kamailio.log" 2>&1 &
  kam_pid=$!; started+=($kam_pid)
  sleep 1.5
  kill -0 "$kam_pid" 2>/dev/null || { echo "bench media: Kamailio did not start:" >&2; tail -20 "$work/kamailio.log" >&2; exit 1; }
}
stop_rtpengine() {
  kill "$kam_pid" "$rtpe_pid" 2>/dev/null || true
  wait "$kam_pid" "$rtpe_pid" 2>/dev/null || true
}

start_branchgate() {
  bg_port=$(free_port); admin_port=$(free_port)
  local base; base=$(free_range 2000)
  relay_lo=$base; relay_hi=$((base + 1999))
  cat >"$work/provision.json" <<JSON
{"admin": {"password": "bench-password-1"},
 "network": {"admin_bind": "127.0.0.1", "admin_https_port": $admin_port, "admin_http_port": 0},
 "turn": {"enabled": false},
 "media": {"rtp_port_min": $base, "rtp_port_max": $((base + 1999))},
 "sip": {"udp_port": $bg_port, "tcp_port": $bg_port, "tls_port": $(free_port), "domain": "branch.example",
         "users": [${users_json%,}],
         "trunks": [{"name": "uas", "host": "127.0.0.1", "port": $uas_port, "keepalive_seconds": 0}],
         "routes": [{"prefix": "9", "strip": 1, "trunk": "uas"}]}}
JSON
  start_box
  started+=("$bg_pid")
  cookie=$(curl -sk -D - -o /dev/null -H 'content-type: application/json' \
    -d '{"username": "admin", "password": "bench-password-1"}' "https://127.0.0.1:$admin_port/api/v1/session" |
    grep -i '^set-cookie:' | sed -E 's/^[^:]*: *([^;]*).*/\1/' | tr -d '\r' | head -1)
  [[ -n $cookie ]] || { echo "bench media: could not log in to the box's admin API" >&2; exit 1; }
}
stop_branchgate() { kill "$bg_pid" 2>/dev/null || true; wait "$bg_pid" 2>/dev/null || true; }

declare -A results   # "kind calls" -> result lines, one per round
for round in $(seq 1 "$ROUNDS"); do
  start_rtpengine
  for n in $LOADS; do measure "$n" "$kam_port" rtpe "$rtpe_pid"; results["rtpe $n"]+="$result"$'\n'; done
  stop_rtpengine
  start_branchgate
  for n in $LOADS; do measure "$n" "$bg_port" box "$bg_pid"; results["box $n"]+="$result"$'\n'; done
  stop_branchgate
done

med() { local lines; mapfile -t lines < <(printf '%s' "${results[$2 $3]}"); column "$1" "${lines[@]}"; }
echo "media forwarding: N concurrent calls, G.711 both ways at 50 packets/s per direction, ${WINDOW} s steady-state window (no signalling in it); median of $ROUNDS alternating rounds"
printf '%6s  %-10s %10s %7s %11s %7s %6s %6s %8s %7s\n' calls relay packets "CPU s" "pkts/CPU-s" "loss %" up ok "drops" "callee"
for n in $LOADS; do
  for kind in box rtpe; do
    name=$([[ $kind == box ]] && echo branchgate || echo rtpengine)
    printf '%6s  %-10s %10.0f %7.2f %11.0f %7.2f %6.0f %6.0f %8.0f %7.0f\n' "$n" "$name" \
      "$(med 1 $kind "$n")" "$(med 2 $kind "$n")" "$(med 3 $kind "$n")" "$(med 4 $kind "$n")" \
      "$(med 5 $kind "$n")" "$(med 6 $kind "$n")" "$(med 7 $kind "$n")" "$(med 8 $kind "$n")"
  done
  b=$(med 3 box "$n"); r=$(med 3 rtpe "$n")
  printf '%6s  %-10s %s\n' "$n" "ratio" "branchgate / rtpengine packets per CPU-second = $(printf '%.2f' "$(echo "$b / $r" | bc -l)") (goal >= 1.5)"
done
echo "columns: packets relayed in the window (both directions), relay CPU s in it, loss against N x 100 packets/s offered,"
echo "calls up at the window's start, calls completed by sipp, receive-buffer drops on the relay's sockets and on the callee's media socket in the window"
for n in $LOADS; do
  echo "raw $n: branchgate $(printf '%s' "${results[box $n]}" | tr '\n' '|') rtpengine $(printf '%s' "${results[rtpe $n]}" | tr '\n' '|')"
done
