// The Code Remote relay: one Bun.serve that speaks MCP to AI clients (Streamable HTTP at /mcp, the legacy
// HTTP+SSE transport at /sse + /messages), accepts agent WebSockets at /ws/agent, authenticates every request,
// and writes an audit log to SQLite. It forwards each tool call to the named machine's agent and matches the
// answer by request id, in memory. It never runs commands itself, and it sees all traffic in clear (nothing is
// end-to-end encrypted between client and agent). `bun run server.ts --help` lists the subcommands and settings.

import { Database } from "bun:sqlite";
import { createHash, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Server, ServerWebSocket } from "bun";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { AuthInfo } from "@modelcontextprotocol/sdk/server/auth/types.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  isInitializeRequest,
  JSONRPCMessageSchema,
  type CallToolResult,
  type JSONRPCMessage,
} from "@modelcontextprotocol/sdk/types.js";
import {
  AGENT_OPS,
  AgentFrame,
  CloseCode,
  DEFAULT_COMMAND_TIMEOUT_S,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  TOOLS,
  VERSION,
  parseFrame,
  toolInputSchema,
  toolOutputSchema,
  type AgentError,
  type AgentOp,
  type HelloFrame,
  type OpArgs,
  type OpResult,
  type ServerFrame,
  type ToolName,
  type ToolResult,
} from "./protocol.ts";

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
/** An agent must say hello this soon after its upgrade. */
const HELLO_TIMEOUT_MS = 10_000;
/** The relay gives an agent this much longer than a command's own timeout (plus its kill grace) to answer. */
const CALL_DEADLINE_MARGIN_MS = 5_000;
/** File operations and status checks should take milliseconds; past these the agent is called unresponsive. */
const FILE_OP_DEADLINE_MS = 60_000;
const STATUS_DEADLINE_MS = 5_000;
/** Shortest AUTH_TOKEN accepted: 32 characters of `openssl rand -hex 32` carry 128 bits. */
const MIN_TOKEN_LENGTH = 32;
/** Query parameters that look like credentials: refused outright, since URLs end up in logs. */
const TOKEN_QUERY_PARAMS = ["token", "access_token", "auth", "auth_token", "api_key", "apikey", "key", "bearer"];

export interface ServerConfig {
  /** Address to bind (default 127.0.0.1; 0.0.0.0 in containers). */
  host: string;
  /** Port to listen on (default 8080; 0 picks a free one). */
  port: number;
  /** Credential MCP clients send as `Authorization: Bearer …`. */
  authToken: string;
  /** Credential agents send; AUTH_TOKEN when AGENT_TOKEN is unset, as in the original. */
  agentToken: string;
  databasePath: string;
  /** Public origin (https://relay.example.com) when deployed behind a proxy; allowed as Host and Origin. */
  publicUrl?: URL;
}

/** Environment variables the server reads; `--help` prints this table. */
const ENV_HELP: [string, string][] = [
  ["AUTH_TOKEN", `Bearer token for MCP clients, at least ${MIN_TOKEN_LENGTH} characters (required; make one: openssl rand -hex 32)`],
  ["AGENT_TOKEN", "Token agents connect with (default: AUTH_TOKEN)"],
  ["PORT", "Port to listen on (default 8080)"],
  ["HOST", "Address to bind (default 127.0.0.1; use 0.0.0.0 in a container)"],
  ["DATABASE_PATH", "SQLite audit database (default ./data/code-remote.db)"],
  ["PUBLIC_URL", "Public https:// origin when behind a proxy or tunnel (e.g. https://abc.ngrok.app)"],
];

const USAGE = `code-remote server ${VERSION}: the relay between MCP clients and Code Remote agents.

Usage:
  bun run server.ts            serve (also: bun run start)
  bun run server.ts dev        serve on 127.0.0.1 with a local agent and a generated token (also: bun run dev)
  bun run server.ts --help | --version

Configuration (environment variables; Bun also reads a .env file):
${ENV_HELP.map(([k, v]) => `  ${k.padEnd(16)} ${v}`).join("\n")}`;

export class ConfigError extends Error {}

function checkTokenStrength(name: string, token: string): void {
  const hint = "Make one with: openssl rand -hex 32";
  if (token.length < MIN_TOKEN_LENGTH) throw new ConfigError(`${name} must be at least ${MIN_TOKEN_LENGTH} characters. ${hint}`);
  if (/\s/.test(token)) throw new ConfigError(`${name} must not contain spaces. ${hint}`);
  if (new Set(token).size < 8) throw new ConfigError(`${name} is too repetitive to be a secret. ${hint}`);
}

