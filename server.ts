// The Code Remote relay: one Bun.serve that speaks MCP to AI clients (Streamable HTTP at /mcp, the legacy
// HTTP+SSE transport at /sse + /messages), accepts agent WebSockets at /ws/agent, authenticates every request,
// and writes an audit log to SQLite. It forwards each tool call to the named machine's agent and matches the
// answer by request id, in memory. It never runs commands itself, and it sees all traffic in clear (nothing is
// end-to-end encrypted between client and agent). `bun run server.ts --help` lists the subcommands and settings.

import { randomBytes, randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Server } from "bun";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { AuthInfo } from "@modelcontextprotocol/sdk/server/auth/types.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  ClientRequestSchema,
  isInitializeRequest,
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  JSONRPCMessageSchema,
  type JSONRPCMessage,
} from "@modelcontextprotocol/sdk/types.js";
import { HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, MachineName, MAX_FRAME_BYTES, VERSION } from "./protocol.ts";
import { AuditLog, type AuditFilter, type CallRecord, type EventRecord, type VerifyResult } from "./audit.ts";
import { bearerToken, clientAddress, Guards, jsonRpcError, parseCidr, TAILSCALE_NETWORKS, type Cidr, type TrustProxy } from "./auth.ts";
import { AgentTokens, OAuthStore } from "./credentials.ts";
import { CallLimits, Penalties, type CallLimitOptions } from "./limits.ts";
import { Dashboard } from "./dashboard.ts";
import { AuthorizationServer, type ResourcePath } from "./oauth.ts";
import { Relay, type SocketData } from "./relay.ts";
import { openDatabase } from "./storage.ts";
import { buildMcpServer, type CallerContext } from "./tools.ts";
import { logger } from "./log.ts";

const log = logger("server");

// --- config ---

/** Bun.serve closes a connection after this many idle seconds (its default of 10 s would cut SSE streams and
 *  long calls). Streams stay busier than this: the SDK's keep-alive and ours fire every SSE_KEEPALIVE_MS. */
const IDLE_TIMEOUT_S = 30;
const SSE_KEEPALIVE_MS = 10_000;
/** Largest HTTP request body (write_file content travels in one): 413 beyond it. */
const MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024;
/** A Streamable HTTP session unused this long (and with no call in flight) is closed; its client re-initializes. */
const SESSION_IDLE_MS = 60 * 60 * 1000;
const SESSION_SWEEP_MS = 60 * 1000;
/** Streamable HTTP sessions one client (token holder) may keep; each holds an McpServer (~120 KB). A new one beyond
 *  this closes the client's least recently used session that has nothing in flight. */
const MAX_SESSIONS_PER_CLIENT = 256;
/** Shortest AUTH_TOKEN accepted: 32 characters of `openssl rand -hex 32` carry 128 bits. */
const MIN_TOKEN_LENGTH = 32;
/** Shortest OWNER_PASSWORD: typed by a person, so shorter than a token, but failures are penalised per address. */
const MIN_PASSWORD_LENGTH = 12;
/** How often the relay looks for revoked agent tokens (revoking cuts an agent off within this). */
const REVOCATION_SWEEP_MS = 1_000;
/** On a graceful stop, how long to wait for calls in flight to be answered, then for answers to be written: both
 *  together stay inside the 5 s a platform (Fly, docker stop) gives before SIGKILL. */
const STOP_GRACE_MS = 2_000;
/** How often old audit events are pruned (also once at start). */
const AUDIT_PRUNE_EVERY_MS = 24 * 60 * 60 * 1000;

export interface ServerConfig {
  /** Address to bind (default 127.0.0.1; 0.0.0.0 in containers). */
  host: string;
  /** Port to listen on (default 8080; 0 picks a free one). */
  port: number;
  /** Credential MCP clients send as `Authorization: Bearer …`. */
  authToken: string;
  /** The shared credential agents may send; AUTH_TOKEN when AGENT_TOKEN is unset, as in the original. */
  agentToken: string;
  /** What the owner types on the OAuth consent page: OWNER_PASSWORD, or AUTH_TOKEN. */
  ownerSecret: string;
  databasePath: string;
  /** Public origin (https://relay.example.com) when deployed behind a proxy: the OAuth issuer, and allowed as
   *  Host and Origin. */
  publicUrl?: URL;
  /** Which proxies to believe about the client's address (for penalties and logs). */
  trustProxy: TrustProxy;
  callLimits: CallLimitOptions;
  /** Audit events older than this many days are pruned (0: kept forever). */
  auditRetentionDays: number;
  /** Networks agents must come from, when REQUIRE_PRIVATE_NETWORK is on (undefined: the gate is off). */
  privateNetworks?: Cidr[];
}

