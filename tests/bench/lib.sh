# Shared by the benchmarks (sourced): free-ish ports, process CPU, medians, and
# starting branchgate from a provisioning file. Needs $BIN and $work.

port() { echo $((10000 + RANDOM % 9000)); }
hz=$(getconf CLK_TCK)
# User + system clock ticks of the processes given.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The median of column $1 of the result lines given after it.
column() { local i=$1; shift; printf '%s\n' "$@" | awk -v i="$i" '{print $i}' | median; }

# Starts branchgate with $work/provision.json on a fresh data directory; sets bg_pid.
start_box() {
  rm -rf "$work/data"
  RUST_LOG=warn "$BIN" run --data-dir "$work/data" --provision "$work/provision.json" >"$work/bg.log" 2>&1 &
  bg_pid=$!
  until grep -q "admin UI ready" "$work/bg.log"; do
    kill -0 "$bg_pid" 2>/dev/null || { echo "branchgate did not start:" >&2; cat "$work/bg.log" >&2; exit 1; }
    sleep 0.1
  done
  sleep 0.5
}