export function loadConfig(env: Record<string, string | undefined>): ServerConfig {
  const authToken = env.AUTH_TOKEN ?? "";
  if (!authToken) throw new ConfigError("AUTH_TOKEN is not set. Make one with: openssl rand -hex 32");
  checkTokenStrength("AUTH_TOKEN", authToken);
  if (env.AGENT_TOKEN) checkTokenStrength("AGENT_TOKEN", env.AGENT_TOKEN);
  const port = Number(env.PORT ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError("PORT must be a port number (0-65535).");
  return {
    host: env.HOST || "127.0.0.1",
    port,
    authToken,
    agentToken: env.AGENT_TOKEN || authToken,
    databasePath: env.DATABASE_PATH || "./data/code-remote.db",
    publicUrl: env.PUBLIC_URL ? parsePublicUrl(env.PUBLIC_URL) : undefined,
  };
}

function parsePublicUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`PUBLIC_URL '${raw}' is not a URL; e.g. PUBLIC_URL=https://relay.example.com`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new ConfigError("PUBLIC_URL must be an http(s) URL.");
  return new URL(url.origin);
}

// --- logging ---

/** One line per event on stderr. Never given a token, a query string or a request body. */
function log(level: "info" | "warn" | "error", message: string, fields: Record<string, unknown> = {}): void {
  const parts = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  console.error([new Date().toISOString(), "server", level, message, ...parts].join(" "));
}

// --- storage: the audit log ---

export type CallOutcome = "unfinished" | "ok" | "error" | "timed_out" | "cancelled";

interface CallStart {
  tool: string;
  machine: string | null;
  arguments: Record<string, unknown>;
  client: string;
  session: string | null;
}

interface CallEnd {
  outcome: CallOutcome;
  machine?: string;
  exitCode?: number | null;
  error?: string;
}

/** The audit log in SQLite (WAL). A tool call's row is written when it starts and completed when it ends, so a
 *  crash leaves an "unfinished" row rather than nothing. Written file contents are kept as size + SHA-256 only. */
export class AuditLog {
  readonly #db: Database;
  readonly #insertCall;
  readonly #finishCall;
  readonly #insertEvent;

