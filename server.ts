// The Code Remote relay: one Bun.serve that speaks MCP to AI clients (Streamable HTTP at /mcp: 2026-07-28 without
// sessions, 2025 revisions in sessions; the legacy HTTP+SSE transport at /sse + /messages), accepts agent
// WebSockets at /ws/agent, authenticates every request, and writes an audit log to SQLite. It forwards each tool
// call to the named machine's agent and matches the answer by request id, in memory. It never runs commands itself, and it sees all traffic in clear (nothing is
// end-to-end encrypted between client and agent). `bun run server.ts --help` lists the subcommands and settings.
//
// This file is the table of contents: the routes and what each hands over to, startup and stop, and the
// subcommands. The parts live in relay/ (its README.md lists them in reading order).

import type { Server } from "bun";
import type { Database } from "bun:sqlite";
import type { AuthInfo } from "@modelcontextprotocol/server";
import { HEARTBEAT_CHECK_MS, HEARTBEAT_TIMEOUT_MS, MAX_FRAME_BYTES, VERSION } from "./protocol.ts";
import { Relay, type SocketData } from "./relay/agents.ts";
import { Approvals, approvalRoutes, isFormPost } from "./relay/approvals.ts";
import { AuditLog, auditFilter } from "./relay/audit.ts";
import { bearerToken, ClientAddresses, Guards, jsonRpcError } from "./relay/auth.ts";
import { ConfigError, ENV_HELP, loadConfig, type ServerConfig } from "./relay/config.ts";
import { AgentTokens, OAuthStore } from "./relay/credentials.ts";
import { Dashboard } from "./relay/dashboard.ts";
import { Enrolments, enrolmentRoutes } from "./relay/enrolments.ts";
import { MachineKeys } from "./relay/identity.ts";
import { Presence } from "./relay/presence.ts";
import { DEV_NO_MACHINE_MESSAGE, devAgentTokenFile, devBanner, devMachineName, devToken, LocalAgent, loopbackUrl } from "./relay/dev.ts";
import { keepAgentToken } from "./relay/handoff.ts";
import { CallLimits, FAILURE_SUMMARY_MS, FailureRecords, OWNER_SECRET_GLOBAL_LIMIT, Penalties } from "./relay/limits.ts";
import { TAILSCALE_NETWORKS } from "./relay/networks.ts";
import { AuthorizationServer, type ResourcePath } from "./relay/oauth.ts";
import { agentTokenCommand, auditCommand, machineKeyCommand, oauthClientsCommand } from "./relay/operator.ts";
import { assetResponse, errorPage, loginPage } from "./relay/pages.ts";
import { openDatabase } from "./relay/storage.ts";
import { CallsInFlight, mcpServerFactory, requestStateCodec } from "./relay/tools.ts";
import { IDLE_TIMEOUT_S, MAX_REQUEST_BODY_BYTES, McpEndpoint, SESSION_SWEEP_MS, SseSessions } from "./relay/transports.ts";
import { logger } from "./log.ts";

const log = logger("server");

/** How often the relay looks for revoked agent tokens and OAuth clients (revoking cuts them off within this). */
const REVOCATION_SWEEP_MS = 1_000;
/** How often expired OAuth consents and never-approved registrations are dropped. */
const OAUTH_SWEEP_MS = 60 * 1000;
/** On a graceful stop, how long to wait for calls in flight to be answered, then for answers to be written: both
 *  together stay inside the 5 s a platform (Fly, docker stop) gives before SIGKILL. */
const STOP_GRACE_MS = 2_000;
/** How often old audit events are pruned (also once at start). */
const AUDIT_PRUNE_EVERY_MS = 24 * 60 * 60 * 1000;
/** Bun's idle timeout on agent WebSockets: twice the heartbeat timeout (12 s), so that it never closes a link the
 *  heartbeat sweep keeps (Bun takes whole seconds, and rounds 1-7 up to 8). */
const WS_IDLE_TIMEOUT_S = Math.ceil((2 * HEARTBEAT_TIMEOUT_MS) / 1000);

// --- http: the one Bun.serve ---

export interface RunningServer {
  url: URL;
  relay: Relay;
  /** Runs the idle-session sweep now, as if the clock read `now` (it also runs every minute on its own). */
  sweepSessions(now?: number): void;
  stop(): Promise<void>;
}