/** Environment variables the server reads; `--help` prints this table. */
const ENV_HELP: [string, string][] = [
  ["AUTH_TOKEN", `Bearer token for MCP clients, at least ${MIN_TOKEN_LENGTH} characters (required; make one: openssl rand -hex 32)`],
  ["AGENT_TOKEN", "Shared token agents may connect with (default: AUTH_TOKEN); per-machine tokens: see agent-token"],
  ["OWNER_PASSWORD", `What you type to approve an OAuth client, at least ${MIN_PASSWORD_LENGTH} characters (default: AUTH_TOKEN)`],
  ["PORT", "Port to listen on (default 8080)"],
  ["HOST", "Address to bind (default 127.0.0.1; use 0.0.0.0 in a container)"],
  ["DATABASE_PATH", "SQLite database: audit log and issued credentials (default ./data/code-remote.db)"],
  ["PUBLIC_URL", "Public https:// origin when behind a proxy or tunnel (e.g. https://abc.ngrok.app); the OAuth issuer"],
  ["TRUST_PROXY", "Client address from: none (the socket, default), fly (Fly-Client-IP), or N (Nth from the right of X-Forwarded-For)"],
  ["CLIENT_MAX_CALLS_IN_FLIGHT", "Tool calls one client may have running at once (default 32)"],
  ["CLIENT_CALLS_PER_MINUTE", "Tool calls one client may start per minute; 0 for no limit (default 1200)"],
  ["REQUIRE_PRIVATE_NETWORK", "true: agents must connect from PRIVATE_NETWORKS (default: true when TAILSCALE_AUTHKEY is set, else false)"],
  ["PRIVATE_NETWORKS", `Networks agents may come from, comma-separated CIDRs (default ${TAILSCALE_NETWORKS}: Tailscale)`],
  ["AUDIT_RETENTION_DAYS", "Audit events older than this are pruned, keeping the chain verifiable; 0 keeps all (default 90)"],
];

const USAGE = `code-remote server ${VERSION}: the relay between MCP clients and Code Remote agents.

Usage:
  bun run server.ts                          serve (also: bun run start)
  bun run server.ts dev                      serve on 127.0.0.1 with a local agent and a generated token (bun run dev)
  bun run server.ts agent-token create NAME  make a token that admits only the agent named NAME; printed once
  bun run server.ts agent-token list         machines with a token, when made and last used
  bun run server.ts agent-token revoke NAME  revoke it: a connected agent using it is cut off at once
  bun run server.ts audit [--machine M] [--tool T] [--since 1h] [--limit N] [--events] [--json]
                                             recent tool calls (or other events) from the audit log
  bun run server.ts audit verify             check the audit chain; names the first changed or missing event
  bun run server.ts --help | --version

Configuration (environment variables; Bun also reads a .env file):
${ENV_HELP.map(([k, v]) => `  ${k.padEnd(26)} ${v}`).join("\n")}`;

export class ConfigError extends Error {}

function checkTokenStrength(name: string, token: string): void {
  const hint = "Make one with: openssl rand -hex 32";
  if (token.length < MIN_TOKEN_LENGTH) throw new ConfigError(`${name} must be at least ${MIN_TOKEN_LENGTH} characters. ${hint}`);
  if (/\s/.test(token)) throw new ConfigError(`${name} must not contain spaces. ${hint}`);
  if (new Set(token).size < 8) throw new ConfigError(`${name} is too repetitive to be a secret. ${hint}`);
}

/** A password is typed by a person (spaces welcome); wrong guesses are penalised per address. */
function checkPasswordStrength(name: string, password: string): void {
  if (password.length < MIN_PASSWORD_LENGTH || new Set(password).size < 6) {
    throw new ConfigError(`${name} must be at least ${MIN_PASSWORD_LENGTH} characters and not repetitive (a passphrase of a few words is good).`);
  }
}

export function loadConfig(env: Record<string, string | undefined>): ServerConfig {
  const authToken = env.AUTH_TOKEN ?? "";
  if (!authToken) throw new ConfigError("AUTH_TOKEN is not set. Make one with: openssl rand -hex 32");
  checkTokenStrength("AUTH_TOKEN", authToken);
  if (env.AGENT_TOKEN) checkTokenStrength("AGENT_TOKEN", env.AGENT_TOKEN);
  if (env.OWNER_PASSWORD) checkPasswordStrength("OWNER_PASSWORD", env.OWNER_PASSWORD);
  return {
    host: env.HOST || "127.0.0.1",
    port: wholeNumber(env, "PORT", 8080, 0, 65535),
    authToken,
    agentToken: env.AGENT_TOKEN || authToken,
    ownerSecret: env.OWNER_PASSWORD || authToken,
    databasePath: databasePath(env),
    publicUrl: env.PUBLIC_URL ? parsePublicUrl(env.PUBLIC_URL) : undefined,
    trustProxy: parseTrustProxy(env.TRUST_PROXY),
    callLimits: {
      maxInFlight: wholeNumber(env, "CLIENT_MAX_CALLS_IN_FLIGHT", 32, 1, 10_000),
      perMinute: wholeNumber(env, "CLIENT_CALLS_PER_MINUTE", 1200, 0, 10_000_000),
    },
    auditRetentionDays: wholeNumber(env, "AUDIT_RETENTION_DAYS", 90, 0, 100_000),
    privateNetworks: requirePrivateNetwork(env) ? parseNetworks(env.PRIVATE_NETWORKS || TAILSCALE_NETWORKS) : undefined,
  };
}