  constructor(file: string) {
    if (file !== ":memory:") fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
    this.#db = new Database(file, { create: true, strict: true });
    this.#db.run("PRAGMA journal_mode = WAL");
    this.#db.run("PRAGMA busy_timeout = 5000");
    this.#db.run("PRAGMA synchronous = NORMAL"); // WAL + NORMAL survives a process crash; only power loss can drop the tail
    this.#db.run(`CREATE TABLE IF NOT EXISTS tool_calls (
      id INTEGER PRIMARY KEY,
      started_at TEXT NOT NULL,
      finished_at TEXT,
      client TEXT NOT NULL,
      session TEXT,
      machine TEXT,
      tool TEXT NOT NULL,
      arguments TEXT NOT NULL,
      outcome TEXT NOT NULL DEFAULT 'unfinished',
      exit_code INTEGER,
      duration_ms INTEGER,
      error TEXT)`);
    this.#db.run(`CREATE TABLE IF NOT EXISTS events (
      id INTEGER PRIMARY KEY,
      at TEXT NOT NULL,
      kind TEXT NOT NULL,
      machine TEXT,
      address TEXT,
      detail TEXT)`);
    this.#insertCall = this.#db.prepare(
      `INSERT INTO tool_calls (started_at, client, session, machine, tool, arguments)
       VALUES ($started_at, $client, $session, $machine, $tool, $arguments) RETURNING id`,
    );
    this.#finishCall = this.#db.prepare(
      `UPDATE tool_calls SET finished_at = $finished_at, outcome = $outcome, machine = coalesce($machine, machine),
       exit_code = $exit_code, duration_ms = $duration_ms, error = $error WHERE id = $id`,
    );
    this.#insertEvent = this.#db.prepare(
      "INSERT INTO events (at, kind, machine, address, detail) VALUES ($at, $kind, $machine, $address, $detail)",
    );
  }

  /** Records the start of a tool call; returns a function that records its end. */
  begin(call: CallStart): (end: CallEnd) => void {
    const started = performance.now();
    const row = this.#insertCall.get({
      started_at: new Date().toISOString(),
      client: call.client,
      session: call.session,
      machine: call.machine,
      tool: call.tool,
      arguments: JSON.stringify(call.arguments),
    }) as { id: number };
    return (end) =>
      this.#finishCall.run({
        id: row.id,
        finished_at: new Date().toISOString(),
        outcome: end.outcome,
        machine: end.machine ?? null,
        exit_code: end.exitCode ?? null,
        duration_ms: Math.round(performance.now() - started),
        error: end.error?.slice(0, 2000) ?? null,
      });
  }

  /** Records an event: agent connects and disconnects, refused authentications. */
  event(kind: string, fields: { machine?: string; address?: string; detail?: string }): void {
    this.#insertEvent.run({
      at: new Date().toISOString(),
      kind,
      machine: fields.machine ?? null,
      address: fields.address ?? null,
      detail: fields.detail ?? null,
    });
  }

  close(): void {
    this.#db.close();
  }
}

/** The arguments as they go into the audit log: file contents become their size and SHA-256. */
function redactArguments(tool: ToolName, args: Record<string, unknown>): Record<string, unknown> {
  if (tool !== "write_file" || typeof args.content !== "string") return args;
  const { content, ...rest } = args;
  const bytes = Buffer.from(content, args.encoding === "base64" ? "base64" : "utf8");
  return { ...rest, content_bytes: bytes.length, content_sha256: createHash("sha256").update(bytes).digest("hex") };
}

// --- relay: agents, and calls matched to results by id ---

/** Per-socket state, set at upgrade (Bun passes it back as ws.data). */
interface SocketData {
  address: string;
  openedAt: number;
  lastHeard: number;
  /** Set once the agent's hello is accepted. */
  agent?: AgentConn;
}

type AgentSocket = ServerWebSocket<SocketData>;

interface PendingCall {
  op: AgentOp;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

interface AgentConn {
  ws: AgentSocket;
  machine: string;
  hello: HelloFrame;
  connectedAt: Date;
  /** Calls sent on this socket and not answered yet. A result is matched only against its own socket's calls. */
  pending: Map<string, PendingCall>;
}

/** A failure the model should read as is: the message says what happened and what to do. */
export class ToolError extends Error {
  constructor(
    message: string,
    readonly outcome: CallOutcome = "error",
  ) {
    super(message);
  }
}

/** Registered agents and their calls. `agents` maps a machine name to its live connection: `register` adds or
 *  replaces an entry; `disconnected` removes it only if it is still that same connection, so the late close of a
 *  replaced socket can never unregister its successor. */
export class Relay {
  readonly agents = new Map<string, AgentConn>();
  readonly sockets = new Set<AgentSocket>();
  constructor(readonly audit: AuditLog) {}

  opened(ws: AgentSocket): void {
    this.sockets.add(ws);
  }

  /** Handles one frame from an agent socket. */
  received(ws: AgentSocket, data: string | Buffer): void {
    ws.data.lastHeard = Date.now();
    const parsed = parseFrame(AgentFrame, data);
    if (!parsed.ok) return this.#refuse(ws, CloseCode.protocolError, parsed.reason);
    const frame = parsed.frame;
    const conn = ws.data.agent;
    if (frame.type === "hello") return conn ? this.#refuse(ws, CloseCode.protocolError, "hello sent twice") : this.#register(ws, frame);
    if (!conn) return this.#refuse(ws, CloseCode.protocolError, "the first frame must be hello");
    if (frame.type === "ping") return void send(ws, { type: "pong", t: frame.t });
    if (frame.type === "result") this.#settle(conn, frame.id, frame.ok ? { value: frame.value } : { error: frame.error });
  }

  disconnected(ws: AgentSocket, code: number, reason: string): void {
    this.sockets.delete(ws);
    const conn = ws.data.agent;
    if (!conn) return;
    this.#failPending(conn, `Machine '${conn.machine}' disconnected before answering; the operation may or may not have completed.`);
    if (this.agents.get(conn.machine) !== conn) return; // replaced earlier: its successor stays registered
    this.agents.delete(conn.machine);
    log("info", "agent disconnected", { machine: conn.machine, code, reason });
    this.audit.event("agent_disconnected", { machine: conn.machine, address: ws.data.address, detail: `code ${code}` });
  }

  /** The connection a tool call should go to, or a ToolError that lists the connected machines. */
  pick(machine: string | undefined): AgentConn {
    if (machine) {
      const conn = this.agents.get(machine);
      if (conn) return conn;
      throw new ToolError(`Machine '${machine}' is not connected. ${this.#connectedList()}`);
    }
    const [only, ...others] = this.agents.values();
    if (only && others.length === 0) return only;
    if (!only) throw new ToolError(NO_MACHINE_MESSAGE);
    throw new ToolError(`Several machines are connected; say which one with "machine". ${this.#connectedList()}`);
  }

  /** Sends one request and resolves with the agent's validated result. Never re-sent (at most once): if the
   *  socket goes, the deadline passes or `signal` aborts, the call fails and the agent is told to cancel. */
  call<O extends AgentOp>(conn: AgentConn, op: O, args: OpArgs<O>, deadlineMs: number, signal?: AbortSignal): Promise<OpResult<O>> {
    const id = randomUUID();
    return new Promise<OpResult<O>>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        conn.pending.delete(id);
      };
      const giveUp = (error: ToolError) => {
        cleanup();
        send(conn.ws, { type: "cancel", id });
        reject(error);
      };
      const onAbort = () => giveUp(new ToolError("The call was cancelled.", "cancelled"));
      const timer = setTimeout(
        () => giveUp(new ToolError(`Machine '${conn.machine}' did not answer within ${Math.round(deadlineMs / 1000)} s.`)),
        deadlineMs,
      );
      signal?.addEventListener("abort", onAbort, { once: true });
      conn.pending.set(id, {
        op,
        resolve: (value) => (cleanup(), resolve(value as OpResult<O>)),
        reject: (error) => (cleanup(), reject(error)),
      });
      if (signal?.aborted) return onAbort();
      if (!send(conn.ws, { type: "request", id, op, args })) {
        conn.pending.get(id)?.reject(new ToolError(`Could not send to machine '${conn.machine}'; it may be disconnecting.`));
      }
    });
  }

  /** Closes sockets that fell silent or never said hello. Run every few seconds. */
  sweep(now = Date.now()): void {
    for (const ws of this.sockets) {
      if (now - ws.data.lastHeard > HEARTBEAT_TIMEOUT_MS) {
        log("warn", "agent link silent; closing", { machine: ws.data.agent?.machine, address: ws.data.address });
        ws.close(CloseCode.heartbeatTimeout, "heartbeat timeout");
        ws.terminate();
      } else if (!ws.data.agent && now - ws.data.openedAt > HELLO_TIMEOUT_MS) {
        this.#refuse(ws, CloseCode.protocolError, "no hello");
      }
    }
  }

  /** Closes every agent socket (server shutdown): agents reconnect with backoff. */
  closeAll(): void {
    for (const ws of this.sockets) ws.close(CloseCode.goingAway, "server restarting");
  }

  #register(ws: AgentSocket, hello: HelloFrame): void {
    if (hello.protocol_version !== PROTOCOL_VERSION) {
      return this.#refuse(ws, CloseCode.unsupportedVersion, `protocol ${hello.protocol_version} unsupported; this relay speaks ${PROTOCOL_VERSION}`);
    }
    const conn: AgentConn = { ws, machine: hello.machine, hello, connectedAt: new Date(), pending: new Map() };
    const previous = this.agents.get(hello.machine);
    if (previous) {
      this.#failPending(previous, `Machine '${hello.machine}' was replaced by a new connection before answering.`);
      previous.ws.close(CloseCode.replaced, "replaced: another agent connected with this machine name");
      log("warn", "agent replaced by a new connection", { machine: hello.machine, old: previous.ws.data.address, new: ws.data.address });
      this.audit.event("agent_replaced", { machine: hello.machine, address: ws.data.address });
    }
    ws.data.agent = conn;
    this.agents.set(hello.machine, conn);
    send(ws, { type: "welcome", machine: hello.machine, server_version: VERSION });
    log("info", "agent connected", { machine: hello.machine, version: hello.agent_version, os: hello.os, address: ws.data.address });
    this.audit.event("agent_connected", { machine: hello.machine, address: ws.data.address, detail: `${hello.agent_version} ${hello.os} ${hello.arch}` });
  }

  #settle(conn: AgentConn, id: string, outcome: { value: unknown } | { error: AgentError }): void {
    const call = conn.pending.get(id);
    if (!call) return; // cancelled or timed out already; a late answer is dropped
    if ("error" in outcome) return call.reject(new ToolError(outcome.error.message));
    const parsed = AGENT_OPS[call.op].result.safeParse(outcome.value);
    if (!parsed.success) {
      log("warn", "agent sent a malformed result", { machine: conn.machine, op: call.op });
      return call.reject(new ToolError(`Machine '${conn.machine}' sent a malformed answer; is its agent up to date?`));
    }
    call.resolve(parsed.data);
  }

  #failPending(conn: AgentConn, message: string): void {
    for (const call of conn.pending.values()) call.reject(new ToolError(message));
  }

  #refuse(ws: AgentSocket, code: number, reason: string): void {
    log("warn", "closing agent socket", { address: ws.data.address, reason });
    ws.close(code, reason);
  }

  #connectedList(): string {
    const names = [...this.agents.keys()].sort();
    return names.length ? `Connected: ${names.join(", ")}.` : NO_MACHINE_MESSAGE;
  }
}

