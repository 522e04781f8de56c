#!/bin/sh
# Entry point of the server image (tini runs it as PID 1's child). It checks that the data directory is
# writable, joins a tailnet when TAILSCALE_AUTHKEY is set, and then replaces itself with the relay (the image's
# CMD), so the relay gets SIGTERM directly and stops gracefully. It never prints a secret.
set -eu

log() { printf '%s entrypoint %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Tailscale in userspace-networking mode: no TUN device, no extra capability, no root. Connections that reach
# this node over the tailnet are handed to local ports, so agents can dial ws://<tailnet name>:8080/ws/agent
# (plain ws inside WireGuard). State lives on the data volume, so the node keeps its name across restarts.
start_tailscale() {
  if ! command -v tailscaled >/dev/null 2>&1; then
    log "error: TAILSCALE_AUTHKEY is set but this image was built without Tailscale." \
      "Rebuild with --build-arg INSTALL_TAILSCALE=true, or unset TAILSCALE_AUTHKEY."
    exit 1
  fi
  state_dir="$data_dir/tailscale"
  mkdir -p "$state_dir"
  chmod 700 "$state_dir"
  socket="$state_dir/tailscaled.sock"
  tailscaled --tun=userspace-networking --statedir="$state_dir" --socket="$socket" &
  waited=0
  until [ -S "$socket" ]; do
    if [ "$waited" -ge 100 ]; then
      log "error: tailscaled did not start within 10 s"
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  # The key goes through a private file, not argv, where any process could read it in /proc/*/cmdline.
  key_file=$(umask 077 && mktemp)
  printf '%s' "$TAILSCALE_AUTHKEY" >"$key_file"
  if ! tailscale --socket="$socket" up --auth-key="file:$key_file" \
    --hostname="${TAILSCALE_HOSTNAME:-code-remote}" --timeout=60s; then
    rm -f "$key_file"
    log "error: could not join the tailnet (is TAILSCALE_AUTHKEY valid and not expired?)"
    exit 1
  fi
  rm -f "$key_file"
  log "joined the tailnet as ${TAILSCALE_HOSTNAME:-code-remote} ($(tailscale --socket="$socket" ip -4 2>/dev/null || echo 'address unknown'))"
}

# On Fly.io the public origin is known: https://<app>.fly.dev. Without it the relay would refuse requests whose
# Host is the app's name (its DNS-rebinding guard). Set PUBLIC_URL yourself for a custom domain.
if [ -z "${PUBLIC_URL:-}" ] && [ -n "${FLY_APP_NAME:-}" ]; then
  export PUBLIC_URL="https://${FLY_APP_NAME}.fly.dev"
fi

data_dir=$(dirname "${DATABASE_PATH:-/data/code-remote.db}")
if ! mkdir -p "$data_dir" 2>/dev/null || [ ! -w "$data_dir" ]; then
  log "error: $data_dir is not writable by uid $(id -u). For a bind mount, run on the host:" \
    "chown -R $(id -u):$(id -g) <the host directory>"
  exit 1
fi

if [ -n "${TAILSCALE_AUTHKEY:-}" ]; then
  start_tailscale
  # The relay turns its private-network gate on when Tailscale is, but it never sees the key (unset below), so
  # the default is set here. In userspace networking, tailscaled hands tailnet connections to the relay from
  # loopback, so loopback is admitted too; nothing else in this container forwards outside traffic to loopback
  # (Fly's proxy reaches the relay on the Machine's private address, which is refused).
  export REQUIRE_PRIVATE_NETWORK="${REQUIRE_PRIVATE_NETWORK:-true}"
  export PRIVATE_NETWORKS="${PRIVATE_NETWORKS:-100.64.0.0/10,fd7a:115c:a1e0::/48,127.0.0.1/32,::1/128}"
fi
# The relay has no use for the tailnet key; keep it out of its environment.
unset TAILSCALE_AUTHKEY
exec "$@"
