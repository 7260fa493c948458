#!/usr/bin/env bash
# Builds static release binaries of perch for 64-bit and 32-bit ARM, prints their stripped sizes,
# and runs each under qemu-user: start it, let it scrape itself, query `up`.
#
#   cross/build.sh            build, report sizes, smoke-test under qemu
#   cross/build.sh --no-run   build and report sizes only
#
# Two binaries per target: `perch`, the board binary, built without the `tls` feature
# (`--no-default-features`: no `scheme: https`) so that it stays within the 4 MiB budget
# (checked below), and `perch-tls`, with the default features (https scrapes), larger.
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

targets="aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf"
for target in $targets; do
  # The TLS build first, kept as perch-tls; then the board binary takes the name perch.
  echo "+ cargo build --release --locked --target $target --bin perch"
  cargo build --release --locked --target "$target" --bin perch
  cp "target/$target/release/perch" "target/$target/release/perch-tls"
  echo "+ cargo build --release --locked --target $target --bin perch --no-default-features"
  cargo build --release --locked --target "$target" --bin perch --no-default-features
done

budget=4194304
over=0
echo
echo "stripped sizes (release profile strips symbols); budget for perch: $budget bytes (4 MiB):"
for target in $targets; do
  for name in perch perch-tls; do
    bin="target/$target/release/$name"
    size=$(stat -c %s "$bin")
    printf '  %-32s %-9s %9d bytes (%s MiB)\n' "$target" "$name" "$size" \
      "$(awk -v b="$size" 'BEGIN{printf "%.2f", b/1048576}')"
    if [ "$name" = perch ] && [ "$size" -gt $budget ]; then
      echo "    over the budget by $((size - budget)) bytes"
      over=1
    fi
  done
  file "target/$target/release/perch" 2>/dev/null | sed 's/^/    /' || true
done
[ $over = 0 ] || { echo "FAILED: a board binary is over 4 MiB"; exit 1; }

[ $run = 1 ] || exit 0

# An https target for the TLS smoke test: answers every GET with one sample, keep-alive, with
# tests/data/tls/server.crt. Arguments: port, certificate, key.
https_target='
import http.server, ssl, sys
class Metrics(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"tls_smoke 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Metrics)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
'

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# smoke QEMU BINARY [tls]: the binary scrapes itself; with `tls`, also an https target.
smoke() {
  local qemu=$1 bin=$2 tls=${3:-} dir port pid ok=0 tport tpid=
  dir=$(mktemp -d)
  port=$(free_port)
  cat > "$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: perch
    static_configs:
      - targets: ["127.0.0.1:$port"]
YML
  local want=('"job":"perch"},"value":\[[0-9.]*,"1"\]')
  if [ -n "$tls" ]; then
    tport=$(free_port)
    python3 -c "$https_target" "$tport" tests/data/tls/server.crt tests/data/tls/server.key &
    tpid=$!
    cat >> "$dir/prometheus.yml" <<YML
  - job_name: https
    scheme: https
    tls_config:
      ca_file: $PWD/tests/data/tls/ca.crt
    static_configs:
      - targets: ["localhost:$tport"]
YML
    want+=('"job":"https"},"value":\[[0-9.]*,"1"\]')
  fi
  echo "+ $qemu $bin --config.file $dir/prometheus.yml --web.listen-address 127.0.0.1:$port"
  "$qemu" "$bin" --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/data" \
    --web.listen-address "127.0.0.1:$port" 2>"$dir/log" &
  pid=$!
  for _ in $(seq 1 120); do
    sleep 0.5
    answer=$(curl -s "http://127.0.0.1:$port/api/v1/query?query=up" || true)
    ok=1
    for w in "${want[@]}"; do echo "$answer" | grep -q "$w" || ok=0; done
    [ $ok = 1 ] && break
  done
  echo "  up: ${answer:-no answer}"
  kill -TERM $pid; wait $pid || { echo "  exit status $? after SIGTERM"; ok=0; }
  [ -z "$tpid" ] || { kill $tpid; wait $tpid 2>/dev/null || true; }
  if [ $ok != 1 ]; then echo "FAILED under $qemu; log:"; cat "$dir/log"; rm -rf "$dir"; return 1; fi
  rm -rf "$dir"
  echo "  ok: scraped itself${tls:+ and an https target} under $qemu"
}
smoke qemu-aarch64 target/aarch64-unknown-linux-musl/release/perch
smoke qemu-arm target/armv7-unknown-linux-gnueabihf/release/perch
smoke qemu-aarch64 target/aarch64-unknown-linux-musl/release/perch-tls tls
smoke qemu-arm target/armv7-unknown-linux-gnueabihf/release/perch-tls tls