const NO_MACHINE_MESSAGE =
  "No machine is connected. Start an agent on the machine: RELAY_URL=wss://<this server>/ws/agent AGENT_TOKEN=<token> code-remote-agent";

/** Sends one frame; false when Bun dropped it (the socket is closing). */
function send(ws: AgentSocket, frame: ServerFrame): boolean {
  return ws.send(JSON.stringify(frame)) !== 0;
}

// --- tools: MCP handlers and how results read ---

/** How long the relay waits for an agent's answer to `op`. */
function deadlineFor(op: AgentOp, args: Record<string, unknown>): number {
  if (op === "run_shell_command") {
    const seconds = typeof args.timeout === "number" ? args.timeout : DEFAULT_COMMAND_TIMEOUT_S;
    return seconds * 1000 + CALL_DEADLINE_MARGIN_MS;
  }
  return op === "status" ? STATUS_DEADLINE_MS : FILE_OP_DEADLINE_MS;
}

type Shaped<N extends ToolName> = ToolResult<N> & (N extends "check_agent_status" ? object : { machine: string });

function renderShell(r: Shaped<"run_shell_command">): string {
  const ending = r.timed_out
    ? `timed out and was killed${r.signal ? ` (${r.signal})` : ""}`
    : r.signal
      ? `killed by ${r.signal}`
      : `exit code ${r.exit_code}`;
  const lines = [`[${r.machine}] ${ending}, ${r.duration_ms} ms`];
  if (r.stdout) lines.push(r.stdout.replace(/\n$/, ""));
  if (r.stderr) lines.push("[stderr]", r.stderr.replace(/\n$/, ""));
  if (!r.stdout && !r.stderr) lines.push("(no output)");
  if (r.truncated) lines.push(`[output shortened: ${r.stdout_bytes} bytes of stdout and ${r.stderr_bytes} of stderr; beginning and end kept]`);
  return lines.join("\n");
}

