// The MCP transports, by protocol revision. At /mcp (McpEndpoint), a 2026-07-28 request stands alone and is served by
// the v2 SDK's stateless handler with an McpServer of its own; a 2025 client keeps a Streamable HTTP session (one
// McpServer per Mcp-Session-Id). The legacy HTTP+SSE transport (GET /sse + POST /messages, 2024-11-05) runs on web
// streams. Every McpServer comes from tools.ts; in sessions and on /sse the relay screens each message itself first
// (screenMessage), so both refuse batches and reused request ids the same way. server.ts authenticates a request
// before it reaches anything here.

import { randomUUID } from "node:crypto";
import { ClientRequestSchema, JSONRPCMessageSchema } from "@modelcontextprotocol/core";
import {
  createMcpHandler,
  isInitializeRequest,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isLegacyRequest,
  PROTOCOL_VERSION_META_KEY,
  ProtocolError,
  RELATED_TASK_META_KEY,
  WebStandardStreamableHTTPServerTransport,
  type AuthInfo,
  type JSONRPCMessage,
  type JSONRPCRequest,
  type McpHttpHandler,
  type McpServer,
  type Transport,
} from "@modelcontextprotocol/server";
import { jsonRpcError } from "./auth.ts";
import { SSE_PROTOCOL, withProtocol } from "./tools.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** Bun.serve closes a connection after this many idle seconds (its default of 10 s would cut SSE streams and
 *  long calls). Streams stay busier than this: the SDK's keep-alive and ours fire every SSE_KEEPALIVE_MS. */
export const IDLE_TIMEOUT_S = 30;
const SSE_KEEPALIVE_MS = 10_000;
/** Largest HTTP request body (write_file content travels in one): 413 beyond it. */
export const MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024;
/** A Streamable HTTP session unused this long (and with no call in flight) is closed; its client re-initializes. */
const SESSION_IDLE_MS = 60 * 60 * 1000;
export const SESSION_SWEEP_MS = 60 * 1000;
/** Sessions one client (token holder) may keep on each transport; each holds an McpServer (~16 KiB). A new one
 *  beyond this closes the client's least recently used session that has nothing in flight. */
const MAX_SESSIONS_PER_CLIENT = 256;

/** What the per-client cap needs to know of a session, on either transport. */
interface CappedSession {
  /** The principal that created the session: a session id is never a credential on its own. */
  clientId: string;
  /** When its client last sent it a message (or opened it). */
  lastSeen: number;
  /** Ids of requests received and not answered yet (see screenMessage): a session with any is busy, so it is
   *  never closed as idle while a call waits on a machine. */
  pending: Set<string>;
  /** Ends it and forgets it at once. */
  close(): Promise<void>;
}

interface McpSession extends CappedSession {
  transport: WebStandardStreamableHTTPServerTransport;
}

/** Makes room for one more session of `clientId` by closing its least recently used idle one when it is at the cap
 *  (whose client then gets 404, or its stream ends, and it starts again, as after the idle sweep). False when all
 *  are busy. */
function roomForSession(sessions: Iterable<CappedSession>, clientId: string): boolean {
  const own = [...sessions].filter((s) => s.clientId === clientId);
  if (own.length < MAX_SESSIONS_PER_CLIENT) return true;
  const idle = own.filter((s) => s.pending.size === 0).sort((a, b) => a.lastSeen - b.lastSeen)[0];
  if (!idle) return false;
  void idle.close();
  return true;
}

/** Ends every session whose principal has lost its access by `revoked`'s word (asked once per principal): an OAuth
 *  client the owner revoked keeps no stream open and no call running. */
function closeRevoked(sessions: Iterable<CappedSession>, revoked: (clientId: string) => boolean): void {
  const verdicts = new Map<string, boolean>();
  for (const session of [...sessions]) {
    if (!verdicts.has(session.clientId)) verdicts.set(session.clientId, revoked(session.clientId));
    if (verdicts.get(session.clientId)) void session.close();
  }
}

const tooManySessions = (howToClose: string) =>
  jsonRpcError(429, -32000, `Too many sessions: this client has ${MAX_SESSIONS_PER_CLIENT} with calls in flight. ${howToClose}`);

/** Makes an McpServer with every tool (tools.ts); tool handlers learn their caller from each request. */
export type ServerFactory = () => McpServer;

/** The stateless revision, served without sessions. */
const MODERN_PROTOCOL = "2026-07-28";
/** The protocol revision of a request to /mcp, as its header says: required on 2026-07-28 (the SDK refuses a request
 *  whose header and _meta disagree) and on a session's requests since 2025-06-18; 2025-03-26 did not have it yet. */
