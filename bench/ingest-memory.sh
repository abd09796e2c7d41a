#!/usr/bin/env bash
# Peak RSS of `sluice up` while it ingests one generated taxi file, for several sizes.
# usage: bench/ingest-memory.sh [SLUICE_BINARY] [ROWS...]   (default rows: 1000000 3000000)
# Prints: rows, file size, ingest seconds, peak RSS of the server process.
set -euo pipefail
bin=${1:-target/release/sluice}
shift || true
sizes=("${@:-1000000 3000000}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%-10s %-10s %-10s %-10s\n' rows file_MiB ingest_s peak_rss_MiB
for rows in ${sizes[@]}; do
  dir="$work/p$rows"
  "$bin" init "$dir" >/dev/null
  "$bin" generate --rows "$rows" --seed 1 "$dir/trips.csv" >/dev/null
  "$bin" -p "$dir/sluice.toml" up --http-port 0 > "$dir/up.log" 2>/dev/null &
  pid=$!
  until grep -q 'http  ' "$dir/up.log" 2>/dev/null; do sleep 0.05; done
  base=$(grep 'http  ' "$dir/up.log" | awk '{print $2}')
  start=$(date +%s.%N)
  curl -s -T "$dir/trips.csv" "$base/v1/objects/raw/landing/2024/01/trips.csv" >/dev/null
  until curl -s "$base/v1/status" | grep -q '"pending":0,"running":0'; do sleep 0.05; done
  end=$(date +%s.%N)
  rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill $pid; wait $pid 2>/dev/null || true
  printf '%-10s %-10.1f %-10.2f %-10.1f\n' "$rows" "$(echo "$(stat -c %s "$dir/trips.csv")/1048576" | bc -l)" "$(echo "$end - $start" | bc -l)" "$(echo "$rss/1024" | bc -l)"
done