function renderRead(r: Shaped<"read_file">): string {
  const range =
    r.encoding === "base64"
      ? `bytes ${r.offset}-${r.offset + r.returned} of ${r.size}, base64`
      : r.returned === 0
        ? `no lines at ${r.offset} (the file has ${r.total_lines ?? "more than that many"} lines)`
        : `lines ${r.offset}-${r.offset + r.returned - 1} of ${r.total_lines ?? "?"}`;
  const more = r.truncated ? `\n[more follows: read again with offset ${r.next_offset}]` : "";
  return `[${r.machine}] ${r.path} (${range})\n${r.content}${more}`;
}

function renderWrite(r: Shaped<"write_file">): string {
  return `[${r.machine}] ${r.created ? "Created" : "Wrote"} ${r.path}: ${r.bytes_written} bytes written, ${r.size} bytes now.`;
}

function renderList(r: Shaped<"list_directory">): string {
  const rows = r.entries.map((e) => {
    const name = e.type === "dir" ? `${e.name}/` : e.type === "symlink" ? `${e.name}@` : e.name;
    return `${e.type.padEnd(7)} ${String(e.size).padStart(10)}  ${e.modified.slice(0, 19)}  ${name}`;
  });
  const more = r.truncated ? [`[${r.total - r.entries.length} more entries not shown]`] : [];
  return [`[${r.machine}] ${r.path}: ${r.total} entries`, ...rows, ...more].join("\n");
}

function renderStatus(r: Shaped<"check_agent_status">): string {
  if (r.connected === 0) return NO_MACHINE_MESSAGE;
  const rows = r.machines.map((m) =>
    m.error
      ? `- ${m.machine}: connected since ${m.connected_since} but not answering: ${m.error}`
      : `- ${m.machine}: agent ${m.agent_version} on ${m.os} ${m.arch}, shell ${m.shell}, ` +
        `round trip ${m.round_trip_ms} ms, ${m.running_commands} running / ${m.queued_commands} queued commands, ` +
        `allowed roots ${m.allowed_roots?.join(", ")}, connected since ${m.connected_since}, last heartbeat ${m.last_heartbeat}`,
  );
  return [`${r.connected} machine(s) connected:`, ...rows].join("\n");
}

const RENDERERS: { [N in ToolName]: (r: Shaped<N>) => string } = {
  run_shell_command: renderShell,
  read_file: renderRead,
  write_file: renderWrite,
  list_directory: renderList,
  check_agent_status: renderStatus,
};

