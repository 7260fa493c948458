#!/usr/bin/env bash
# Builds static release binaries of perch for 64-bit and 32-bit ARM, prints their stripped sizes,
# and runs each under qemu-user: start it, let it scrape itself, query `up`.
#
#   cross/build.sh            build, report sizes, smoke-test under qemu
#   cross/build.sh --no-run   build and report sizes only
#
# Targets (see cross/targets.txt): aarch64-unknown-linux-musl (static musl), and
# armv7-unknown-linux-gnueabihf linked statically (+crt-static), since rustup has no armv7 musl
# std here. Installs the Debian linkers and qemu-user with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
run=1
[ "${1:-}" = "--no-run" ] && run=0

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
if [ $run = 1 ]; then
  command -v qemu-arm >/dev/null || need+=(qemu-user)
  command -v curl >/dev/null || need+=(curl)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "+ apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "+ rustup target add aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
rustup target add aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf >/dev/null

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+crt-static"

for target in aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  echo "+ cargo build --release --locked --target $target"
  cargo build --release --locked --target "$target" --bin perch
done

echo
echo "stripped sizes (release profile strips symbols):"
for target in aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf; do
  bin="target/$target/release/perch"
  printf '  %-32s %9d bytes (%s MiB)\n' "$target" "$(stat -c %s "$bin")" \
    "$(awk -v b="$(stat -c %s "$bin")" 'BEGIN{printf "%.2f", b/1048576}')"
  file "$bin" 2>/dev/null | sed 's/^/    /' || true
done

[ $run = 1 ] || exit 0

smoke() {
  local qemu=$1 bin=$2 dir port pid ok=0
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: perch
    static_configs:
      - targets: ["127.0.0.1:$port"]
YML
  echo "+ $qemu $bin --config.file $dir/prometheus.yml --web.listen-address 127.0.0.1:$port"
  "$qemu" "$bin" --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/data" \
    --web.listen-address "127.0.0.1:$port" 2>"$dir/log" &
  pid=$!
  for _ in $(seq 1 120); do
    sleep 0.5
    answer=$(curl -s "http://127.0.0.1:$port/api/v1/query?query=up" || true)
    if echo "$answer" | grep -q '"job":"perch"},"value":\[[0-9.]*,"1"\]'; then ok=1; break; fi
  done
  echo "  up: ${answer:-no answer}"
  kill -TERM $pid; wait $pid || { echo "  exit status $? after SIGTERM"; ok=0; }
  if [ $ok != 1 ]; then echo "FAILED under $qemu; log:"; cat "$dir/log"; rm -rf "$dir"; return 1; fi
  rm -rf "$dir"
  echo "  ok: scraped itself under $qemu"
}
smoke qemu-aarch64 target/aarch64-unknown-linux-musl/release/perch
smoke qemu-arm target/armv7-unknown-linux-gnueabihf/release/perch
