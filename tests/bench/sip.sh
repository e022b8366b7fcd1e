#!/usr/bin/env bash
# ./x bench sip: the same sipp call load (INVITE with digest, answer, BYE; no media)
# through branchgate's B2BUA and through Kamailio (Debian) as a stateful proxy with
# digest auth, alternating, on loopback. Prints CPU ms per call of each, the ratio,
# and the calls that succeeded. Kamailio only relays signalling; the box also
# builds a second dialog per call and opens four media relay sockets per call.
set -euo pipefail
BIN=${BRANCHGATE_BIN:?}
ROUNDS=${ROUNDS:-2}
CALLS=${CALLS:-2000}
RATE=${RATE:-200}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  pkill -f "kamailio -f $work" 2>/dev/null || true
  pkill -f "sipp -sf $ROOT/tests/sipp/bench_uas.xml -i 127.0.0.1 -p ${uas_port:-x}" 2>/dev/null || true
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

uas_port=$(port)
(cd "$work" && sipp -sf "$ROOT/tests/sipp/bench_uas.xml" -i 127.0.0.1 -p "$uas_port" -nostdin -bg >/dev/null 2>&1) || true
sleep 0.5

# One load run against SIP at $1 (CPU of pids $2...): prints "ms/call succeeded".
measure() {
  local sip_port=$1; shift
  local before after out ok
  before=$(cpu_ticks "$@")
  out=$(cd "$work" && sipp "127.0.0.1:$sip_port" -sf "$ROOT/tests/sipp/bench_uac.xml" -i 127.0.0.1 -p "$(port)" \
        -s 1001 -au 1001 -ap bench-secret-1 -key domain branch.example -key number 95551234 \
        -r "$RATE" -m "$CALLS" -l 500 -timeout 120s -nostdin -trace_stat -stf "$work/stat.csv" -trace_err -error_file "$work/err.log" ${TRACE:+-trace_msg} 2>&1 || true)
  after=$(cpu_ticks "$@")
  ok=$(tail -1 "$work/stat.csv" | awk -F';' '{print $16}')
  mv "$work/stat.csv" "$work/stat-$(date +%s%N).csv" 2>/dev/null || true
  echo "$(echo "($after - $before) * 1000 / $hz / $CALLS" | bc -l) ${ok:-0}"
}

start_kamailio() {
  kam_port=$(port)
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
request_route {
  if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
  if (has_totag()) {
    if (loose_route()) { t_relay(); exit; }
    # An ACK of a (stateless) 407 or of an answered transaction.
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
  \$du = "sip:127.0.0.1:$uas_port";
  t_relay();
}
CFG
  kamailio -f "$work/kamailio.cfg" -DD -E -m 64 -M 8 >"$work/kamailio.log" 2>&1 &
  sleep 1.5
  kam_pids=$(pgrep -f "kamailio -f $work/kamailio.cfg" | tr '\n' ' ')
}

start_branchgate() {
  bg_port=$(port)
  cat >"$work/provision.json" <<JSON
{"admin": {"password": "bench-password-1"},
 "network": {"admin_bind": "127.0.0.1", "admin_https_port": $(port), "admin_http_port": 0},
 "turn": {"enabled": false},
 "sip": {"udp_port": $bg_port, "tcp_port": $bg_port, "tls_port": $(port), "domain": "branch.example",
         "users": [{"username": "1001", "password": "bench-secret-1"}],
         "trunks": [{"name": "uas", "host": "127.0.0.1", "port": $uas_port, "keepalive_seconds": 0}],
         "routes": [{"prefix": "9", "strip": 1, "trunk": "uas"}]}}
JSON
  start_box
}

declare -a kam_results bg_results
for round in $(seq 1 "$ROUNDS"); do
  start_kamailio
  # shellcheck disable=SC2086
  kam_results+=("$(measure "$kam_port" $kam_pids)")
  # shellcheck disable=SC2086
  kill $kam_pids 2>/dev/null || true; sleep 0.5
  start_branchgate
  bg_results+=("$(measure "$bg_port" "$bg_pid")")
  kill "$bg_pid"; wait "$bg_pid" 2>/dev/null || true
done

k_cpu=$(column 1 "${kam_results[@]}"); b_cpu=$(column 1 "${bg_results[@]}")
k_ok=$(column 2 "${kam_results[@]}"); b_ok=$(column 2 "${bg_results[@]}")

echo "sip: $CALLS calls at $RATE/s (INVITE + 407 digest + 200 + ACK + BYE, no media); median of $ROUNDS alternating rounds"
printf '%-34s %12s %12s %8s\n' "" "branchgate" "kamailio" "ratio"
printf '%-34s %12.3f %12.3f %8.2f\n' "server CPU ms / call" "$b_cpu" "$k_cpu" "$(echo "$b_cpu / $k_cpu" | bc -l)"
printf '%-34s %12s %12s\n' "successful calls" "$b_ok" "$k_ok"
echo "raw: branchgate ${bg_results[*]} | kamailio ${kam_results[*]}"