const toolError = (message: string): CallToolResult => ({ isError: true, content: [{ type: "text", text: message }] });

/** Who is calling, for the audit log and for binding sessions. */
interface CallerContext {
  relay: Relay;
  audit: AuditLog;
  client: string;
  session: () => string | null;
  /** Counts calls in flight, so an idle-session sweep never closes a session that is waiting on a machine. */
  inflight: { count: number };
}

async function checkAgentStatus(relay: Relay, machine: string | undefined): Promise<ToolResult<"check_agent_status">> {
  const conns = machine ? [relay.pick(machine)] : [...relay.agents.values()];
  const machines = await Promise.all(
    conns.map(async (conn) => {
      const base = {
        machine: conn.machine,
        connected_since: conn.connectedAt.toISOString(),
        last_heartbeat: new Date(conn.ws.data.lastHeard).toISOString(),
      };
      const started = performance.now();
      try {
        const status = await relay.call(conn, "status", {}, STATUS_DEADLINE_MS);
        return { ...base, ...status, round_trip_ms: Math.round((performance.now() - started) * 10) / 10 };
      } catch (e) {
        return { ...base, round_trip_ms: null, error: e instanceof Error ? e.message : String(e) };
      }
    }),
  );
  return { machines, connected: machines.length };
}

/** Runs one tool call: audit row, routing, the agent round trip, and a result with both renderings. */
async function callTool(name: ToolName, input: Record<string, unknown>, signal: AbortSignal, ctx: CallerContext): Promise<CallToolResult> {
  const { machine, ...args } = input as { machine?: string } & Record<string, unknown>;
  const finish = ctx.audit.begin({ tool: name, machine: machine ?? null, arguments: redactArguments(name, args), client: ctx.client, session: ctx.session() });
  let target = machine; // the machine the call went to, once known
  ctx.inflight.count++;
  try {
    if (name === "check_agent_status") {
      const result = await checkAgentStatus(ctx.relay, machine);
      finish({ outcome: "ok" });
      return { structuredContent: result, content: [{ type: "text", text: renderStatus(result) }] };
    }
    const conn = ctx.relay.pick(machine);
    target = conn.machine;
    const value = await ctx.relay.call(conn, name, args as OpArgs<typeof name>, deadlineFor(name, args), signal);
    const shaped = { ...value, machine: conn.machine };
    const shell = name === "run_shell_command" ? (value as ToolResult<"run_shell_command">) : undefined;
    finish({ outcome: shell?.timed_out ? "timed_out" : "ok", machine: target, exitCode: shell?.exit_code });
    const render = RENDERERS[name] as (r: typeof shaped) => string;
    return { structuredContent: shaped, content: [{ type: "text", text: render(shaped) }] };
  } catch (e) {
    const error = e instanceof ToolError ? e : new ToolError("The relay hit an unexpected error; its log has the details.");
    if (!(e instanceof ToolError)) log("error", "tool call failed unexpectedly", { tool: name, error: String(e) });
    finish({ outcome: signal.aborted ? "cancelled" : error.outcome, machine: target, error: error.message });
    return toolError(error.message);
  } finally {
    ctx.inflight.count--;
  }
}

const INSTRUCTIONS =
  "Code Remote runs commands and edits files on the user's own machines. Call check_agent_status to see which " +
  "machines are connected; pass `machine` when more than one is. File tools are limited to each machine's allowed roots.";

/** One McpServer per session (the SDK allows one transport per server), with every tool of the table. */
function buildMcpServer(ctx: CallerContext): McpServer {
  const server = new McpServer({ name: "code-remote", version: VERSION }, { instructions: INSTRUCTIONS });
  for (const name of Object.keys(TOOLS) as ToolName[]) {
    const def = TOOLS[name];
    server.registerTool(
      name,
      {
        title: def.title,
        description: def.description,
        inputSchema: toolInputSchema(name),
        outputSchema: toolOutputSchema(name),
        annotations: { title: def.title, ...def.annotations },
      },
      (args: Record<string, unknown>, extra) => callTool(name, args, extra.signal, ctx),
    );
  }
  return server;
}

// --- auth and request guards ---

const sha256 = (text: string) => createHash("sha256").update(text).digest();

/** Compares a presented token with the expected one in constant time: both are hashed first, so neither the
 *  content nor the length of the secret leaks through timing (timingSafeEqual needs equal lengths). */
export function tokenMatches(presented: string, expectedHash: Buffer): boolean {
  return timingSafeEqual(sha256(presented), expectedHash);
}

