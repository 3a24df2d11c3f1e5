#!/usr/bin/env bash
# Load comparison on loopback: jitsi-router against HAProxy (stick-by-room consistent hashing with
# hash-balance-factor 125, as meet.jit.si runs it) and nginx (`hash $arg_room consistent`), all
# terminating TLS in front of the same three upstream "nodes" (nginx answering a small BOSH-like
# body). wrk drives BOSH-style requests over 10,000 rooms through each in turn; the table gives
# requests/s and latency with ratios against jitsi-router measured in the same run.
#
#   benches/load.sh [seconds per run, default 10] [connections, default 50]
#   JITSI_ROUTER_BIN=path/to/jitsi-router benches/load.sh   (a build other than this tree's)
#
# Installs haproxy, nginx and wrk from Debian when missing. Loopback only; temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-50}"

need=()
for entry in haproxy:/usr/sbin/haproxy nginx:/usr/sbin/nginx wrk:/usr/bin/wrk openssl:/usr/bin/openssl; do
  [ -e "${entry#*:}" ] || need+=("${entry%%:*}")
done
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# JITSI_ROUTER_BIN runs another build of the router (to compare two builds in one sitting).
router_bin="${JITSI_ROUTER_BIN:-}"
if [ -z "$router_bin" ]; then
  cargo build --release --quiet
  router_bin="$PWD/target/release/jitsi-router"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

# Three upstream nodes: one nginx with three servers.
node_ports=("$(free_port)" "$(free_port)" "$(free_port)")
{
  echo "worker_processes 1; pid $work/nodes.pid; error_log $work/nodes.err; daemon off;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  for port in "${node_ports[@]}"; do
    echo "  server { listen 127.0.0.1:$port; location / { return 200 '<body xmlns=\"http://jabber.org/protocol/httpbind\"/>'; } }"
  done
  echo "}"
} > "$work/nodes.conf"
nginx -c "$work/nodes.conf" -p "$work" & pids+=($!)

# jitsi-router.
router_port="$(free_port)"
{
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$router_port" "$(free_port)"
  printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem"
  printf '[log]\nformat = "text"\n'
  i=0
  for port in "${node_ports[@]}"; do
    printf '[[nodes]]\nname = "node-%s"\nupstream = "http://127.0.0.1:%s"\n' "$i" "$port"
    i=$((i + 1))
  done
} > "$work/router.toml"
RUST_LOG=warn "$router_bin" serve --config "$work/router.toml" 2>"$work/router.log" & pids+=($!)

# HAProxy: hash on the room parameter, consistent, bounded load.
haproxy_port="$(free_port)"
{
  printf 'global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n'
  printf 'frontend fe\n  bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n  default_backend nodes\n' "$haproxy_port" "$work/haproxy.pem"
  printf 'backend nodes\n  balance url_param room\n  hash-type consistent\n  hash-balance-factor 125\n  http-reuse always\n'
  i=0
  for port in "${node_ports[@]}"; do
    printf '  server node-%s 127.0.0.1:%s\n' "$i" "$port"
    i=$((i + 1))
  done
} > "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)

# nginx: hash $arg_room consistent.
nginx_port="$(free_port)"
{
  echo "worker_processes 2; pid $work/proxy.pid; error_log $work/proxy.err; daemon off;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  echo "  upstream nodes { hash \$arg_room consistent; keepalive 64;"
  for port in "${node_ports[@]}"; do echo "    server 127.0.0.1:$port;"; done
  echo "  }"
  echo "  server { listen 127.0.0.1:$nginx_port ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;"
  echo "    location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  echo "}"
} > "$work/proxy.conf"
mkdir -p "$work/proxy"
nginx -c "$work/proxy.conf" -p "$work/proxy" & pids+=($!)

for entry in "jitsi-router:$router_port:router.log" "haproxy:$haproxy_port:haproxy.log" "nginx:$nginx_port:proxy.err"; do
  IFS=: read -r name port log <<<"$entry"
  up=""
  for _ in $(seq 100); do
    if curl -sk -o /dev/null "https://127.0.0.1:$port/http-bind?room=warmup"; then up=1; break; fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "benches/load.sh: $name did not come up on port $port:" >&2
    cat "$work/$log" >&2 2>/dev/null || true
    exit 1
  fi
done

# BOSH-style POSTs spread over 10,000 rooms.
cat > "$work/rooms.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local room = "room-" .. (counter * 7919 % 10000)
  return wrk.format("POST", "/http-bind?room=" .. room, {["Content-Type"] = "text/xml"}, "<body rid='1'/>")
end
LUA

run() {
  local name="$1" port="$2"
  wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/rooms.lua" "https://127.0.0.1:$port" > "$work/$name.wrk"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")
  echo "$name $rps $p50 $p99"
}

results=("$(run jitsi-router "$router_port")" "$(run haproxy "$haproxy_port")" "$(run nginx "$nginx_port")")
base=$(echo "${results[0]}" | awk '{print $2}')
printf '%-14s %12s %10s %10s %18s\n' proxy "requests/s" p50 p99 "vs jitsi-router"
for line in "${results[@]}"; do
  set -- $line
  ratio=$(awk -v a="$2" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
  printf '%-14s %12s %10s %10s %17sx\n' "$1" "$2" "$3" "$4" "$ratio"
done
