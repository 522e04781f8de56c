#!/usr/bin/env bash
# Builds both images, starts the compose stack with the sandboxed agent (--profile full) under a throwaway
# project name the way the README says (an env file with AUTH_TOKEN only: the relay makes the sandbox's own token),
# waits for the relay's health and the agent's (healthy only while connected), then passes real MCP tool calls
# through the containerized relay to the containerized agent (test/containers-client.ts): commands run as the
# unprivileged `agent` user, and a path outside the workspace is refused. It restarts the agent (its key, on a
# volume, still proves it is "sandbox"), and checks that an agent with a wrong token shows as unhealthy. Everything it
# started is removed on exit, pass or fail.
#
#   bash test/containers.sh        needs Docker (or podman's Docker API), Compose, and bun with `bun install` done
#
# It uses `docker compose` (v2) when present, else `docker-compose` (v1.28+). It never touches a stack you run
# yourself: its own project name, a free port, and a fresh token in a private temp env file, never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'containers: %s\n' "$*"; }
die() { printf 'containers: FAIL %s\n' "$*" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  die "the Docker engine is not answering (is it running? on this project's CI machine: ../shared/tools/container-base.sh)"
fi
command -v bun >/dev/null 2>&1 || die "bun is needed for the MCP client (https://bun.sh)"
[[ -d "$ROOT/node_modules/@modelcontextprotocol/sdk" ]] || die "run 'bun install' first (the MCP client needs the SDK)"

new_token() {
  if command -v openssl >/dev/null 2>&1; then openssl rand -hex 32; else od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; fi
}
free_port() {
  bun -e 'const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }); console.log(s.port); s.stop(true)'
}

WORK="$(mktemp -d)"
ENV_FILE="$WORK/env"
PROJECT="code-remote-test-$$"
PORT="$(free_port)"
AUTH_TOKEN="$(new_token)"
# The one-token flow: AUTH_TOKEN is all a user sets (the sandbox's token is made by the relay).
(umask 077 && printf 'AUTH_TOKEN=%s\nPORT=%s\n' "$AUTH_TOKEN" "$PORT" >"$ENV_FILE")
WRONG_AGENT="$PROJECT-wrong-token"

# Variables in the caller's shell would win over the env file in Compose's interpolation; leave them out.
compose() {
  env -u AUTH_TOKEN -u AGENT_TOKEN -u PORT -u PUBLIC_URL -u TAILSCALE_AUTHKEY -u INSTALL_TAILSCALE \
    "${COMPOSE[@]}" --project-name "$PROJECT" --env-file "$ENV_FILE" --file "$ROOT/docker-compose.yml" --profile full "$@"
}

cleanup() {
  local status=$?
  if ((status != 0)); then
    say "logs of the failed run:"
    compose logs --no-color --tail=60 >&2 || true
  fi
  say "removing project $PROJECT (containers, network, volumes)"
  docker rm -f "$WRONG_AGENT" >/dev/null 2>&1 || true
  compose down --volumes --remove-orphans >/dev/null 2>&1 || say "warning: '${COMPOSE[*]} -p $PROJECT down -v' failed; remove it by hand"
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
say "using ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')), project $PROJECT, port $PORT"

compose config --quiet || die "docker-compose.yml does not validate"
env -u AUTH_TOKEN "${COMPOSE[@]}" --env-file "$ENV_FILE" --file "$ROOT/docker-compose.yml" config --quiet \
  || die "docker-compose.yml does not validate without the full profile"

t=$SECONDS
say "building the server and agent images"
compose build >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; die "the build failed (log above)"; }
build_s=$((SECONDS - t))

t=$SECONDS
say "starting the stack"
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "'up -d' failed"; }
health=""
for _ in $(seq 120); do
  health="$(curl -fsS --max-time 2 "http://127.0.0.1:$PORT/health" 2>/dev/null)" && break
  health=""
  sleep 0.5
done
[[ -n "$health" ]] || die "the relay did not answer /health on 127.0.0.1:$PORT within 60 s"
say "ok   the relay answers /health: $health"
up_s=$((SECONDS - t))

server_uid="$(compose exec -T server id -u)"
[[ "$server_uid" != 0 ]] || die "the relay runs as root"
say "ok   the relay runs as uid $server_uid, not root"

