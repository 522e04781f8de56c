# Sourced by .ci/run: stopping podman's Docker-compatible API service, and nothing else. The shared
# container-base.sh starts it (podman system service … unix:///var/run/docker.sock) without a pid file, so it is
# found by the socket it listens on, and ended by that pid only: a pattern such as `pkill -f "podman system service"`
# would also end any other process whose command line happens to match, another user's service or a test's included.

# The pid of the process named podman that listens on the unix socket $1 (ss lists listeners with their process);
# empty when nothing does, or when something else serves it (a real dockerd is never touched).
podman_api_pid() {
  ss -xlpn 2>/dev/null | awk -v socket="$1" '$5 == socket && match($0, /\("podman",pid=[0-9]+/) { print substr($0, RSTART + 14, RLENGTH - 14); exit }'
}

# Ends podman's API service on socket $1 (TERM, then KILL after 5 s, to that pid only) and waits until it is gone.
# Returns 1, saying why, when there is no such service.
stop_podman_api() {
  local socket=$1 pid
  pid="$(podman_api_pid "$socket")"
  if [[ -z $pid ]]; then
    echo "ci: no podman API service listens on $socket; nothing was stopped" >&2
    return 1
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "ci: podman's API service (pid $pid) did not stop on SIGTERM within 5 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}