export function startServer(config: ServerConfig): RunningServer {
  const db = openDatabase(config.databasePath);
  const audit = new AuditLog(db);
  const agentTokens = new AgentTokens(db);
  const presence = new Presence(db);
  const relay = new Relay(audit, (machine) => agentTokens.exists(machine), new MachineKeys(db), presence);
  relay.reconnectGraceMs = config.reconnectGraceS * 1000;
  const failures = new FailureRecords(audit);
  const penalties = new Penalties(failures);
  const ownerSecretPenalties = new Penalties(failures, OWNER_SECRET_GLOBAL_LIMIT);
  const callLimits = new CallLimits(config.callLimits);
  const oauth = new AuthorizationServer({
    store: new OAuthStore(db),
    ownerSecret: config.ownerSecret,
    publicUrl: config.publicUrl,
    penalties,
    ownerSecretPenalties,
    audit,
    endSessionsOf: (clientId) => endSessionsOf((principal) => principal === clientId),
    cimdTestCa: config.cimdTestCa,
  });
  const calls = new CallsInFlight();
  const approvals = new Approvals(audit, { publicUrl: config.publicUrl, webhook: config.approvalWebhook });
  const newServer = mcpServerFactory({ relay, audit, limits: callLimits, calls, approvals }, requestStateCodec(config.requestStateKey));
  const enrolments = new Enrolments(audit, { publicUrl: config.publicUrl });
  relay.enrolments = enrolments;
  const dashboard = new Dashboard({ ownerSecret: config.ownerSecret, publicUrl: config.publicUrl, relay, audit, agentTokens, oauth, ownerSecretPenalties, approvals });
  const mcpEndpoint = new McpEndpoint(newServer);
  const streamable = mcpEndpoint.sessions;
  const sse = new SseSessions(newServer);
  const endSessionsOf = (revoked: (principal: string) => boolean) => [streamable, sse, calls].forEach((open) => open.closeRevoked(revoked));
  /** OAuth clients whose access is gone (revoked by `oauth-clients revoke`, which changes only the database, or by
   *  a replayed token) lose their open sessions and calls too. "owner" is the static AUTH_TOKEN's principal. */
  const endRevokedSessions = () => endSessionsOf((principal) => principal !== "owner" && !oauth.isGranted(principal));
  let guards: Guards; // needs the bound port, so it is made right after Bun.serve returns
  const addresses = new ClientAddresses(config.trustProxy, config.trustedProxies);
  const addressOf = (req: Request, server: Server<SocketData>) => addresses.of(server, req);

  /** Host, Origin and bearer checks shared by every MCP route. */
  const authorize = (req: Request, server: Server<SocketData>, path: ResourcePath): AuthInfo | Response =>
    guards.checkHost(req) ?? guards.checkOrigin(req) ?? guards.checkClient(req, () => addressOf(req, server), path);

  const mcp = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/mcp");
    return auth instanceof Response ? auth : mcpEndpoint.handle(req, auth);
  };

  const openSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/sse");
    if (auth instanceof Response) return auth;
    server.timeout(req, 0); // the stream lives as long as the client keeps it; keep-alives show it is alive
    return sse.open(auth);
  };

  const postSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/sse");
    return auth instanceof Response ? auth : sse.post(req, auth);
  };

  const upgradeAgent = (req: Request, server: Server<SocketData>) => {
    const address = addressOf(req, server);
    const denied = guards.checkNetwork(req, address) ?? guards.checkOrigin(req);
    if (denied) return denied;
    const credential = guards.checkAgent(req, address);
    if (credential instanceof Response) return credential;
    const now = Date.now();
    const origin = new URL(req.url).origin; // the Host it dialed: where an enrolment page is, without PUBLIC_URL
    if (server.upgrade(req, { data: { address, credential, openedAt: now, lastHeard: now, origin } })) return undefined;
    return new Response("Expected a WebSocket upgrade.", { status: 426 });
  };

  const health = (req: Request, server: Server<SocketData>) => {
    const base = { status: "ok", version: VERSION };
    // Machine names are only for someone who holds the token.
    const auth = bearerToken(req) ? guards.checkClient(req, () => addressOf(req, server), "/mcp") : undefined;
    if (!auth || auth instanceof Response) return Response.json(base);
    return Response.json({ ...base, machines: [...relay.agents.keys()].sort(), sessions: streamable.size + sse.size });
  };

  /** The owner by the dashboard's cookie (with its pages' Host and Origin checks) or by AUTH_TOKEN, else a refusal
   *  saying that `what` is the owner's. */
  const refuseAllButOwner = (req: Request, server: Server<SocketData>, what: string): Response | undefined => {
    if (dashboard.isOwner(req)) return guards.checkHost(req) ?? guards.checkOrigin(req);
    const auth = authorize(req, server, "/mcp");
    if (auth instanceof Response) return auth;
    return auth.clientId === "owner" ? undefined : jsonRpcError(403, -32000, `${what} is for the owner: use the relay's AUTH_TOKEN.`);
  };

  /** The owner deciding on an approval: a dashboard session (whose CSRF token the decision must carry) or AUTH_TOKEN;
   *  never an OAuth client (it is the one asking) nor an agent (its token is not accepted here at all). */
  const approver = (req: Request, server: Server<SocketData>) => {
    const session = dashboard.ownerSession(req);
    // A dashboard form whose session ended (12 h) gets the login form, not a JSON refusal.
    if (!session && isFormPost(req) && !bearerToken(req)) return loginPage("Your session has ended: sign in, then decide again.", 401);
    const refused = refuseAllButOwner(req, server, "Approving calls");
    if (refused) return refused;
    return session ? { by: session.label, proves: session.proves } : { by: "owner token" };
  };

  /** GET /audit: the audit log as JSON, for the owner only: a dashboard session or the static token (an OAuth
   *  client the owner approved uses the tools, but is not the owner). */
  const auditRoute = (req: Request, server: Server<SocketData>) => {
    const refused = refuseAllButOwner(req, server, "The audit log");
    if (refused) return refused;
    const filter = auditFilter(new URL(req.url).searchParams);
    if (typeof filter === "string") return jsonRpcError(400, -32602, filter);
    return Response.json({ calls: audit.calls(filter), events: audit.events(filter) }, { headers: { "Cache-Control": "no-store" } });
  };

  /** Wraps page handlers with request guards: the Host check for all (they hand out tokens and sessions for this
   *  origin only), and for the dashboard also the Origin check (its forms are only ever posted from its pages;
   *  OAuth's /register and /token may be called by browser-based clients from their own origin). */
  const guarded = (routes: ReturnType<typeof oauth.routes>, checkOrigin: boolean) =>
    Object.fromEntries(
      Object.entries(routes).map(([path, methods]) => [
        path,
        Object.fromEntries(
          Object.entries(methods).map(([method, handler]) => [
            method,
            (req: Request, server: Server<SocketData>) =>
              guards.checkHost(req) ?? (checkOrigin ? guards.checkOrigin(req) : undefined) ?? handler(req, addressOf(req, server)),
          ]),
        ),
      ]),
    );
  const pageRoutes = {
    ...guarded(oauth.routes(), false),
    ...guarded(dashboard.routes(), true),
    // The owner's passkey enrolment pages (a dashboard session), and the scripts of the pages that use passkeys.
    ...guarded(enrolmentRoutes(enrolments, dashboard), true),
    ...guarded({ "/assets/:name": { GET: (req) => assetResponse(decodeURIComponent(new URL(req.url).pathname.slice("/assets/".length))) } }, false),
  };

  const routes = {
    ...pageRoutes,
    "/health": { GET: health },
    "/audit": { GET: auditRoute },
    ...approvalRoutes(approvals, approver, errorPage),
    "/mcp": { GET: mcp, POST: mcp, DELETE: mcp },
    "/sse": { GET: openSse },
    "/messages": { POST: postSse },
    "/ws/agent": { GET: upgradeAgent },
  };
  const notRouted = (req: Request) => {
    const methods = routes[new URL(req.url).pathname as keyof typeof routes];
    if (!methods) return jsonRpcError(404, -32000, "Not found.");
    return jsonRpcError(405, -32000, "Method not allowed.", { Allow: Object.keys(methods).join(", ") });
  };

  const server = listening(config, db, () => Bun.serve<SocketData>({
    hostname: config.host,
    port: config.port,
    idleTimeout: IDLE_TIMEOUT_S,
    maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
    routes,
    fetch: notRouted,
    error(error) {
      log("error", "unhandled error in a request", { error: String(error) });
      return jsonRpcError(500, -32603, "Internal error.");
    },
    websocket: {
      maxPayloadLength: MAX_FRAME_BYTES,
      // Bun's own idle close is a backstop: the heartbeat sweep (every HEARTBEAT_CHECK_MS) closes a silent agent
      // first, with 4008 and a log line, after HEARTBEAT_TIMEOUT_MS; Bun closes only what the sweep missed.
      idleTimeout: WS_IDLE_TIMEOUT_S,
      open: (ws) => relay.opened(ws),
      message: (ws, data) => relay.received(ws, data),
      close: (ws, code, reason) => relay.disconnected(ws, code, reason),
    },
  }));
  guards = new Guards({ ...config, port: server.port!, audit, penalties, oauth, agentTokens });
  if (config.privateNetworks) {
    log("info", "private-network gate on: agents must connect from PRIVATE_NETWORKS", { networks: process.env.PRIVATE_NETWORKS || TAILSCALE_NETWORKS, trust_proxy: config.trustProxy });
  }
  if (config.agentToken === config.authToken) {
    log("warn", "agents share AUTH_TOKEN (compatibility with the original): a command on any machine that reads it can drive every machine; give each agent its own token with agent-token create");
  }

  const sweeps = [
    setInterval(() => relay.sweep(), HEARTBEAT_CHECK_MS), // a loop over agent sockets: a half-dead link is found in ~7 s
    setInterval(() => streamable.sweep(), SESSION_SWEEP_MS),
    setInterval(() => relay.dropRevoked(agentTokens.validHashes()), REVOCATION_SWEEP_MS),
    setInterval(endRevokedSessions, REVOCATION_SWEEP_MS),
    setInterval(() => oauth.sweep(), OAUTH_SWEEP_MS),
    setInterval(() => pruneAudit(audit, config.auditRetentionDays), AUDIT_PRUNE_EVERY_MS),
    setInterval(() => failures.flush(), FAILURE_SUMMARY_MS),
  ];
  // The port is ours now, so no other relay serves this database: a call still open in it is a crashed relay's, and
  // the machines connected to that relay are about to redial this one.
  relay.expectBack(presence.takeOver());
  audit.closeInterrupted();
  oauth.adoptOwnerSecret(); // likewise: only the relay serving this database revokes grants made under another secret
  pruneAudit(audit, config.auditRetentionDays);
  const url = new URL(`http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`);
  return {
    url,
    relay,
    sweepSessions: (now = Date.now()) => streamable.sweep(now),
    async stop() {
      sweeps.forEach(clearInterval);
      relay.closeAll();
      await untilAnswered(callLimits, STOP_GRACE_MS);
      await mcpEndpoint.close();
      await sse.closeAll();
      // Let answers still being written finish, but never wait long on a client that does not read.
      await Promise.race([server.stop(false), Bun.sleep(STOP_GRACE_MS)]);
      await server.stop(true);
      failures.flush(); // the failures counted since the last summary are written before the database closes
      db.close();
    },
  };
}