const protocolOf = (req: Request) => req.headers.get("mcp-protocol-version") ?? "2025-03-26";

/** Stateful Streamable HTTP: one transport and one McpServer per Mcp-Session-Id. */
export class StreamableSessions {
  readonly #sessions = new Map<string, McpSession>();
  constructor(readonly newServer: ServerFactory) {}

  get size() {
    return this.#sessions.size;
  }

  /** A 2025 client's request (isLegacyRequest): `body` is the POST's, already read. */
  handle(req: Request, auth: AuthInfo, body: unknown): Promise<Response> | Response {
    const id = req.headers.get("mcp-session-id");
    if (id) {
      const session = this.#sessions.get(id);
      if (!session || session.clientId !== auth.clientId) return jsonRpcError(404, -32001, "Session not found; initialize a new one.");
      session.lastSeen = Date.now();
      return req.method === "POST" ? this.#post(req, body, session, auth) : session.transport.handleRequest(req, { authInfo: withProtocol(auth, protocolOf(req), req) });
    }
    if (req.method !== "POST") return jsonRpcError(400, -32000, "Bad request: Mcp-Session-Id header is required.");
    if (!(isObject(body) && body.method === "initialize" && isInitializeRequest(body))) return jsonRpcError(400, -32000, `Bad request: start a session with initialize, or speak ${MODERN_PROTOCOL} (the protocol version in each request's _meta).`);
    return this.#open(req, body, auth);
  }