const databasePath = (env: Record<string, string | undefined>) => env.DATABASE_PATH || "./data/code-remote.db";

function wholeNumber(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number): number {
  const value = Number(env[name]?.trim() || fallback); // an empty value (PORT= in .env, compose's ${X:-}) is unset
  if (!Number.isInteger(value) || value < min || value > max) throw new ConfigError(`${name} must be a whole number from ${min} to ${max}.`);
  return value;
}

function parsePublicUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`PUBLIC_URL '${raw}' is not a URL; e.g. PUBLIC_URL=https://relay.example.com`);
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  // OAuth sends codes and tokens to and from this origin: plain http is only acceptable on this machine.
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
    throw new ConfigError("PUBLIC_URL must be https:// (plain http only for localhost); e.g. PUBLIC_URL=https://relay.example.com");
  }
  return new URL(url.origin);
}

function requirePrivateNetwork(env: Record<string, string | undefined>): boolean {
  const raw = env.REQUIRE_PRIVATE_NETWORK?.trim().toLowerCase();
  if (raw === undefined || raw === "") return Boolean(env.TAILSCALE_AUTHKEY);
  if (["true", "1", "yes", "on"].includes(raw)) return true;
  if (["false", "0", "no", "off"].includes(raw)) return false;
  throw new ConfigError("REQUIRE_PRIVATE_NETWORK must be true or false.");
}

function parseNetworks(raw: string): Cidr[] {
  const networks: Cidr[] = [];
  for (const entry of raw.split(",").filter((e) => e.trim())) {
    try {
      networks.push(parseCidr(entry));
    } catch (e) {
      throw new ConfigError(`PRIVATE_NETWORKS: ${(e as Error).message}.`);
    }
  }
  if (networks.length === 0) throw new ConfigError("PRIVATE_NETWORKS names no network.");
  return networks;
}

function parseTrustProxy(raw: string | undefined): TrustProxy {
  if (!raw || raw === "none") return "none";
  if (raw === "fly") return "fly";
  const hops = Number(raw);
  if (Number.isInteger(hops) && hops >= 1 && hops <= 10) return hops;
  throw new ConfigError("TRUST_PROXY must be none, fly, or the number of proxies in front of the relay (1-10).");
}

// --- transports: Streamable HTTP sessions and the legacy HTTP+SSE transport ---

interface McpSession {
  transport: WebStandardStreamableHTTPServerTransport;
  /** Ids of requests sent and not answered yet (see screenMessage). */
  pending: Set<string>;
  /** The principal that created the session: a session id is never a credential on its own. */
  clientId: string;
  lastSeen: number;
  inflight: { count: number };
}

/** Stateful Streamable HTTP: one transport and one McpServer per Mcp-Session-Id. */
class StreamableSessions {
  readonly #sessions = new Map<string, McpSession>();
  constructor(readonly newContext: (client: string, session: () => string | null, inflight: { count: number }) => CallerContext) {}

  get size() {
    return this.#sessions.size;
  }

  async handle(req: Request, auth: AuthInfo): Promise<Response> {
    const id = req.headers.get("mcp-session-id");
    if (id) {
      const session = this.#sessions.get(id);
      if (!session || session.clientId !== auth.clientId) return jsonRpcError(404, -32001, "Session not found; initialize a new one.");
      session.lastSeen = Date.now();
      return req.method === "POST" ? this.#post(req, session, auth) : session.transport.handleRequest(req, { authInfo: auth });
    }
    if (req.method !== "POST") return jsonRpcError(400, -32000, "Bad request: Mcp-Session-Id header is required.");
    const body = await readJson(req);
    if (body instanceof Response) return body;
    if (!isInitializeRequest(body)) return jsonRpcError(400, -32000, "Bad request: start a session with initialize.");
    return this.#open(req, body, auth);
  }