// --- lifecycle: serve, dev, and signals ---

/** Runs `serve` (Bun.serve). A port another process holds, an address this machine does not have or a port this user
 *  may not bind becomes a ConfigError that names it and says what to do, instead of Bun's stack trace. */
function listening<T>(config: ServerConfig, db: Database, serve: () => T): T {
  try {
    return serve();
  } catch (e) {
    const advice = listenAdvice((e as { code?: string }).code, config);
    if (!advice) throw e;
    db.close();
    throw new ConfigError(advice);
  }
}

function listenAdvice(code: string | undefined, { host, port }: ServerConfig): string | undefined {
  if (code === "EADDRINUSE") {
    return (
      `port ${port} on ${host} is already in use by another process (another relay, or bun run dev?). ` +
      `Find it with: lsof -i :${port}   or: ss -ltnp 'sport = :${port}'   then stop it, or use another port: PORT=${port === 65535 ? 8081 : port + 1}`
    );
  }
  if (code === "EACCES") return `this user may not listen on port ${port} (ports below 1024 need privileges). Use another port: PORT=8080`;
  if (code === "EADDRNOTAVAIL") return `HOST ${host} is not an address of this machine. Use HOST=127.0.0.1 (this machine only) or HOST=0.0.0.0 (every address).`;
  return undefined;
}