# A container's health as `docker ps` shows it. Docker runs health checks by itself; podman without systemd runs them
# only when asked, so here it is asked (the same check, from the image's HEALTHCHECK) before the status is read.
health_of() {
  if command -v podman >/dev/null 2>&1 && podman container exists "$1" 2>/dev/null; then
    podman healthcheck run "$1" >/dev/null 2>&1 || true
  fi
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}no health check{{end}}' "$1"
}
# The container's status line as `docker ps` shows it, e.g. "Up 2 minutes (healthy)". podman's Docker API leaves the
# health out of it (podman 4.3), so on podman its own `ps` is asked.
ps_status() {
  if command -v podman >/dev/null 2>&1 && podman container exists "$1" 2>/dev/null; then
    podman ps --filter "id=$1" --format '{{.Status}}'
  else
    docker ps --filter "id=$1" --format '{{.Status}}'
  fi
}
# Waits up to $3 seconds for container $1 to report health $2.
wait_health() {
  local status=""
  for _ in $(seq "$3"); do
    status="$(health_of "$1")"
    [[ "$status" == "$2" ]] && return 0
    sleep 1
  done
  say "container $1 is '$status', not '$2', after $3 s"
  return 1
}

agent_id="$(compose ps -q agent)"
wait_health "$agent_id" healthy 90 || die "the sandboxed agent did not become healthy (connected) with AUTH_TOKEN as the only setting"
ps_status "$agent_id" | grep -q '(healthy)' || die "'ps' does not show the connected agent as healthy: $(ps_status "$agent_id")"
say "ok   the one-token flow: the sandboxed agent is healthy (connected with the token the relay made for it)"
agent_env="$(compose exec -T agent sh -c 'tr "\\0" "\\n" </proc/$(cat ~/.local/state/code-remote/sandbox/agent.pid)/environ')"
grep -q '^AGENT_TOKEN=crm_' <<<"$agent_env" || die "the sandboxed agent does not hold a per-machine token (crm_…)"
! grep -q '^AUTH_TOKEN=' <<<"$agent_env" || die "the client token reached the sandbox"
say "ok   the sandbox holds its own per-machine token and not the client token"

t=$SECONDS
RELAY_URL="http://127.0.0.1:$PORT" AUTH_TOKEN="$AUTH_TOKEN" bun "$ROOT/test/containers-client.ts"
client_s=$((SECONDS - t))

# Its key and command state are on a volume: after a restart it still proves it is "sandbox" and is admitted again.
compose restart agent >/dev/null 2>&1 || die "'restart agent' failed"
wait_health "$agent_id" healthy 90 || die "the sandboxed agent is not connected again after a restart"
say "ok   after a restart the agent keeps its key and token (state volume) and is healthy again"

# An agent whose token the relay refuses keeps running and retrying: its health check must say so. The check is the
# image's own; only its timing is shortened here, so the test need not wait Docker's default minutes.
network="$(docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$agent_id")"
wrong_id="$(docker run -d --name "$WRONG_AGENT" --network "$network" --cap-drop ALL --security-opt no-new-privileges:true \
  --health-interval 2s --health-retries 1 --health-start-period 1s \
  -e RELAY_URL=ws://server:8080/ws/agent -e MACHINE_NAME=wrong-token -e AGENT_TOKEN="crm_$(new_token)" \
  code-remote-agent)" || die "could not start an agent container with a wrong token"
wait_health "$wrong_id" unhealthy 60 || die "an agent with a wrong token is not shown as unhealthy"
ps_status "$wrong_id" | grep -q '(unhealthy)' || die "'ps' does not show the agent with a wrong token as unhealthy: $(ps_status "$wrong_id")"
say "ok   an agent with a wrong token runs but shows as unhealthy in docker ps"

compose exec -T server test -s /data/code-remote.db || die "no audit database on the data volume"
say "ok   the audit log is on the data volume (/data/code-remote.db)"

# The operator's commands, in the form the docs give for a container: they reach the relay's own database.
compose exec -T server bun run /app/server.ts audit --limit 5 | grep -q read_file \
  || die "'bun run /app/server.ts audit' in the container does not show the calls just made"
compose exec -T server bun run /app/server.ts audit verify >/dev/null || die "'audit verify' in the container failed"
say "ok   audit and audit verify run in the container (docker compose exec server bun run /app/server.ts …)"

# A graceful stop, as `docker compose stop` and Fly's kill_signal do it: SIGTERM reaches both processes
# through tini, and each says it is stopping instead of being killed at the deadline.
compose stop --timeout 10 >/dev/null 2>&1 || die "'stop' failed"
for service in server agent; do
  # Read whole, then searched: `logs | grep -q` fails under pipefail when grep stops reading before the logs end.
  service_logs="$(compose logs --no-color "$service" 2>/dev/null)"
  grep -q 'stopping signal="SIGTERM"' <<<"$service_logs" || die "the $service did not stop on SIGTERM"
done
say "ok   the relay and the agent stop gracefully on SIGTERM"

say "passed: build ${build_s} s, start and health ${up_s} s, tool calls ${client_s} s, total $((SECONDS - started)) s"
