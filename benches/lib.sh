# What the load scripts share (sourced by benches/load.sh and benches/listing.sh): Debian
# packages installed when missing, the router build to run, a temporary folder cleaned up at
# exit with every process started, a certificate, and free loopback ports.

# Installs the Debian packages, given as package:/path/it/installs, that are missing.
install_missing() {
  local need=() entry sudo=""
  for entry in "$@"; do
    [ -e "${entry#*:}" ] || need+=("${entry%%:*}")
  done
  [ "${#need[@]}" -gt 0 ] || return 0
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets `router_bin` (JITSI_ROUTER_BIN, to compare another build in one sitting, or this tree's
# release build), `work` (a temporary folder with a self-signed certificate for localhost,
# cert.pem and key.pem) and `pids` (append the processes started; they are stopped, and the
# folder removed, at exit).
start_bench() {
  router_bin="${JITSI_ROUTER_BIN:-}"
  if [ -z "$router_bin" ]; then
    cargo build --release --quiet
    router_bin="$PWD/target/release/jitsi-router"
  fi
  work="$(mktemp -d)"
  pids=()
  trap cleanup EXIT
  openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