  /** A message in a session: the relay's own checks first (screenMessage), then the SDK's transport. */
  async #post(req: Request, body: unknown, session: McpSession, auth: AuthInfo): Promise<Response> {
    const screened = screenMessage(body, session.pending);
    if (screened) return "refuse" in screened ? screened.refuse : Response.json(screened.answer);
    const response = await session.transport.handleRequest(req, { parsedBody: body, authInfo: withProtocol(auth, protocolOf(req), req) });
    // Refused by the transport (a bad header, say): the request will get no answer, so it is not pending.
    if (response.status >= 400 && isRequest(body)) session.pending.delete(requestKey(body.id));
    return response;
  }

  async #open(req: Request, body: unknown, auth: AuthInfo): Promise<Response> {
    if (!roomForSession(this.#sessions.values(), auth.clientId)) return tooManySessions("Close some (DELETE /mcp) first.");
    const pending = new Set<string>();
    const transport: WebStandardStreamableHTTPServerTransport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
      keepAliveMs: SSE_KEEPALIVE_MS,
      onsessioninitialized: (id) => {
        const close = () => (this.#sessions.delete(id), transport.close());
        this.#sessions.set(id, { transport, pending, clientId: auth.clientId, lastSeen: Date.now(), close });
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
    await this.newServer().connect(transport);
    return transport.handleRequest(req, { parsedBody: body, authInfo: withProtocol(auth, protocolOf(req), req) });
  }

  /** Closes sessions idle past SESSION_IDLE_MS with nothing in flight (clients that vanished without DELETE). */
  sweep(now = Date.now()): void {
    for (const session of this.#sessions.values()) {
      if (now - session.lastSeen > SESSION_IDLE_MS && session.pending.size === 0) void session.transport.close();
    }
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#sessions.values()].map((s) => s.transport.close()));
  }

  /** Ends the sessions of the principals `revoked` names, with their calls in flight. */
  closeRevoked(revoked: (clientId: string) => boolean): void {
    closeRevoked(this.#sessions.values(), revoked);
  }
}

/** POST, GET and DELETE /mcp for every revision that has them. A request carrying its protocol version in _meta
 *  (2026-07-28) stands alone: one SDK handler for the relay's lifetime serves it with a fresh McpServer (tools.ts
 *  makes that cheap), and holds nothing for the client between requests. Everything else (initialize, a session's
 *  requests, its GET stream and DELETE) is a 2025 client's, served in its session. The body is read once. */
export class McpEndpoint {
  readonly sessions: StreamableSessions;
  readonly #modern: McpHttpHandler;

  constructor(newServer: ServerFactory) {
    this.sessions = new StreamableSessions(newServer);
    this.#modern = createMcpHandler(newServer, {
      legacy: "reject",
      keepAliveMs: SSE_KEEPALIVE_MS,
      maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
      onerror: reportModernError,
    });
  }

  async handle(req: Request, auth: AuthInfo): Promise<Response> {
    const body = req.method === "POST" ? await readJson(req) : undefined;
    if (body instanceof Response) return body;
    if (surelyLegacy(req, body) || (await isLegacyRequest(req, body, { maxRequestBodySize: MAX_REQUEST_BODY_BYTES }))) return this.sessions.handle(req, auth, body);
    const invalid = isObject(body) && TOOL_METHODS.has(body.method as string) && isRequest(body) ? invalidParams(body) : undefined;
    if (invalid) return Response.json(invalid);
    return this.#modern.fetch(req, { parsedBody: body, authInfo: withProtocol(auth, protocolOf(req), req) });
  }

  /** Ends every session and every 2026-07-28 request in flight. */
  async close(): Promise<void> {
    await this.sessions.closeAll();
    await this.#modern.close();
  }
}

/** The SDK's handler reports each request it refuses (a bad header, an unknown revision: the client gets the error)
 *  and its own failures; only the failures are the relay's to log. */
function reportModernError(error: Error): void {
  if (error instanceof ProtocolError || error.message.startsWith("Rejected ") || error.message.startsWith("Unsupported Media Type")) return;
  log("error", "the 2026-07-28 handler failed", { error: error.message });
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

/** The methods whose params the relay words itself on 2026-07-28. Only these: the 2025 schemas also know methods the
 *  new revision removed (initialize, logging/setLevel, resources/subscribe), which must get the SDK's 404 -32601. */
const TOOL_METHODS = new Set(["tools/call", "tools/list"]);

const requestKey = (id: string | number) => `${typeof id}:${id}`;

// Cheap structural checks for the hot paths, in place of the SDK's zod guards (tens of µs a message). Each one
// answers true only where the guard it stands for would, and leaves every case it is not sure of to that guard.

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);
const REQUEST_KEYS = new Set(["jsonrpc", "id", "method", "params"]);
/** A request `_meta` the SDK's RequestMetaSchema surely accepts: absent, or an object with no related-task key and a
 *  well-formed progress token if any. */
const plainMeta = (meta: unknown) =>
  meta === undefined ||
  (isObject(meta) && !(RELATED_TASK_META_KEY in meta) && (meta.progressToken === undefined || typeof meta.progressToken === "string" || Number.isSafeInteger(meta.progressToken)));
/** isJSONRPCRequest without zod where the shape is plain: exactly the keys the strict schema allows, of their types. */
function isRequest(value: unknown): value is JSONRPCRequest {
  if (!isObject(value)) return false;
  const plain =
    value.jsonrpc === "2.0" &&
    (typeof value.id === "string" || Number.isSafeInteger(value.id)) &&
    typeof value.method === "string" &&
    (value.params === undefined || (isObject(value.params) && plainMeta(value.params._meta))) &&
    Object.keys(value).every((key) => REQUEST_KEYS.has(key));
  return plain || isJSONRPCRequest(value);
}

/** The legacy 2025 revisions a client may name in MCP-Protocol-Version. */
const LEGACY_PROTOCOLS = new Set(["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]);
/** Whether isLegacyRequest would surely say yes, known without it: a POSTed request with no protocol-version claim in
 *  its _meta and no modern MCP-Protocol-Version header is a 2025 client's (the SDK's classifyInboundRequest routes
 *  such a request, initialize or not, to the legacy side). Anything else is left to isLegacyRequest. */
function surelyLegacy(req: Request, body: unknown): boolean {
  const header = req.headers.get("mcp-protocol-version");
  if (req.method !== "POST" || (header !== null && !LEGACY_PROTOCOLS.has(header)) || !isRequest(body)) return false;
  const meta = body.params?._meta;
  return meta === undefined || (isObject(meta) && !(PROTOCOL_VERSION_META_KEY in meta));
}

/** An answer going out ends its request's time as pending (an error to an unparseable request names none). The
 *  message is the SDK's own, so its shape is enough: a result or an error, with an id. */
function noteAnswered(message: JSONRPCMessage, pending: Set<string>): void {
  if (!("result" in message || "error" in message)) return;
  const answered = message.id;
  if (typeof answered === "string" || typeof answered === "number") pending.delete(requestKey(answered));
}

/** Messages the relay deals with itself in sessions, where the SDK would get them wrong: it refuses a batch (MCP
 *  dropped batching in 2025-06-18, but the SDK still runs each message of one) and a request reusing the id of one
 *  still in flight (the SDK would send the first one's answer to the second, and lose track of the first: its cancel
 *  and its client's departure would no longer reach it); it answers a request whose params do not fit its method
 *  (invalidParams). Otherwise it notes the request as pending. */
function screenMessage(body: unknown, pending: Set<string>): { refuse: Response } | { answer: JSONRPCMessage } | undefined {
  if (Array.isArray(body)) return { refuse: jsonRpcError(400, -32600, "Invalid Request: send one JSON-RPC message per request (MCP has no batches).") };
  if (isObject(body) && body.method === "notifications/cancelled" && isJSONRPCNotification(body)) {
    const cancelled = (body.params as { requestId?: string | number } | undefined)?.requestId;
    if (cancelled !== undefined) pending.delete(requestKey(cancelled)); // a cancelled request is never answered
  }
  if (!isRequest(body)) return undefined;
  const key = requestKey(body.id);
  if (pending.has(key)) return { refuse: jsonRpcError(400, -32600, `Invalid Request: request id ${JSON.stringify(body.id)} is still in flight; use a new id.`) };
  const invalid = invalidParams(body);
  if (invalid) return { answer: invalid };
  pending.add(key);
  return undefined;
}

/** The answer to a request whose params do not fit its method, in a sentence: the SDK says -32603 with a raw dump in a
 *  session, and -32602 with the dump on 2026-07-28; JSON-RPC says -32602. */
function invalidParams(body: JSONRPCRequest): JSONRPCMessage | undefined {
  if (paramsSurelyFit(body.method, body.params)) return undefined;
  const invalid = REQUEST_SCHEMAS.get(body.method)?.safeParse({ method: body.method, params: body.params });
  if (!invalid || invalid.success) return undefined;
  const issue = invalid.error!.issues[0]!;
  const message = `Invalid params: ${issue.path.map(String).join(".") || "params"}: ${issue.message}`;
  return { jsonrpc: "2.0", id: body.id, error: { code: -32602, message } };
}

/** Whether the SDK's schema of `method` surely accepts `params`, known without it: the relay's hot methods, plainly
 *  shaped. False leaves the question to the schema. */
function paramsSurelyFit(method: string, params: Record<string, unknown> | undefined): boolean {
  if (params !== undefined && !(isObject(params) && plainMeta(params._meta))) return false;
  switch (method) {
    case "ping":
      return true;
    case "tools/list":
      return params?.cursor === undefined || typeof params.cursor === "string";
    case "tools/call":
      return params !== undefined && typeof params.name === "string" && (params.arguments === undefined || isObject(params.arguments)) && params.task === undefined;
    default:
      return false;
  }
}

/** The legacy HTTP+SSE transport (protocol 2024-11-05) on web streams: the SDK's SSEServerTransport needs Node's
 *  ServerResponse. GET /sse opens the event stream and names the POST endpoint; messages arrive by POST. */
class SseTransport implements Transport, CappedSession {
  readonly sessionId = randomUUID();
  readonly response: Response;
  lastSeen = Date.now();
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: Transport["onmessage"];
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #keepAlive?: ReturnType<typeof setInterval>;
  #closed = false;
  readonly pending = new Set<string>();
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
    noteAnswered(message, this.pending);
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
    const screened = screenMessage(parsed.data, this.pending);
    if (screened && "refuse" in screened) return screened.refuse;
    if (screened) await this.send(screened.answer); // on the stream, where this transport's answers go
    else this.onmessage?.(parsed.data, { authInfo: withProtocol(auth, SSE_PROTOCOL, req), request: req });
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

/** Legacy HTTP+SSE sessions: one SseTransport and one McpServer per open GET /sse stream. */
export class SseSessions {
  readonly #sessions = new Map<string, SseTransport>();
  constructor(readonly newServer: ServerFactory) {}

  get size() {
    return this.#sessions.size;
  }

  /** GET /sse: the event stream, whose first event names the POST endpoint with this session's id. */
  async open(auth: AuthInfo): Promise<Response> {
    if (!roomForSession(this.#sessions.values(), auth.clientId)) return tooManySessions("Close some of its /sse streams first.");
    const transport = new SseTransport("/messages", auth.clientId);
    this.#sessions.set(transport.sessionId, transport);
    transport.onclose = () => this.#sessions.delete(transport.sessionId);
    await this.newServer().connect(transport);
    return transport.response;
  }

  /** POST /messages?sessionId=…: a message for that session, which only the client that opened it may send. */
  post(req: Request, auth: AuthInfo): Promise<Response> | Response {
    const transport = this.#sessions.get(new URL(req.url).searchParams.get("sessionId") ?? "");
    if (!transport || transport.clientId !== auth.clientId) return jsonRpcError(404, -32001, "Session not found; open a new /sse stream.");
    transport.lastSeen = Date.now();
    return transport.handlePost(req, auth);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#sessions.values()].map((t) => t.close()));
  }

  /** Ends the streams of the principals `revoked` names, with their calls in flight. */
  closeRevoked(revoked: (clientId: string) => boolean): void {
    closeRevoked(this.#sessions.values(), revoked);
  }
}