/** Waits until every tool call has returned its answer to the MCP transport, or `graceMs` has passed. */
async function untilAnswered(limits: CallLimits, graceMs: number): Promise<void> {
  const deadline = Date.now() + graceMs;
  while (limits.inFlight > 0 && Date.now() < deadline) await Bun.sleep(10);
  await Bun.sleep(0); // the SDK sends a handler's answer on the tick after the handler returns
}

function stopOnSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log("info", "stopping", { signal });
    void stop().then(() => process.exit(0));
  };
  process.on("SIGINT", () => onSignal("SIGINT"));
  process.on("SIGTERM", () => onSignal("SIGTERM"));
}

function serve(env: Record<string, string | undefined>): number {
  const config = loadConfig(env);
  const running = startServer(config);
  const provision = config.provisionAgentToken;
  // Readable by the relay's group: the compose sandbox joins that group (group_add) to read it, nothing else does.
  if (provision) keepAgentToken(config.databasePath, provision.machine, provision.file, 0o640);
  log("info", "listening", { url: running.url.toString(), version: VERSION, database: config.databasePath });
  stopOnSignals(running.stop);
  return 0;
}

/** `bun run dev`: the server on loopback plus a local agent as a child process, with its own token; ready once that
 *  agent has registered; one Ctrl-C stops both, and an agent that stops stops dev, with its reason and status 1. */
