#!/usr/bin/env bash
# What the admin room listing costs proxied traffic: the router with a million pins (restored
# from a generated snapshot) in front of one nginx node, wrk sending keep-alive BOSH POSTs, first
# alone, then while a poller asks `GET /api/rooms?limit=10` every 3 s as the fleet dashboard does.
# Prints how long a listing takes and the proxied requests' p50, p99 and worst latency both ways.
#
#   benches/listing.sh [pins, default 1000000] [seconds per run, default 20] [connections, default 50]
#   JITSI_ROUTER_BIN=path/to/jitsi-router benches/listing.sh   (a build other than this tree's)
#
# Installs nginx and wrk from Debian when missing. Loopback only; temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
pins="${1:-1000000}"
duration="${2:-20}"
connections="${3:-50}"

. benches/lib.sh
install_missing nginx:/usr/sbin/nginx wrk:/usr/bin/wrk openssl:/usr/bin/openssl curl:/usr/bin/curl
start_bench
node_port="$(free_port)"
cat > "$work/node.conf" <<NGINX
worker_processes 1; pid $work/node.pid; error_log $work/node.err; daemon off;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$node_port; location / { return 200 '<body xmlns="http://jabber.org/protocol/httpbind"/>'; } }
}
NGINX
nginx -c "$work/node.conf" -p "$work" & pids+=($!)

python3 - "$work/pins.json" "$pins" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    json.dump({"version": 1, "pins": [{"room": f"room-{i}", "node": "node-0", "idle_ms": 0}
                                      for i in range(int(sys.argv[2]))]}, f)
PY
router_port="$(free_port)"
admin_port="$(free_port)"
cat > "$work/router.toml" <<TOML
[server]
listen = "127.0.0.1:$router_port"
admin_listen = "127.0.0.1:$admin_port"
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[routing]
pin_idle_timeout = "1h"
[pins]
snapshot_path = "$work/pins.json"
[[nodes]]
name = "node-0"
upstream = "http://127.0.0.1:$node_port"
TOML
RUST_LOG=info "$router_bin" serve --config "$work/router.toml" 2>"$work/router.log" & pids+=($!)
for _ in $(seq 600); do
  grep -q "listening" "$work/router.log" 2>/dev/null && break
  sleep 0.1
done
grep -h "pins restored" "$work/router.log" | sed 's/^.*INFO //' || true

# Keep-alive POSTs over the restored rooms.
cat > "$work/rooms.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/http-bind?room=room-" .. (counter * 7919 % 100000),
    {["Content-Type"] = "text/xml"}, "<body rid='1'/>")
end
LUA
listing() { curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$admin_port/api/rooms?limit=10"; }
echo "a listing of $pins rooms alone: $(listing) s, $(listing) s, $(listing) s"

run() {
  wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/rooms.lua" \
    "https://127.0.0.1:$router_port" > "$work/wrk.txt"
  local p50 p99 max rps
  p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  max=$(awk '$1 == "Latency" {print $4}' "$work/wrk.txt")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  printf '%-36s %10s %9s %9s %9s\n' "$1" "$rps" "$p50" "$p99" "$max"
}
printf '%-36s %10s %9s %9s %9s\n' "proxied keep-alive POSTs" "requests/s" "p50" "p99" "max"
run "alone"
( while :; do listing >> "$work/polled.txt"; echo >> "$work/polled.txt"; sleep 3; done ) & pids+=($!)
run "while the dashboard polls the rooms"
echo "listings during that run (s): $(tr '\n' ' ' < "$work/polled.txt")"
