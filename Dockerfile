# Code Remote images, two targets from one file:
#
#   docker build --target server -t code-remote-server .   the relay: bun running server.ts from source
#   docker build --target agent  -t code-remote-agent  .   the sandboxed agent: the compiled binary in a Debian
#                                                           box with developer tools, as an unprivileged user
#
# Only the two public bases are used (oven/bun:1 and debian:bookworm-slim). A build needs the npm registry (the
# lockfile's packages) and Debian's mirrors (apt); Tailscale's own repository only if you ask for it
# (INSTALL_TAILSCALE below, explained in docs/DEPLOYMENT.md).

# --- deps: production dependencies from the lockfile (shared by the agent build and the server) ---
FROM oven/bun:1 AS deps
WORKDIR /app
COPY package.json bun.lock ./
# --frozen-lockfile: the image gets exactly the versions CI tested, or the build fails.
RUN bun install --frozen-lockfile --production

# --- agent-build: the agent compiled for the platform this image is built for ---
FROM deps AS agent-build
# The agent's wing and what it imports (the contract and the logger): no relay code goes into the binary.
COPY agent.ts protocol.ts log.ts ./
COPY agent ./agent
COPY scripts/build.ts scripts/
# TARGETARCH is set by BuildKit and buildah (amd64, arm64); a builder that leaves it empty builds for the
# architecture it runs on. The native target needs no download: bun embeds its own runtime.
ARG TARGETARCH
RUN set -eu; \
    case "${TARGETARCH:-native}" in \
      amd64) target=linux-x64 ;; \
      arm64) target=linux-arm64 ;; \
      native) target=native ;; \
      *) echo "no agent build for architecture '${TARGETARCH}'; supported: amd64, arm64" >&2; exit 1 ;; \
    esac; \
    bun run scripts/build.ts --out /out "$target"; \
    mv /out/code-remote-agent-* /out/code-remote-agent; \
    /out/code-remote-agent --version

# --- server: the relay ---
FROM oven/bun:1 AS server

# Tailscale is off by default: its packages come from Tailscale's own apt repository, which a CI or an offline
# builder may not reach (ours cannot), and most deployments do not need it. Turn it on with
#   docker build --build-arg INSTALL_TAILSCALE=true ...   (or [build.args] in fly.toml)
# and set TAILSCALE_AUTHKEY at run time; docker/entrypoint.sh then joins the tailnet before starting the relay.
ARG INSTALL_TAILSCALE=false
# tini becomes PID 1: it forwards SIGTERM to the relay and reaps orphaned processes (bun does not).
RUN set -eu; \
    case "$INSTALL_TAILSCALE" in true|false) ;; *) echo "INSTALL_TAILSCALE must be true or false" >&2; exit 1 ;; esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini; \
    if [ "$INSTALL_TAILSCALE" = true ]; then \
      apt-get install -y --no-install-recommends ca-certificates curl; \
      curl -fsSL https://pkgs.tailscale.com/stable/debian/bookworm.noarmor.gpg -o /usr/share/keyrings/tailscale-archive-keyring.gpg; \
      curl -fsSL https://pkgs.tailscale.com/stable/debian/bookworm.tailscale-keyring.list -o /etc/apt/sources.list.d/tailscale.list; \
      apt-get update; \
      apt-get install -y --no-install-recommends tailscale; \
      apt-get purge -y curl; \
      apt-get autoremove -y; \
    fi; \
    rm -rf /var/lib/apt/lists/*

# A fixed numeric uid, so a bind-mounted /data can be chowned to it (chown -R 10001:10001 ./data) and
# platforms that check "runs as non-root" can see it without reading /etc/passwd.
# /agent-token: where PROVISION_AGENT_TOKEN leaves the compose sandbox's own token (docker-compose.yml mounts a
# volume there, which takes this owner and mode); the relay's group may read it, the sandbox joins that group.
RUN groupadd --gid 10001 relay \
 && useradd --uid 10001 --gid relay --home-dir /data --no-create-home --shell /usr/sbin/nologin relay \
 && mkdir -p /data /agent-token \
 && chown relay:relay /data /agent-token \
 && chmod 700 /data \
 && chmod 750 /agent-token

WORKDIR /app
# The code stays root-owned and read-only to the relay user: a compromised relay cannot rewrite itself.
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
# The relay's wing and what it imports: no agent code, so nothing in this image can run as an agent.
COPY server.ts protocol.ts log.ts ./
COPY relay ./relay
COPY docker/entrypoint.sh /usr/local/bin/code-remote-entrypoint

ENV HOST=0.0.0.0 \
    PORT=8080 \
    DATABASE_PATH=/data/code-remote.db
VOLUME /data
EXPOSE 8080
USER 10001:10001

# Uses bun itself (the image has no curl). /health answers without a token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["bun", "-e", "fetch(`http://127.0.0.1:${process.env.PORT || 8080}/health`).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# The relay stops gracefully on SIGTERM (fly.toml's kill_signal says the same).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/code-remote-entrypoint"]
CMD ["bun", "run", "/app/server.ts"]

# --- agent: the sandboxed agent ---
FROM debian:bookworm-slim AS agent
# What an assistant usually reaches for; build-essential and python3 make "build and test this" work.
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
      git curl jq ripgrep vim build-essential python3 procps tree unzip ca-certificates tini; \
    rm -rf /var/lib/apt/lists/*
# The state directory (command logs, and the key that proves this is the machine 'sandbox') and /agent-token (the
# relay's, as in the server stage) exist here with their owners, so volumes mounted on them start with the same.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash agent \
 && mkdir -p /home/agent/workspace /home/agent/.local/state/code-remote /agent-token \
 && chown agent:agent /home/agent/workspace /home/agent/.local /home/agent/.local/state /home/agent/.local/state/code-remote \
 && chmod 700 /home/agent/.local/state/code-remote \
 && chown 10001:10001 /agent-token \
 && chmod 750 /agent-token
COPY --from=agent-build /out/code-remote-agent /usr/local/bin/code-remote-agent
COPY docker/agent-entrypoint.sh /usr/local/bin/code-remote-agent-entrypoint

# The file tools reach only the workspace and /tmp. The shell tool is not confined by this list; what confines
# it is the container: the agent user, no capabilities (see docker-compose.yml), and only what is mounted here.
ENV ALLOWED_ROOTS=/home/agent/workspace:/tmp \
    MACHINE_NAME=sandbox \
    SHELL=/bin/bash
USER agent
WORKDIR /home/agent/workspace

# Healthy only while the agent runs and is connected to the relay (`status` exits 1 otherwise): an agent whose token
# is refused, or that keeps crashing, shows as unhealthy in `docker ps` / `docker compose ps` instead of "Up".
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/code-remote-agent-entrypoint", "status"]

# tini as PID 1: commands that leave background children behind are reaped instead of piling up as zombies. The
# entrypoint reads AGENT_TOKEN_FILE when AGENT_TOKEN is unset, then runs code-remote-agent with the arguments given.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/code-remote-agent-entrypoint"]