function dev(env: Record<string, string | undefined>): number {
  const { token, source } = devToken(env, "./data");
  const config = loadConfig({ ...env, AUTH_TOKEN: token, HOST: env.HOST ?? "127.0.0.1" });
  const machine = devMachineName(env);
  const running = startServer(config);
  const agentToken = keepAgentToken(config.databasePath, machine, devAgentTokenFile("./data"), 0o600);
  running.relay.noMachineMessage = DEV_NO_MACHINE_MESSAGE;
  const url = loopbackUrl(running.url);
  const agent = new LocalAgent(url, agentToken, machine);
  stopOnSignals(async () => {
    await agent.stop();
    await running.stop();
  });
  const ready = () => console.log(devBanner(url, token, source, machine));
  void agent.failure(() => running.relay.agents.has(machine), ready).then(async (failure) => {
    if (failure === undefined) return;
    console.error(failure);
    await running.stop();
    process.exit(1);
  });
  return 0;
}

function pruneAudit(audit: AuditLog, days: number): void {
  if (days > 0) audit.prune(days);
}

// --- the command line ---

const USAGE = `code-remote server ${VERSION}: the relay between MCP clients and Code Remote agents.

Usage:
  bun run server.ts                          serve (also: bun run start)
  bun run server.ts dev                      serve on 127.0.0.1 with a local agent and a generated token (bun run dev)
  bun run server.ts agent-token create NAME  make a token that admits only the agent named NAME; printed once
  bun run server.ts agent-token list         machines with a token, when made and last used
  bun run server.ts agent-token revoke NAME  revoke it: a connected agent using it is cut off at once
  bun run server.ts oauth-clients [list]     OAuth applications the owner approved: name, redirect hosts, when
                                             approved and last used
  bun run server.ts oauth-clients revoke CLIENT_ID
                                             revoke one: its tokens stop working at once, its open sessions end
  bun run server.ts machine-key list         machine names and the agent key pinned to each (only its holder may connect)
  bun run server.ts machine-key unpin NAME   forget NAME's key (the machine lost it, e.g. a reinstall): the next agent
                                             to connect as NAME pins its own
  bun run server.ts audit [--machine M] [--tool T] [--since 1h] [--limit N] [--events] [--json]
                                             recent tool calls (or other events) from the audit log
  bun run server.ts audit verify             check the audit chain; names the first changed or missing event
  bun run server.ts --help | --version

Configuration (environment variables; Bun also reads a .env file):
${ENV_HELP.map(([k, v]) => `  ${k.padEnd(26)} ${v}`).join("\n")}`;

export function main(argv: string[], env: Record<string, string | undefined> = process.env): number {
  const [command, ...rest] = argv;
  // The usage covers every subcommand, so `audit --help` and the like print it too (and never serve or act).
  if (command === "help" || argv.some((arg) => arg === "--help" || arg === "-h")) {
    console.log(USAGE);
    return 0;
  }
  if (command === "--version") {
    console.log(VERSION);
    return 0;
  }
  try {
    if (command === undefined) return serve(env);
    if (command === "dev" && rest.length === 0) return dev(env);
    if (command === "agent-token") return agentTokenCommand(rest, env);
    if (command === "machine-key") return machineKeyCommand(rest, env);
    if (command === "oauth-clients") return oauthClientsCommand(rest, env);
    if (command === "audit") return auditCommand(rest, env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote: ${e.message}`);
    return 2;
  }
  console.error(`code-remote: unknown command '${argv.join(" ")}'. See --help.`);
  return 2;
}

if (import.meta.main) {
  const code = main(process.argv.slice(2));
  if (code !== 0) process.exit(code);
}
