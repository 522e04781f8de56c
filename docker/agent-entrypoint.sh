#!/bin/sh
# Entry point of the agent image (tini runs it as PID 1's child), and its health check (`… status`). It hands its
# arguments to code-remote-agent unchanged. Its one job: with AGENT_TOKEN unset and AGENT_TOKEN_FILE set, the token
# is read from that file. The compose sandbox works this way: the relay makes the sandbox's own token at its start
# (PROVISION_AGENT_TOKEN) and writes it to a volume both containers mount, so the user sets AUTH_TOKEN only. The
# daemon waits for the file (the relay may still be starting); a subcommand such as `status` does not. The token
# never goes to argv or a log.
set -eu

TOKEN_WAIT_S=60

log() { printf '%s agent-entrypoint %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

if [ -z "${AGENT_TOKEN:-}" ] && [ -n "${AGENT_TOKEN_FILE:-}" ]; then
  if [ "$#" -eq 0 ] && [ ! -s "$AGENT_TOKEN_FILE" ]; then
    log "waiting for the relay to write this agent's token to $AGENT_TOKEN_FILE"
    waited=0
    until [ -s "$AGENT_TOKEN_FILE" ]; do
      if [ "$waited" -ge $((TOKEN_WAIT_S * 5)) ]; then
        log "error: no token in $AGENT_TOKEN_FILE after ${TOKEN_WAIT_S} s. The relay writes it when it starts" \
          "(PROVISION_AGENT_TOKEN): is the server running? See: docker compose logs server"
        exit 1
      fi
      sleep 0.2
      waited=$((waited + 1))
    done
  fi
  if [ -r "$AGENT_TOKEN_FILE" ]; then
    AGENT_TOKEN=$(cat "$AGENT_TOKEN_FILE")
    export AGENT_TOKEN
  elif [ -e "$AGENT_TOKEN_FILE" ]; then
    log "error: cannot read $AGENT_TOKEN_FILE as uid $(id -u) (groups: $(id -G)): it must be readable by this agent" \
      "(the compose file gives the agent the relay's group for this)"
    exit 1
  fi
fi
unset AGENT_TOKEN_FILE
exec /usr/local/bin/code-remote-agent "$@"
