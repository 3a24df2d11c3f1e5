#!/usr/bin/env bash
# Load comparison on loopback: jitsi-router against HAProxy as meet.jit.si runs it (a stick table
# of rooms in front of consistent hashing bounded by hash-balance-factor 125, jitsi-router's own
# balance_factor; meet.jit.si's is 150, and the bound only places new rooms), the same HAProxy
# hashing alone without the table (`haproxy-hash`: cheaper, but a room moves whenever the bound
# moves its hash), and nginx (`hash $arg_room consistent`), all terminating TLS in front of the
# same three upstream "nodes" (nginx answering a small BOSH-like body). wrk drives BOSH-style
# requests over 10,000 rooms through each in turn; the table gives requests/s and latency with
# ratios against jitsi-router measured in the same round, and the CPU time each proxy used per
# request (user + system; steadier than requests/s on a shared machine).
# A last line gives jitsi-router's routing decision: its mean time by the router's own histogram
# and its share of the router's CPU per request.
#
#   benches/load.sh [seconds per run, default 10] [connections, default 50] [rounds, default 3]
#   JITSI_ROUTER_BIN=path/to/jitsi-router benches/load.sh   (a build other than this tree's)
#   NEW_CONNECTIONS=1 benches/load.sh   (every request on a new TLS connection: `Connection: close`,
#                                        so requests/s is full handshakes per second)
#   REDIRECT=1 benches/load.sh          (room-page GETs, each answered with a 307 to its node: the router
#                                        in redirect mode; HAProxy and nginx redirecting by a hash of
#                                        the path, HAProxy's `djb2`, nginx's `split_clients`)
#   WEBSOCKET=1 benches/load.sh         (connections = open signalling tunnels, each a closed loop of
#                                        200-byte text frames through the proxy to a WebSocket echo
#                                        node, examples/ws_load.rs: messages/s, round trip, CPU per
#                                        message)
#   RESUMED=1 benches/load.sh           (connections = browsers, each a closed loop of new TLS
#                                        connections, each resuming the one before, one BOSH POST each,
#                                        examples/tls_resume.rs: connections/s, their time, CPU per
#                                        connection, and the share resumed)
#
# Installs haproxy, nginx and wrk from Debian when missing. Loopback only; temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
connections="${2:-50}"
rounds="${3:-3}"

. benches/lib.sh
install_missing haproxy:/usr/sbin/haproxy nginx:/usr/sbin/nginx wrk:/usr/bin/wrk openssl:/usr/bin/openssl
start_bench
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

# Three upstream nodes: one nginx with three servers, or three WebSocket echo servers.
node_ports=("$(free_port)" "$(free_port)" "$(free_port)")
if [ "${WEBSOCKET:-}" = 1 ]; then
  cargo build --release --quiet --example ws_load
  ws_load="$PWD/target/release/examples/ws_load"
  for port in "${node_ports[@]}"; do "$ws_load" echo "127.0.0.1:$port" & pids+=($!); done
else
if [ "${RESUMED:-}" = 1 ]; then
  cargo build --release --quiet --example tls_resume
  tls_resume="$PWD/target/release/examples/tls_resume"
fi
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
fi

# jitsi-router.
router_port="$(free_port)"
admin_port="$(free_port)"
{
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$router_port" "$admin_port"
  printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem"
  printf '[log]\nformat = "text"\n'
  # wrk, from one address, stands for thousands of participants: lift the per-client caps.
  printf '[limits]\nnew_rooms_per_second = 1000000\nnew_room_burst = 1000000\nmax_connections_per_client = 100000\n'
  [ "${REDIRECT:-}" = 1 ] && printf '[routing]\nmode = "redirect"\n'
  i=0
  for port in "${node_ports[@]}"; do
    printf '[[nodes]]\nname = "node-%s"\nupstream = "http://127.0.0.1:%s"\npublic_url = "https://node-%s.example"\n' "$i" "$port" "$i"
    i=$((i + 1))
  done
} > "$work/router.toml"
RUST_LOG=warn "$router_bin" serve --config "$work/router.toml" 2>"$work/router.log" & pids+=($!)
router_pid=$!

# HAProxy: the room's node remembered in a stick table (meet.jit.si's `stick on` the room,
# lower-cased, `expire 5m`, from jitsi/infra-configuration's haproxy.cfg.j2), new rooms placed by
# consistent hashing on the room parameter, bounded load. A second frontend (`haproxy-hash`, the
# same process) hashes without the table. Redirects need no backend, so REDIRECT=1 has no second.
haproxy_port="$(free_port)"
haproxy_hash_port="$(free_port)"
{
  printf 'global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n'
  printf 'frontend fe\n  bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n  default_backend nodes\n' "$haproxy_port" "$work/haproxy.pem"
  if [ "${REDIRECT:-}" = 1 ]; then
    printf '  http-request set-var(txn.node) path,djb2,mod(%s)\n' "${#node_ports[@]}"
    printf '  http-request redirect location https://node-%%[var(txn.node)].example%%[capture.req.uri] code 307\n'
  else
    printf 'frontend fe_hash\n  bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n  default_backend nodes_hash\n' "$haproxy_hash_port" "$work/haproxy.pem"
  fi
  backends="nodes nodes_hash"
  [ "${REDIRECT:-}" = 1 ] && backends="nodes"
  for backend in $backends; do
    printf 'backend %s\n  balance url_param room\n  hash-type consistent\n  hash-balance-factor 125\n  http-reuse always\n' "$backend"
    if [ "$backend" = nodes ]; then
      printf '  stick-table type string len 200 size 200k expire 5m\n  stick on url_param(room),lower\n'
    fi
    i=0
    for port in "${node_ports[@]}"; do
      printf '  server node-%s 127.0.0.1:%s\n' "$i" "$port"
      i=$((i + 1))
    done
  done
} > "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
haproxy_pid=$!