/** The token of an `Authorization: Bearer <token>` header, or undefined. */
export function bearerToken(req: Request): string | undefined {
  const match = /^Bearer +(\S+) *$/i.exec(req.headers.get("authorization") ?? "");
  return match?.[1];
}

/** A JSON-RPC error in an HTTP response: how every refusal of an MCP request is answered. */
function jsonRpcError(status: number, code: number, message: string, headers: Record<string, string> = {}): Response {
  return Response.json({ jsonrpc: "2.0", error: { code, message }, id: null }, { status, headers });
}

interface Guards {
  /** Verifies an MCP client's bearer token; the OAuth issue adds its verifier here. */
  checkClient(req: Request, address: string): AuthInfo | Response;
  /** Verifies an agent's bearer token. */
  checkAgent(req: Request, address: string): Response | undefined;
  checkHost(req: Request): Response | undefined;
  checkOrigin(req: Request): Response | undefined;
}

function hasTokenInQuery(req: Request): boolean {
  const params = new URL(req.url).searchParams;
  return [...params.keys()].some((k) => TOKEN_QUERY_PARAMS.includes(k.toLowerCase()));
}

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

function makeGuards(config: ServerConfig, port: number, audit: AuditLog): Guards {
  const clientHash = sha256(config.authToken);
  const agentHash = sha256(config.agentToken);
  const allowedOrigins = new Set([`http://127.0.0.1:${port}`, `http://localhost:${port}`, `http://[::1]:${port}`]);
  if (config.publicUrl) allowedOrigins.add(config.publicUrl.origin);

  const refuse = (req: Request, address: string, reason: string, message: string) => {
    const where = new URL(req.url).pathname;
    log("warn", "authentication refused", { path: where, address, reason });
    audit.event("auth_refused", { address, detail: `${where}: ${reason}` });
    return jsonRpcError(401, -32001, message, { "WWW-Authenticate": 'Bearer realm="code-remote"' });
  };
  const checkBearer = (req: Request, address: string, expected: Buffer, credential: string) => {
    if (hasTokenInQuery(req)) {
      return refuse(req, address, "token in URL", "Tokens in URLs are refused (URLs end up in logs). Send the header Authorization: Bearer <token>.");
    }
    const token = bearerToken(req);
    if (!token) return refuse(req, address, "no token", `Missing credentials. Send the header Authorization: Bearer <${credential}>.`);
    if (!tokenMatches(token, expected)) return refuse(req, address, "wrong token", "Invalid token.");
    return undefined;
  };

  return {
    checkClient(req, address) {
      const denied = checkBearer(req, address, clientHash, "AUTH_TOKEN");
      if (denied) return denied;
      return { token: bearerToken(req)!, clientId: "owner", scopes: [] };
    },
    checkAgent: (req, address) => checkBearer(req, address, agentHash, "AGENT_TOKEN"),
    // DNS rebinding: a browser page on another site may reach us under a hostname it controls; only our own
    // names are served. The MCP spec requires the Origin check; the Host check is defence in depth.
    checkHost(req) {
      const host = new URL(req.url).host;
      const hostname = host.replace(/:\d+$/, "");
      if (LOOPBACK_HOSTS.has(hostname) || host === config.publicUrl?.host) return undefined;
      return jsonRpcError(403, -32000, `Host '${host.slice(0, 100)}' is not served here. If it is this server's public address, set PUBLIC_URL=https://${host.slice(0, 100)}`);
    },
    checkOrigin(req) {
      const origin = req.headers.get("origin");
      if (!origin || allowedOrigins.has(origin)) return undefined;
      return jsonRpcError(403, -32000, "Origin not allowed.");
    },
  };
}

// --- transports: Streamable HTTP sessions and the legacy HTTP+SSE transport ---

interface McpSession {
  transport: WebStandardStreamableHTTPServerTransport;
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
      return session.transport.handleRequest(req, { authInfo: auth });
    }
    if (req.method !== "POST") return jsonRpcError(400, -32000, "Bad request: Mcp-Session-Id header is required.");
    let body: unknown;
    try {
      body = await req.json();
    } catch {
      return jsonRpcError(400, -32700, "Parse error: the body is not JSON.");
    }
    if (!isInitializeRequest(body)) return jsonRpcError(400, -32000, "Bad request: start a session with initialize.");
    return this.#open(req, body, auth);
  }

  async #open(req: Request, body: unknown, auth: AuthInfo): Promise<Response> {
    const inflight = { count: 0 };
    const transport: WebStandardStreamableHTTPServerTransport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
      keepAliveMs: SSE_KEEPALIVE_MS,
      onsessioninitialized: (id) => {
        this.#sessions.set(id, { transport, clientId: auth.clientId, lastSeen: Date.now(), inflight });
      },
    });
    transport.onclose = () => {
      if (transport.sessionId) this.#sessions.delete(transport.sessionId);
    };
    await buildMcpServer(this.newContext(auth.clientId, () => transport.sessionId ?? null, inflight)).connect(transport);
    return transport.handleRequest(req, { parsedBody: body, authInfo: auth });
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
    this.onmessage?.(parsed.data, { authInfo: auth, requestInfo: { headers: Object.fromEntries(req.headers) } });
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

