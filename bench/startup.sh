#!/usr/bin/env bash
# Time from launching `sluice up` to its first answered HTTP request, over several runs.
# usage: bench/startup.sh [SLUICE_BINARY] [RUNS]
set -euo pipefail
bin=${1:-target/release/sluice}
runs=${2:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" init "$work/p" >/dev/null
# First start creates the tables; measure warm starts of an existing project, as users restart it.
times=()
for i in $(seq 0 "$runs"); do
  start=$(date +%s%N)
  "$bin" -p "$work/p/sluice.toml" up --http-port 0 > "$work/up.log" 2>/dev/null &
  pid=$!
  until base=$(grep -m1 'http  ' "$work/up.log" 2>/dev/null | awk '{print $2}') && [ -n "$base" ]; do sleep 0.002; done
  until curl -sf "$base/v1/health" >/dev/null; do sleep 0.002; done
  end=$(date +%s%N)
  kill $pid; wait $pid 2>/dev/null || true
  [ "$i" -gt 0 ] && times+=($(( (end - start) / 1000000 )))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "start-up to first request over ${#sorted[@]} runs: median ${sorted[$(( ${#sorted[@]} / 2 ))]} ms, min ${sorted[0]} ms, max ${sorted[-1]} ms"