  /** A message in a session: the relay's own checks first (screenMessage), then the SDK's transport. */
  async #post(req: Request, session: McpSession, auth: AuthInfo): Promise<Response> {
    const body = await readJson(req);
    if (body instanceof Response) return body;
    const screened = screenMessage(body, session.pending);
    if (screened) return "refuse" in screened ? screened.refuse : Response.json(screened.answer);
    const response = await session.transport.handleRequest(req, { parsedBody: body, authInfo: auth });
    // Refused by the transport (a bad header, say): the request will get no answer, so it is not pending.
    if (response.status >= 400 && isJSONRPCRequest(body)) session.pending.delete(requestKey(body.id));
    return response;
  }

  async #open(req: Request, body: unknown, auth: AuthInfo): Promise<Response> {
    if (!this.#roomForSession(auth.clientId)) {
      return jsonRpcError(429, -32000, `Too many sessions: this client has ${MAX_SESSIONS_PER_CLIENT} with calls in flight. Close some (DELETE /mcp) first.`);
    }
    const inflight = { count: 0 };
    const pending = new Set<string>();
    const transport: WebStandardStreamableHTTPServerTransport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
      keepAliveMs: SSE_KEEPALIVE_MS,
      onsessioninitialized: (id) => {
        this.#sessions.set(id, { transport, pending, clientId: auth.clientId, lastSeen: Date.now(), inflight });
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) this.#sessions.delete(transport.sessionId);
    };
    // Every answer goes out through send: that is when a request stops being pending.
    const send = transport.send.bind(transport);
    transport.send = (message, options) => {
      noteAnswered(message, pending);
      return send(message, options);
    };
    await buildMcpServer(this.newContext(auth.clientId, () => transport.sessionId ?? null, inflight)).connect(transport);
    return transport.handleRequest(req, { parsedBody: body, authInfo: auth });
  }

  /** Makes room for one more session of `clientId` by closing its least recently used idle one when it is at the
   *  cap (whose client then gets 404 and initializes again, as after the idle sweep). False when all are busy. */
  #roomForSession(clientId: string): boolean {
    const own = [...this.#sessions.values()].filter((s) => s.clientId === clientId);
    if (own.length < MAX_SESSIONS_PER_CLIENT) return true;
    const idle = own.filter((s) => s.inflight.count === 0).sort((a, b) => a.lastSeen - b.lastSeen)[0];
    if (!idle) return false;
    this.#sessions.delete(idle.transport.sessionId!);
    void idle.transport.close();
    return true;
  }

  /** Closes sessions idle past SESSION_IDLE_MS with nothing in flight (clients that vanished without DELETE). */
  sweep(now = Date.now()): void {
    for (const session of this.#sessions.values()) {
      if (now - session.lastSeen > SESSION_IDLE_MS && session.inflight.count === 0) void session.transport.close();
    }
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#sessions.values()].map((s) => s.transport.close()));
  }
}

/** Reads a request's JSON body, or answers the JSON-RPC parse error. */
async function readJson(req: Request): Promise<unknown> {
  try {
    return await req.json();
  } catch {
    return jsonRpcError(400, -32700, "Parse error: the body is not JSON.");
  }
}

/** The SDK's schema of each client request, by method: to tell a malformed request from an unknown one. */
const REQUEST_SCHEMAS = new Map(
  (ClientRequestSchema.options as readonly { shape: { method: { value: string } }; safeParse: (v: unknown) => { success: boolean; error?: { issues: { path: PropertyKey[]; message: string }[] } } }[]).map(
    (schema) => [schema.shape.method.value, schema],
  ),
);

const requestKey = (id: string | number) => `${typeof id}:${id}`;

/** An answer going out ends its request's time as pending (an error to an unparseable request names none). */
function noteAnswered(message: JSONRPCMessage, pending: Set<string>): void {
  const answered = isJSONRPCResultResponse(message) || isJSONRPCErrorResponse(message) ? message.id : undefined;
  if (answered !== undefined) pending.delete(requestKey(answered));
}

/** Messages the relay deals with itself, on both transports, where the SDK would get them wrong: it refuses a batch
 *  (MCP dropped batching in 2025-06-18, but the SDK still runs each message of one) and a request reusing the id of
 *  one still in flight (the SDK would send the first one's answer to the second, and lose track of the first: its
 *  cancel and its client's departure would no longer reach it); it answers a request whose params do not fit its
 *  method (the SDK says -32603 with a raw dump; JSON-RPC says -32602). Otherwise it notes the request as pending. */
function screenMessage(body: unknown, pending: Set<string>): { refuse: Response } | { answer: JSONRPCMessage } | undefined {
  if (Array.isArray(body)) return { refuse: jsonRpcError(400, -32600, "Invalid Request: send one JSON-RPC message per request (MCP has no batches).") };
  if (isJSONRPCNotification(body) && body.method === "notifications/cancelled") {
    const cancelled = (body.params as { requestId?: string | number } | undefined)?.requestId;
    if (cancelled !== undefined) pending.delete(requestKey(cancelled)); // a cancelled request is never answered
  }
  if (!isJSONRPCRequest(body)) return undefined;
  const key = requestKey(body.id);
  if (pending.has(key)) return { refuse: jsonRpcError(400, -32600, `Invalid Request: request id ${JSON.stringify(body.id)} is still in flight; use a new id.`) };
  const invalid = REQUEST_SCHEMAS.get(body.method)?.safeParse({ method: body.method, params: body.params });
  if (invalid && !invalid.success) {
    const issue = invalid.error!.issues[0]!;
    const message = `Invalid params: ${issue.path.map(String).join(".") || "params"}: ${issue.message}`;
    return { answer: { jsonrpc: "2.0", id: body.id, error: { code: -32602, message } } };
  }
  pending.add(key);
  return undefined;
}