/** The address of the peer, for logs and the audit (never used for authentication). */
const addressOf = (server: Server<SocketData>, req: Request) => server.requestIP(req)?.address ?? "unknown";

export function startServer(config: ServerConfig): RunningServer {
  const audit = new AuditLog(config.databasePath);
  const relay = new Relay(audit);
  const newContext = (client: string, session: () => string | null, inflight: { count: number }): CallerContext => ({
    relay,
    audit,
    client,
    session,
    inflight,
  });
  const streamable = new StreamableSessions(newContext);
  const sseSessions = new Map<string, SseTransport>();
  let guards: Guards; // needs the bound port, so it is made right after Bun.serve returns

  /** Host, Origin and bearer checks shared by every MCP route. */
  const authorize = (req: Request, server: Server<SocketData>): AuthInfo | Response =>
    guards.checkHost(req) ?? guards.checkOrigin(req) ?? guards.checkClient(req, addressOf(server, req));

  const mcp = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server);
    return auth instanceof Response ? auth : streamable.handle(req, auth);
  };

  const openSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server);
    if (auth instanceof Response) return auth;
    server.timeout(req, 0); // the stream lives as long as the client keeps it; keep-alives show it is alive
    const transport = new SseTransport("/messages", auth.clientId);
    sseSessions.set(transport.sessionId, transport);
    transport.onclose = () => sseSessions.delete(transport.sessionId);
    await buildMcpServer(newContext(auth.clientId, () => transport.sessionId, { count: 0 })).connect(transport);
    return transport.response;
  };

  const postSse = async (req: Request, server: Server<SocketData>) => {
    const auth = authorize(req, server);
    if (auth instanceof Response) return auth;
    const transport = sseSessions.get(new URL(req.url).searchParams.get("sessionId") ?? "");
    if (!transport || transport.clientId !== auth.clientId) return jsonRpcError(404, -32001, "Session not found; open a new /sse stream.");
    return transport.handlePost(req, auth);
  };

  const upgradeAgent = (req: Request, server: Server<SocketData>) => {
    const address = addressOf(server, req);
    const denied = guards.checkOrigin(req) ?? guards.checkAgent(req, address);
    if (denied) return denied;
    const now = Date.now();
    if (server.upgrade(req, { data: { address, openedAt: now, lastHeard: now } })) return undefined;
    return new Response("Expected a WebSocket upgrade.", { status: 426 });
  };

  const health = (req: Request, server: Server<SocketData>) => {
    const base = { status: "ok", version: VERSION };
    // Machine names are only for someone who holds the token.
    const auth = bearerToken(req) ? guards.checkClient(req, addressOf(server, req)) : undefined;
    if (!auth || auth instanceof Response) return Response.json(base);
    return Response.json({ ...base, machines: [...relay.agents.keys()].sort(), sessions: streamable.size + sseSessions.size });
  };

  const routes = {
    "/health": { GET: health },
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
  guards = makeGuards(config, server.port!, audit);

  const sweeps = [
    setInterval(() => relay.sweep(), HEARTBEAT_INTERVAL_MS),
    setInterval(() => streamable.sweep(), SESSION_SWEEP_MS),
  ];
  const url = new URL(`http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`);
  return {
    url,
    relay,
    sweepSessions: (now = Date.now()) => streamable.sweep(now),
    async stop() {
      sweeps.forEach(clearInterval);
      relay.closeAll();
      await streamable.closeAll();
      await Promise.all([...sseSessions.values()].map((t) => t.close()));
      await server.stop(true);
      audit.close();
    },
  };
}

// --- lifecycle: serve, dev, and signals ---

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
    env: { ...process.env, RELAY_URL: new URL("/ws/agent", url).toString().replace(/^http/, "ws"), AGENT_TOKEN: config.agentToken, MACHINE_NAME: env.MACHINE_NAME ?? os.hostname().split(".")[0] },
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

export function main(argv: string[], env: Record<string, string | undefined> = process.env): number {
  const [command, ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") {
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
