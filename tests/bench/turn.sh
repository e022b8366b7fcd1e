#!/usr/bin/env bash
# ./x bench turn: coturn (Debian) and branchgate's TURN server under the same
# turnutils_uclient load, alternating, on loopback. Prints server CPU µs per
# relayed datagram, loss and RTT for both, and the ratio.
set -euo pipefail
BIN=${BRANCHGATE_BIN:?}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-60}
MESSAGES=${MESSAGES:-2000}
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
peer_port=$(port)
turnutils_peer -L 127.0.0.1 -p "$peer_port" >/dev/null 2>&1 &


# One load run against the server on $1 (pid $2): prints "µs/datagram loss% rtt_ms datagrams".
measure() {
  local turn_port=$1 pid=$2 before after out
  before=$(cpu_ticks "$pid")
  out=$(turnutils_uclient -u test -w secret -e 127.0.0.1 -r "$peer_port" -X -c -m "$CLIENTS" -n "$MESSAGES" -l 120 -z 1 \
        -p "$turn_port" 127.0.0.1 2>&1 || true)
  after=$(cpu_ticks "$pid")
  local sent lost rtt
  sent=$(echo "$out" | grep -oE 'tot_send_msgs=[0-9]+' | tail -1 | cut -d= -f2)
  lost=$(echo "$out" | grep -oE 'Total lost packets [0-9]+ \([0-9.]+%' | tail -1 | grep -oE '[0-9.]+%' | tr -d %)
  rtt=$(echo "$out" | grep -oE 'Average round trip delay [0-9.]+' | tail -1 | awk '{print $5}')
  sent=${sent:-0}
  # Each message crosses the server twice (client→peer, peer→client).
  local datagrams=$((sent * 2))
  if [[ $datagrams -eq 0 ]]; then echo "nan 100 nan 0"; return; fi
  echo "$(echo "($after - $before) * 1000000 / $hz / $datagrams" | bc -l) ${lost:-100} ${rtt:-nan} $datagrams"
}

start_coturn() {
  coturn_port=$(port)
  turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port="$coturn_port" --lt-cred-mech \
    --user=test:secret --realm=example.org --allow-loopback-peers --no-cli --no-tls --no-dtls \
    --min-port=50000 --max-port=60000 --log-file=stdout >"$work/coturn.log" 2>&1 &
  coturn_pid=$!
  sleep 1
}

start_branchgate() {
  bg_port=$(port)
  cat >"$work/provision.json" <<JSON
{"admin": {"password": "bench-password-1"},
 "network": {"admin_bind": "127.0.0.1", "admin_https_port": $(port), "admin_http_port": 0},
 "turn": {"udp_port": $bg_port, "tcp_port": $bg_port, "tls_port": $(port), "relay_ip": "127.0.0.1",
          "relay_port_min": 50000, "relay_port_max": 60000, "realm": "example.org", "user_quota": 10000, "total_quota": 10000,
          "users": [{"username": "test", "password": "secret"}], "allowed_peers": ["127.0.0.1/32"]}}
JSON
  start_box
}

declare -a coturn_results branchgate_results
for round in $(seq 1 "$ROUNDS"); do
  start_coturn
  coturn_results+=("$(measure "$coturn_port" "$coturn_pid")")
  kill "$coturn_pid"; wait "$coturn_pid" 2>/dev/null || true
  start_branchgate
  branchgate_results+=("$(measure "$bg_port" "$bg_pid")")
  kill "$bg_pid"; wait "$bg_pid" 2>/dev/null || true
done

c_cpu=$(column 1 "${coturn_results[@]}"); b_cpu=$(column 1 "${branchgate_results[@]}")
c_loss=$(column 2 "${coturn_results[@]}"); b_loss=$(column 2 "${branchgate_results[@]}")
c_rtt=$(column 3 "${coturn_results[@]}"); b_rtt=$(column 3 "${branchgate_results[@]}")
c_n=$(column 4 "${coturn_results[@]}"); b_n=$(column 4 "${branchgate_results[@]}")

echo "turn: $CLIENTS clients x $MESSAGES messages of 120 B every 1 ms, UDP, Send/Data + channels as uclient does; median of $ROUNDS alternating rounds"
printf '%-32s %12s %12s %8s\n' "" "branchgate" "coturn" "ratio"
printf '%-32s %12.2f %12.2f %8.2f\n' "server CPU µs / relayed datagram" "$b_cpu" "$c_cpu" "$(echo "$b_cpu / $c_cpu" | bc -l)"
printf '%-32s %11s%% %11s%%\n' "loss" "$b_loss" "$c_loss"
printf '%-32s %9s ms %9s ms\n' "average RTT" "$b_rtt" "$c_rtt"
printf '%-32s %12s %12s\n' "relayed datagrams" "$b_n" "$c_n"
echo "raw: branchgate ${branchgate_results[*]} | coturn ${coturn_results[*]}"