/** The legacy HTTP+SSE transport (protocol 2024-11-05) on web streams: the SDK's SSEServerTransport needs Node's
 *  ServerResponse. GET /sse opens the event stream and names the POST endpoint; messages arrive by POST. */
class SseTransport implements Transport {
  readonly sessionId = randomUUID();
  readonly response: Response;
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: Transport["onmessage"];
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #keepAlive?: ReturnType<typeof setInterval>;
  #closed = false;
  /** Ids of requests received and not answered yet (see screenMessage). */
  readonly #pending = new Set<string>();
  readonly #encoder = new TextEncoder();

  constructor(
    readonly endpoint: string,
    readonly clientId: string,
  ) {
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      cancel: () => this.#finish(), // the client went away
    });
    this.response = new Response(stream, {
      headers: { "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no" },
    });
  }

  async start(): Promise<void> {
    this.#write(`event: endpoint\ndata: ${this.endpoint}?sessionId=${this.sessionId}\n\n`);
    // Comments keep proxies and Bun's idle timeout from closing a quiet stream.
    this.#keepAlive = setInterval(() => this.#write(": keepalive\n\n"), SSE_KEEPALIVE_MS);
  }

  async send(message: JSONRPCMessage): Promise<void> {
    if (this.#closed) throw new Error("SSE stream closed");
    noteAnswered(message, this.#pending);
    this.#write(`event: message\ndata: ${JSON.stringify(message)}\n\n`);
  }

  /** Takes one POSTed JSON-RPC message and hands it to the server; the answer goes out on the stream. */
  async handlePost(req: Request, auth: AuthInfo): Promise<Response> {
    if (!req.headers.get("content-type")?.includes("application/json")) {
      return jsonRpcError(415, -32000, "Unsupported Media Type: Content-Type must be application/json.");
    }
    let body: unknown;
    try {
      body = await req.json();
    } catch {
      return jsonRpcError(400, -32700, "Parse error: the body is not JSON.");
    }
    const parsed = JSONRPCMessageSchema.safeParse(body);
    if (!parsed.success) return jsonRpcError(400, -32600, "Invalid Request: not a JSON-RPC 2.0 message.");
    const screened = screenMessage(parsed.data, this.#pending);
    if (screened && "refuse" in screened) return screened.refuse;
    if (screened) await this.send(screened.answer); // on the stream, where this transport's answers go
    else this.onmessage?.(parsed.data, { authInfo: auth, requestInfo: { headers: Object.fromEntries(req.headers) } });
    return new Response("Accepted", { status: 202 });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      this.#controller.close();
    } catch {
      // already closed by the client
    }
    this.#finish();
  }

  #write(text: string): void {
    if (this.#closed) return;
    try {
      this.#controller.enqueue(this.#encoder.encode(text));
    } catch {
      this.#finish();
    }
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#keepAlive);
    this.onclose?.();
  }
}

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
  const relay = new Relay(audit, (machine) => agentTokens.exists(machine));
  const penalties = new Penalties();
  const ownerSecretPenalties = new Penalties();
  const callLimits = new CallLimits(config.callLimits);
  const oauth = new AuthorizationServer({
    store: new OAuthStore(db),
    ownerSecret: config.ownerSecret,
    publicUrl: config.publicUrl,
    penalties,
    ownerSecretPenalties,
    audit,
    machines: () => [...relay.agents.keys()].sort(),
  });
  const newContext = (client: string, session: () => string | null, inflight: { count: number }): CallerContext => ({
    relay,
    audit,
    limits: callLimits,
    client,
    session,
    inflight,
  });
  const dashboard = new Dashboard({ ownerSecret: config.ownerSecret, publicUrl: config.publicUrl, relay, audit, agentTokens, ownerSecretPenalties });
  const streamable = new StreamableSessions(newContext);
  const sseSessions = new Map<string, SseTransport>();
  let guards: Guards; // needs the bound port, so it is made right after Bun.serve returns
  const addressOf = (req: Request, server: Server<SocketData>) => clientAddress(server, req, config.trustProxy);

  /** Host, Origin and bearer checks shared by every MCP route. */
  const authorize = (req: Request, server: Server<SocketData>, path: ResourcePath): AuthInfo | Response =>
    guards.checkHost(req) ?? guards.checkOrigin(req) ?? guards.checkClient(req, addressOf(req, server), path);

  const mcp = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/mcp");
    return auth instanceof Response ? auth : streamable.handle(req, auth);
  };

  const openSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/sse");
    if (auth instanceof Response) return auth;
    server.timeout(req, 0); // the stream lives as long as the client keeps it; keep-alives show it is alive
    const transport = new SseTransport("/messages", auth.clientId);
    sseSessions.set(transport.sessionId, transport);
    transport.onclose = () => sseSessions.delete(transport.sessionId);
    await buildMcpServer(newContext(auth.clientId, () => transport.sessionId, { count: 0 })).connect(transport);
    return transport.response;
  };

  const postSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server, "/sse");
    if (auth instanceof Response) return auth;
    const transport = sseSessions.get(new URL(req.url).searchParams.get("sessionId") ?? "");
    if (!transport || transport.clientId !== auth.clientId) return jsonRpcError(404, -32001, "Session not found; open a new /sse stream.");
    return transport.handlePost(req, auth);
  };

  const upgradeAgent = (req: Request, server: Server<SocketData>) => {
    const address = addressOf(req, server);
    const denied = guards.checkNetwork(req, address) ?? guards.checkOrigin(req);
    if (denied) return denied;
    const credential = guards.checkAgent(req, address);
    if (credential instanceof Response) return credential;
    const now = Date.now();
    if (server.upgrade(req, { data: { address, credential, openedAt: now, lastHeard: now } })) return undefined;
    return new Response("Expected a WebSocket upgrade.", { status: 426 });
  };

  const health = (req: Request, server: Server<SocketData>) => {
    const base = { status: "ok", version: VERSION };
    // Machine names are only for someone who holds the token.
    const auth = bearerToken(req) ? guards.checkClient(req, addressOf(req, server), "/mcp") : undefined;
    if (!auth || auth instanceof Response) return Response.json(base);
    return Response.json({ ...base, machines: [...relay.agents.keys()].sort(), sessions: streamable.size + sseSessions.size });
  };

  /** GET /audit: the audit log as JSON, for the owner only: a dashboard session or the static token (an OAuth
   *  client the owner approved uses the tools, but is not the owner). */
  /** The owner by the dashboard's cookie (with its pages' Host and Origin checks) or by AUTH_TOKEN, else a refusal. */
  const refuseAllButOwner = (req: Request, server: Server<SocketData>): Response | undefined => {
    if (dashboard.isOwner(req)) return guards.checkHost(req) ?? guards.checkOrigin(req);
    const auth = authorize(req, server, "/mcp");
    if (auth instanceof Response) return auth;
    return auth.clientId === "owner" ? undefined : jsonRpcError(403, -32000, "The audit log is for the owner: use the relay's AUTH_TOKEN.");
  };

  const auditRoute = (req: Request, server: Server<SocketData>) => {
    const refused = refuseAllButOwner(req, server);
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
  const pageRoutes = { ...guarded(oauth.routes(), false), ...guarded(dashboard.routes(), true) };

  const routes = {
    ...pageRoutes,
    "/health": { GET: health },
    "/audit": { GET: auditRoute },
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

  const server = Bun.serve<SocketData>({
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
      idleTimeout: HEARTBEAT_TIMEOUT_MS / 1000 + 30,
      open: (ws) => relay.opened(ws),
      message: (ws, data) => relay.received(ws, data),
      close: (ws, code, reason) => relay.disconnected(ws, code, reason),
    },
  });
  guards = new Guards({ ...config, port: server.port!, audit, penalties, oauth, agentTokens });
  if (config.privateNetworks) {
    log("info", "private-network gate on: agents must connect from PRIVATE_NETWORKS", { networks: process.env.PRIVATE_NETWORKS || TAILSCALE_NETWORKS, trust_proxy: config.trustProxy });
  }
  if (config.agentToken === config.authToken) {
    log("warn", "agents share AUTH_TOKEN (compatibility with the original): a command on any machine that reads it can drive every machine; give each agent its own token with agent-token create");
  }

  const sweeps = [
    setInterval(() => relay.sweep(), HEARTBEAT_INTERVAL_MS),
    setInterval(() => streamable.sweep(), SESSION_SWEEP_MS),
    setInterval(() => relay.dropRevoked(agentTokens.validHashes()), REVOCATION_SWEEP_MS),
    setInterval(() => pruneAudit(audit, config.auditRetentionDays), AUDIT_PRUNE_EVERY_MS),
  ];
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
      await streamable.closeAll();
      await Promise.all([...sseSessions.values()].map((t) => t.close()));
      // Let answers still being written finish, but never wait long on a client that does not read.
      await Promise.race([server.stop(false), Bun.sleep(STOP_GRACE_MS)]);
      await server.stop(true);
      db.close();
    },
  };
}

