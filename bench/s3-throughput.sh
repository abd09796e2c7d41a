#!/usr/bin/env bash
# Throughput of `aws s3 cp` into sluice's S3 endpoint against a plain `cp` of the same data
# onto the same disk, alternating, several runs each. Also the server's peak RSS, and the
# same uploads into a null sink (examples/s3_null_sink: an S3 server that checks, hashes and
# stores nothing), which is what the client alone costs: the ceiling for any server here.
# usage: bench/s3-throughput.sh [SLUICE_BINARY] [RUNS] [BIG_MIB] [SMALL_FILES]
# (the null sink is taken from examples/ beside the binary: cargo build --release --examples)
set -euo pipefail
bin=${1:-target/release/sluice}
runs=${2:-3}
big_mib=${3:-1024}
small_files=${4:-1000}
work=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
sink_bin="$(dirname "$bin")/examples/s3_null_sink"
trap 'kill $pid $sink_pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$sink_bin" > "$work/sink.addr" &
sink_pid=$!
until [ -s "$work/sink.addr" ]; do sleep 0.05; done
sink=$(cat "$work/sink.addr")
"$bin" init "$work/p" >/dev/null
"$bin" -p "$work/p/sluice.toml" up --http-port 0 --s3-port 0 > "$work/up.log" 2>/dev/null &
pid=$!
until grep -q 's3    ' "$work/up.log" 2>/dev/null; do sleep 0.05; done
endpoint=$(grep 's3    ' "$work/up.log" | awk '{print $2}')
export AWS_ACCESS_KEY_ID=$(grep -m1 '^access_key_id' "$work/p/sluice.toml" | cut -d'"' -f2)
export AWS_SECRET_ACCESS_KEY=$(grep -m1 '^secret_access_key' "$work/p/sluice.toml" | cut -d'"' -f2)
export AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_CA_BUNDLE
aws() { command aws --endpoint-url "$endpoint" --only-show-errors "$@"; }

head -c $((big_mib * 1048576)) /dev/urandom > "$work/big.bin"
mkdir -p "$work/small"
for i in $(seq 1 "$small_files"); do head -c 10240 /dev/urandom > "$work/small/f$i.bin"; done

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -a cp_big s3_big cp_small s3_small client_cpu server_cpu sink_big sink_small sink_client_cpu
cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
for r in $(seq 1 "$runs"); do
  t=$(now); cp "$work/big.bin" "$work/big.copy"; sync -f "$work/big.copy"; cp_big+=($(echo "$(now) - $t" | bc)); rm -f "$work/big.copy"
  before=$(cpu_of $pid)
  t=$(now); /usr/bin/time -f '%U %S' -o "$work/client.time" "$(command -v aws)" --endpoint-url "$endpoint" --only-show-errors s3 cp "$work/big.bin" "s3://raw/bench/big-$r.bin"; s3_big+=($(echo "$(now) - $t" | bc))
  server_cpu+=($(echo "$(cpu_of $pid) - $before" | bc))
  client_cpu+=($(awk '{print $1 + $2}' "$work/client.time"))
  t=$(now); cp -r "$work/small" "$work/small.copy"; sync -f "$work/small.copy"; cp_small+=($(echo "$(now) - $t" | bc)); rm -rf "$work/small.copy"
  t=$(now); aws s3 cp --recursive "$work/small" "s3://raw/bench/small-$r/"; s3_small+=($(echo "$(now) - $t" | bc))
  t=$(now); /usr/bin/time -f '%U %S' -o "$work/sink-client.time" "$(command -v aws)" --endpoint-url "$sink" --only-show-errors s3 cp "$work/big.bin" "s3://raw/bench/big-$r.bin"; sink_big+=($(echo "$(now) - $t" | bc))
  sink_client_cpu+=($(awk '{print $1 + $2}' "$work/sink-client.time"))
  t=$(now); command aws --endpoint-url "$sink" --only-show-errors s3 cp --recursive "$work/small" "s3://raw/bench/small-$r/"; sink_small+=($(echo "$(now) - $t" | bc))
done
rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
m() { printf '%s\n' "$@" | median; }
mb=$big_mib
cb=$(m "${cp_big[@]}"); sb=$(m "${s3_big[@]}"); cs=$(m "${cp_small[@]}"); ss=$(m "${s3_small[@]}")
nb=$(m "${sink_big[@]}"); ns=$(m "${sink_small[@]}")
printf 'case                          cp_s     s3_s    sink_s  cp_MiB/s  s3_MiB/s  s3/cp  sink/cp\n'
printf 'one %-4s MiB file            %-8.2f %-7.2f %-7.2f %-9.1f %-9.1f %-6.2f %.2f\n' "$mb" "$cb" "$sb" "$nb" "$(echo "$mb/$cb" | bc -l)" "$(echo "$mb/$sb" | bc -l)" "$(echo "$cb/$sb" | bc -l)" "$(echo "$cb/$nb" | bc -l)"
printf '%-5s files of 10 KiB          %-8.2f %-7.2f %-7.2f %-9.1f %-9.1f %-6.2f %.2f\n' "$small_files" "$cs" "$ss" "$ns" "$(echo "$small_files*10/1024/$cs" | bc -l)" "$(echo "$small_files*10/1024/$ss" | bc -l)" "$(echo "$cs/$ss" | bc -l)" "$(echo "$cs/$ns" | bc -l)"
echo "runs: $runs (medians); sluice peak RSS during the run: $((rss / 1024)) MiB"
echo "CPU seconds per big upload: aws CLI $(m "${client_cpu[@]}"), sluice $(m "${server_cpu[@]}") (wall $(m "${s3_big[@]}"), 2 cores); aws CLI into the null sink $(m "${sink_client_cpu[@]}")"
echo "all raw timings: cp_big=${cp_big[*]} s3_big=${s3_big[*]} sink_big=${sink_big[*]} cp_small=${cp_small[*]} s3_small=${s3_small[*]} sink_small=${sink_small[*]}"