# nginx: hash $arg_room consistent.
nginx_port="$(free_port)"
{
  echo "worker_processes 2; pid $work/proxy.pid; error_log $work/proxy.err; daemon off;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  echo "  upstream nodes { hash \$arg_room consistent; keepalive 64;"
  for port in "${node_ports[@]}"; do echo "    server 127.0.0.1:$port;"; done
  echo "  }"
  # TLS 1.3 as well, as nginx has by default since 1.23.4 (Debian 12's 1.22 offers only up to 1.2,
  # whose resumed handshakes skip the key exchange that TLS 1.3's still make).
  echo "  ssl_protocols TLSv1.2 TLSv1.3;"
  echo "  split_clients \$uri \$node { 33.3% node-0; 33.3% node-1; * node-2; }"
  echo "  server { listen 127.0.0.1:$nginx_port ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;"
  if [ "${REDIRECT:-}" = 1 ]; then
    echo "    location / { return 307 https://\$node.example\$request_uri; } }"
  else
    if [ "${WEBSOCKET:-}" = 1 ]; then
      echo "    location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_read_timeout 1h;"
      echo "      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection upgrade; } }"
    else
      echo "    location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    fi
  fi
  echo "}"
} > "$work/proxy.conf"
mkdir -p "$work/proxy"
nginx -c "$work/proxy.conf" -p "$work/proxy" & pids+=($!)
nginx_pid=$!

# The proxies compared, in the order of the table.
names=(jitsi-router haproxy nginx)
ports=("$router_port" "$haproxy_port" "$nginx_port")
proxy_pids=("$router_pid" "$haproxy_pid" "$nginx_pid")
logs=(router.log haproxy.log proxy.err)
if [ "${REDIRECT:-}" != 1 ]; then
  names+=(haproxy-hash); ports+=("$haproxy_hash_port"); proxy_pids+=("$haproxy_pid"); logs+=(haproxy.log)
fi

for k in "${!names[@]}"; do
  name="${names[$k]}" port="${ports[$k]}" log="${logs[$k]}"
  up=""
  for _ in $(seq 100); do
    if curl -sk --http1.1 -m 5 -o /dev/null "https://127.0.0.1:$port/http-bind?room=warmup"; then up=1; break; fi
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "benches/load.sh: $name did not come up on port $port:" >&2
    cat "$work/$log" >&2 2>/dev/null || true
    exit 1
  fi
done

# BOSH-style POSTs spread over 10,000 rooms (with NEW_CONNECTIONS=1, each on a new connection;
# with REDIRECT=1, GETs of the rooms' pages, as participants open a room link).
connection="keep-alive"
[ "${NEW_CONNECTIONS:-}" = 1 ] && connection="close"
method="POST"; target='"/http-bind?room=" .. room'; body="\"<body rid='1'/>\""
[ "${REDIRECT:-}" = 1 ] && { method="GET"; target='"/" .. room'; body="nil"; }
cat > "$work/rooms.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  local room = "room-" .. (counter * 7919 % 10000)
  return wrk.format("$method", $target,
    {["Content-Type"] = "text/xml", ["Connection"] = "$connection"}, $body)
end
LUA

# CPU time (user + system, clock ticks) of a process and its children (nginx's workers).
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(ps -o pid= --ppid "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# WEBSOCKET=1: the closed loop of examples/ws_load.rs instead of wrk.
run_websocket() {
  local name="$1" port="$2" pid="$3" before out
  before=$(cpu_ticks "$pid")
  out=$("$ws_load" drive "https://127.0.0.1:$port" "$connections" "$duration")
  read -r rate p50 p99 errors <<<"$out"
  [ "$errors" = 0 ] || echo "benches/load.sh: $name: $errors tunnels failed" >&2
  # Warm-up second included in the CPU: the same for every proxy.
  local cpu
  cpu=$(python3 -c "print(($(cpu_ticks "$pid") - $before) / $(getconf CLK_TCK) / ($rate * ($duration + 1)) * 1e6)")
  echo "$name $rate ${p50}us ${p99}us $cpu"
}

# RESUMED=1: the resuming browsers of examples/tls_resume.rs instead of wrk.
run_resumed() {
  local name="$1" port="$2" pid="$3" before out
  before=$(cpu_ticks "$pid")
  out=$("$tls_resume" drive "https://127.0.0.1:$port" "$connections" "$duration")
  read -r rate p50 p99 errors resumed <<<"$out"
  [ "$errors" = 0 ] || echo "benches/load.sh: $name: $errors connections failed" >&2
  echo "benches/load.sh: $name resumed $resumed % of its connections" >&2
  local cpu
  cpu=$(python3 -c "print(($(cpu_ticks "$pid") - $before) / $(getconf CLK_TCK) / ($rate * ($duration + 1)) * 1e6)")
  echo "$name $rate ${p50}us ${p99}us $cpu"
}

run() {
  local name="$1" port="$2" pid="$3" before
  if [ "${WEBSOCKET:-}" = 1 ]; then run_websocket "$@"; return; fi
  if [ "${RESUMED:-}" = 1 ]; then run_resumed "$@"; return; fi
  before=$(cpu_ticks "$pid")
  wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/rooms.lua" "https://127.0.0.1:$port" > "$work/$name.wrk"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk")
  # Only the expected answers count: an error answer is cheap and would flatter its proxy.
  if grep -q "Non-2xx or 3xx" "$work/$name.wrk"; then
    echo "benches/load.sh: $name answered errors: $(grep 'Non-2xx' "$work/$name.wrk")" >&2
  fi
  p50=$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")
  # CPU microseconds per request: how much of the shared machine the proxy itself used.
  local cpu
  cpu=$(python3 -c "print(($(cpu_ticks "$pid") - $before) / $(getconf CLK_TCK) / ($rps * $duration) * 1e6)")
  echo "$name $rps $p50 $p99 $cpu"
}

# Rounds, each running the proxies in a rotated order, so that a slow phase of a shared machine
# does not always fall on the same proxy; the table gives each proxy's median round and the range
# of its ratio to jitsi-router's round.
count=${#names[@]}
for round in $(seq 0 $((rounds - 1))); do
  for k in $(seq 0 $((count - 1))); do
    i=$(((k + round) % count))
    run "${names[$i]}" "${ports[$i]}" "${proxy_pids[$i]}" >> "$work/rounds.txt"
  done
done
# The router's own timing of its routing decisions (`jitsi_router_routing_decision_seconds`, every
# request of every round, warm-ups included), for their share of its CPU per request.
curl -s "http://127.0.0.1:$admin_port/metrics" > "$work/router.metrics" || true
python3 - "$work/rounds.txt" "$rounds" "$connection" "${REDIRECT:-0}" "${WEBSOCKET:-0}" "${RESUMED:-0}" "$work/router.metrics" "${names[*]}" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
rounds = int(sys.argv[2])
names = sys.argv[8].split()
by = {n: [r for r in rows if r[0] == n] for n in names}
base = [float(r[1]) for r in by["jitsi-router"]]
def ms(text):
    return float(text[:-2]) if text.endswith("ms") else float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-1]) * 1000
print(f"{rounds} rounds; median round per proxy; ratio = proxy / jitsi-router in the same round"
      + ("; every request on a new TLS connection" if sys.argv[3] == "close" else "")
      + ("; every request answered with a redirect" if sys.argv[4] == "1" else "")
      + ("; WebSocket tunnels, 200-byte frames echoed in a closed loop" if sys.argv[5] == "1" else "")
      + ("; every request on a new TLS connection resuming the client's TLS session from its connection before" if sys.argv[6] == "1" else ""))
unit = "messages/s" if sys.argv[5] == "1" else "conns/s" if sys.argv[6] == "1" else "requests/s"
per = "us/msg" if sys.argv[5] == "1" else "us/conn" if sys.argv[6] == "1" else "us/req"
print(f"{'proxy':<14} {unit:>12} {'p50':>9} {'p99':>9} {'vs jitsi-router':>16} {'ratio range':>14} {'CPU ' + per:>11}")
for n in names:
    rps = [float(r[1]) for r in by[n]]
    ratios = [a / b for a, b in zip(rps, base)]
    p50 = statistics.median(ms(r[2]) for r in by[n])
    p99 = statistics.median(ms(r[3]) for r in by[n])
    print(f"{n:<14} {statistics.median(rps):>12.0f} {p50:>7.2f}ms {p99:>7.2f}ms "
          f"{statistics.median(rps) / statistics.median(base):>15.2f}x "
          f"{min(ratios):>6.2f}-{max(ratios):.2f}x "
          f"{statistics.median(float(r[4]) for r in by[n]):>11.1f}")
metrics = dict(line.split()[:2] for line in open(sys.argv[7]) if line.startswith("jitsi_router_routing_decision_seconds_"))
decisions = float(metrics.get("jitsi_router_routing_decision_seconds_count", 0))
if decisions and sys.argv[5] != "1":
    mean_us = float(metrics["jitsi_router_routing_decision_seconds_sum"]) / decisions * 1e6
    cpu_us = statistics.median(float(r[4]) for r in by["jitsi-router"])
    print(f"jitsi-router's routing decision: {mean_us * 1000:.0f} ns mean over {decisions:.0f} decisions "
          f"(its own histogram, clock reads included), {100 * mean_us / cpu_us:.1f} % of its CPU per "
          + ("connection" if sys.argv[6] == "1" else "request"))
PY