// --- lifecycle: serve, dev, and signals ---

/** Waits until every tool call has returned its answer to the MCP transport, or `graceMs` has passed. */
async function untilAnswered(limits: CallLimits, graceMs: number): Promise<void> {
  const deadline = Date.now() + graceMs;
  while (limits.inFlight > 0 && Date.now() < deadline) await Bun.sleep(10);
  await Bun.sleep(0); // the SDK sends a handler's answer on the tick after the handler returns
}

function loopbackUrl(url: URL): URL {
  const local = new URL(url);
  if (local.hostname === "0.0.0.0" || local.hostname === "[::]") local.hostname = "127.0.0.1";
  return local;
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
  log("info", "listening", { url: running.url.toString(), version: VERSION, database: config.databasePath });
  stopOnSignals(running.stop);
  return 0;
}

/** The dev token: AUTH_TOKEN if it is set, else one kept in ./data/dev-token (made on first run, mode 0600). */
function devToken(env: Record<string, string | undefined>, dataDir: string): { token: string; source: string } {
  if (env.AUTH_TOKEN) return { token: env.AUTH_TOKEN, source: "from AUTH_TOKEN" };
  const file = path.join(dataDir, "dev-token");
  if (fs.existsSync(file)) return { token: fs.readFileSync(file, "utf8").trim(), source: `kept in ${file}` };
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const token = randomBytes(32).toString("hex");
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { token, source: `new, kept in ${file}` };
}

