#!/usr/bin/env bash
# The soak: mixed Jitsi traffic through the router for ten minutes (room pages, config.js, BOSH,
# WebSockets opening and closing, new rooms), with a node going down and coming back every
# 90 s, a config reload every minute and a burst of 500 silent TLS connections every two
# minutes. Reports split rooms, unexplained 5xx, and the router's memory and open files after
# warm-up and once quiet; exits 1 unless there are no splits, no unexplained 5xx, and memory and
# open files came back within 10 %. See benches/soak.rs.
#
#   benches/soak.sh [minutes, default 10]
#   JITSI_ROUTER_BIN=path/to/jitsi-router benches/soak.sh   (a build other than this tree's)
#
# Loopback only (clients from 127.0.0.2–9); temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --quiet --bench soak -- "${1:-10}"
