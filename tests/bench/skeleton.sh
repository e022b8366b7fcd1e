#!/usr/bin/env bash
# ./x bench skeleton: the daemon's footprint with nothing but the foundation running.
# Prints our figures beside the issue's targets (there is no third-party anchor for
# an admin skeleton; the targets are the anchor) and the ratio.
set -euo pipefail
BIN=${BRANCHGATE_BIN:?}
RUNS=${RUNS:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((10000 + RANDOM % 9000))
printf '{"admin":{"password":"bench-password-1"},"network":{"admin_bind":"127.0.0.1","admin_https_port":%d,"admin_http_port":%d}}' \
  "$port" $((port + 1)) > "$work/provision.json"

now_ms() { date +%s%3N; }
ready_ms=()
for i in $(seq 1 "$RUNS"); do
  rm -rf "$work/data"
  # Every run is a first start: the worst case (store created, certificate generated).
  start=$(now_ms)
  "$BIN" run --data-dir "$work/data" --provision "$work/provision.json" >/dev/null 2>&1 &
  pid=$!
  until curl -skf -o /dev/null "https://127.0.0.1:$port/api/v1/status"; do sleep 0.005; done
  ready_ms+=($(( $(now_ms) - start )))
  if [[ $i -lt $RUNS ]]; then kill -TERM $pid; wait $pid || true; fi
done
# Idle RSS: the last instance, after a login and a few page loads, left alone for 5 s.
curl -sk -c "$work/jar" -H 'content-type: application/json' -d '{"username":"admin","password":"bench-password-1"}' \
  "https://127.0.0.1:$port/api/v1/session" >/dev/null
for p in / /settings/sip /history /api/v1/config /api/v1/status; do curl -sk -b "$work/jar" -o /dev/null "https://127.0.0.1:$port$p"; done
sleep 5
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
size=$(stat -c %s "$BIN")
sorted=$(printf '%s\n' "${ready_ms[@]}" | sort -n)
median=$(echo "$sorted" | sed -n "$(( (RUNS + 1) / 2 ))p")

printf '%-34s %12s %12s %8s\n' "skeleton" "branchgate" "target" "ratio"
printf '%-34s %9.1f MB %9d MB %8.2f\n' "idle RSS" "$(echo "$rss_kib/1024" | bc -l)" 30 "$(echo "$rss_kib/1024/30" | bc -l)"
printf '%-34s %9d ms %9d ms %8.2f\n' "start to admin-ready (median of $RUNS)" "$median" 1000 "$(echo "$median/1000" | bc -l)"
printf '%-34s %9.1f MB %12s %8s\n' "stripped release binary" "$(echo "$size/1048576" | bc -l)" "-" "-"
echo "ready times (ms): ${ready_ms[*]}"