function devBanner(url: URL, token: string, source: string): string {
  const mcp = new URL("/mcp", url).toString();
  const header = `"Authorization: Bearer ${token}"`;
  return `
Code Remote ${VERSION} (dev): a relay and a local agent, data in ./data/. Ctrl-C stops both.

  MCP URL      ${mcp}   (legacy SSE: ${new URL("/sse", url)})
  Token        ${token}   (${source})

  Claude Code:
    claude mcp add --transport http code-remote ${mcp} --header ${header}
  MCP Inspector:
    npx -y @modelcontextprotocol/inspector@2.12.0 --cli ${mcp} --header ${header} --method tools/list

  From Claude.ai or a phone: put it behind HTTPS (e.g. ngrok http ${url.port}) and set PUBLIC_URL; see README.
`;
}

/** `bun run dev`: the server on loopback plus a local agent as a child process; one Ctrl-C stops both. */
function dev(env: Record<string, string | undefined>): number {
  const { token, source } = devToken(env, "./data");
  const config = loadConfig({ ...env, AUTH_TOKEN: token, HOST: env.HOST ?? "127.0.0.1" });
  const running = startServer(config);
  const url = loopbackUrl(running.url);
  console.log(devBanner(url, token, source));
  const agent = Bun.spawn([process.execPath, "run", path.join(import.meta.dir, "agent.ts")], {
    env: {
      ...process.env,
      RELAY_URL: new URL("/ws/agent", url).toString().replace(/^http/, "ws"),
      AGENT_TOKEN: config.agentToken,
      MACHINE_NAME: env.MACHINE_NAME ?? os.hostname().split(".")[0],
      CODE_REMOTE_PARENT_PID: String(process.pid), // the agent stops if this process dies without stopping it
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  void agent.exited.then((code) => log(code === 0 ? "info" : "warn", "local agent exited", { code }));
  stopOnSignals(async () => {
    agent.kill("SIGTERM");
    await agent.exited;
    await running.stop();
  });
  return 0;
}

function pruneAudit(audit: AuditLog, days: number): void {
  if (days > 0) audit.prune(days);
}

/** Filters for the audit, from query parameters or command-line flags; a string says what is wrong. */
function auditFilter(params: URLSearchParams): AuditFilter | string {
  const since = params.get("since");
  const sinceIso = since === null ? undefined : parseSince(since);
  if (sinceIso === null) return "since must be a duration such as 30m, 1h or 7d, or an ISO time.";
  const limit = params.get("limit") === null ? undefined : Number(params.get("limit"));
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) return "limit must be a whole number of at least 1.";
  return { machine: params.get("machine") ?? undefined, tool: params.get("tool") ?? undefined, since: sinceIso, limit };
}

/** "30m", "1h", "7d" (ago) or an ISO time, as an ISO time; null when it is neither. A duration longer than the
 *  time since 1970 means the whole log (a Date that far back does not exist). */
function parseSince(value: string, now = Date.now()): string | null {
  const relative = /^(\d+)([smhd])$/.exec(value);
  if (relative) return new Date(Math.max(0, now - Number(relative[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[relative[2] as "s"])).toISOString();
  const time = Date.parse(value);
  return Number.isNaN(time) ? null : new Date(time).toISOString();
}

/** The database of a relay that has run, for the commands that read or change it. Creating one here would be a
 *  silent mistake: run on the wrong machine or directory, `audit` would find nothing, and a token made by
 *  `agent-token create` would live in a database the relay never reads. */
function openRelayDatabase(env: Record<string, string | undefined>) {
  const file = databasePath(env);
  if (!fs.existsSync(file)) {
    throw new ConfigError(
      `There is no relay database at ${file}. Run this command where the relay runs and keeps its data ` +
        "(set DATABASE_PATH, or: docker compose exec server bun run /app/server.ts …, fly ssh console -C \"bun run /app/server.ts …\").",
    );
  }
  return openDatabase(file);
}

/** `audit [flags]` and `audit verify`: read the audit log of the database at DATABASE_PATH. */
function auditCommand(args: string[], env: Record<string, string | undefined>): number {
  const db = openRelayDatabase(env);
  try {
    const audit = new AuditLog(db);
    if (args[0] === "verify" && args.length === 1) return printVerify(audit.verify());
    const { params, json, events } = parseAuditFlags(args);
    const filter = auditFilter(params);
    if (typeof filter === "string") throw new ConfigError(filter);
    if (json) console.log(JSON.stringify(events ? { events: audit.events(filter) } : { calls: audit.calls(filter) }, null, 2));
    else console.log(events ? renderEventTable(audit.events(filter)) : renderCallTable(audit.calls(filter)));
    return 0;
  } finally {
    db.close();
  }
}

function parseAuditFlags(args: string[]): { params: URLSearchParams; json: boolean; events: boolean } {
  const params = new URLSearchParams();
  let json = false;
  let events = false;
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]!;
    if (flag === "--json") json = true;
    else if (flag === "--events") events = true;
    else if (["--machine", "--tool", "--since", "--limit"].includes(flag) && args[i + 1] !== undefined) params.set(flag.slice(2), args[++i]!);
    else throw new ConfigError(`unknown audit option '${flag}'. See --help.`);
  }
  return { params, json, events };
}

function printVerify(result: VerifyResult): number {
  if (!result.ok) {
    console.error(`audit chain BROKEN at event ${result.seq}: ${result.reason} (${result.events} events checked)`);
    return 1;
  }
  const head = result.head ? `head: event ${result.head.seq}, hash ${result.head.hash}` : "no events yet";
  const anchor = result.anchor ? `, continuing from pruned event ${result.anchor}` : "";
  console.log(`audit chain intact: ${result.events} events${anchor}; ${head}`);
  return 0;
}

/** A plain-text table: each column as wide as its widest cell. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

const shortTime = (iso: string) => iso.replace("T", " ").slice(0, 19);

function renderCallTable(calls: CallRecord[]): string {
  if (calls.length === 0) return "No tool calls match.";
  const summary = (args: Record<string, unknown>) => JSON.stringify(args).slice(0, 60);
  const rows = calls.map((c) => [shortTime(c.started_at), c.machine ?? "-", c.tool, c.outcome, String(c.exit_code ?? "-"), String(c.duration_ms ?? "-"), c.client ?? "-", summary(c.arguments)]);
  return table(["TIME (UTC)", "MACHINE", "TOOL", "OUTCOME", "EXIT", "MS", "CLIENT", "ARGUMENTS"], rows);
}

function renderEventTable(events: EventRecord[]): string {
  if (events.length === 0) return "No events match.";
  const rows = events.map((e) => [shortTime(e.at), e.kind, e.machine ?? "-", JSON.stringify(e.detail).slice(0, 80)]);
  return table(["TIME (UTC)", "EVENT", "MACHINE", "DETAIL"], rows);
}

/** `agent-token create|list|revoke`: per-machine agent credentials, kept as hashes in the database. */
function agentTokenCommand([action, machine, ...extra]: string[], env: Record<string, string | undefined>): number {
  const usage = "usage: bun run server.ts agent-token create NAME | list | revoke NAME";
  const needsName = action === "create" || action === "revoke";
  if (!["create", "list", "revoke"].includes(action ?? "") || extra.length > 0 || needsName !== (machine !== undefined)) throw new ConfigError(usage);
  if (machine !== undefined && !MachineName.safeParse(machine).success) throw new ConfigError(`'${machine}' is not a machine name: 1-64 letters, digits, '.', '_' or '-'.`);
  const db = openRelayDatabase(env);
  try {
    const tokens = new AgentTokens(db);
    const audit = new AuditLog(db);
    if (action === "list") {
      const rows = tokens.list();
      console.log(rows.length ? rows.map((r) => `${r.machine.padEnd(24)} made ${r.created_at}, last used ${r.last_used_at ?? "never"}`).join("\n") : "No per-machine agent tokens.");
      return 0;
    }
    if (action === "revoke") {
      if (!tokens.revoke(machine!)) throw new ConfigError(`No agent token for '${machine}'. See: agent-token list`);
      audit.event("agent_token_revoked", { machine });
      console.log(`Revoked the token of '${machine}'. A running relay disconnects that agent within a second.`);
      return 0;
    }
    if (tokens.exists(machine!)) throw new ConfigError(`'${machine}' already has a token. Revoke it first: agent-token revoke ${machine}`);
    const token = tokens.create(machine!);
    audit.event("agent_token_created", { machine });
    console.log(`Agent token for '${machine}' (shown once; it is stored only as a hash):\n\n  ${token}\n\nOn that machine: MACHINE_NAME=${machine} AGENT_TOKEN=<the token> RELAY_URL=wss://<relay>/ws/agent code-remote-agent`);
    return 0;
  } finally {
    db.close();
  }
}

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
