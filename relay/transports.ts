// The MCP transports: Streamable HTTP with sessions (one McpServer per Mcp-Session-Id) and the legacy HTTP+SSE
// transport (GET /sse + POST /messages, protocol 2024-11-05) on web streams. Both hand each message to the same
// McpServer built by tools.ts, after the relay's own screening (screenMessage), so both transports refuse batches
// and reused request ids the same way. server.ts authenticates a request before it reaches anything here.

import { randomUUID } from "node:crypto";
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
import { jsonRpcError } from "./auth.ts";
import { buildMcpServer, type CallerContext } from "./tools.ts";

/** Bun.serve closes a connection after this many idle seconds (its default of 10 s would cut SSE streams and
 *  long calls). Streams stay busier than this: the SDK's keep-alive and ours fire every SSE_KEEPALIVE_MS. */
export const IDLE_TIMEOUT_S = 30;
const SSE_KEEPALIVE_MS = 10_000;
/** Largest HTTP request body (write_file content travels in one): 413 beyond it. */
export const MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024;
/** A Streamable HTTP session unused this long (and with no call in flight) is closed; its client re-initializes. */
const SESSION_IDLE_MS = 60 * 60 * 1000;
export const SESSION_SWEEP_MS = 60 * 1000;
/** Sessions one client (token holder) may keep on each transport; each holds an McpServer (~120 KB). A new one
 *  beyond this closes the client's least recently used session that has nothing in flight. */
const MAX_SESSIONS_PER_CLIENT = 256;

/** What the per-client cap needs to know of a session, on either transport. */
interface CappedSession {
  /** The principal that created the session: a session id is never a credential on its own. */
  clientId: string;
  /** When its client last sent it a message (or opened it). */
  lastSeen: number;
  /** Tool calls running in it. */
  inflight: { count: number };
  /** Ends it and forgets it at once. */
  close(): Promise<void>;
}

interface McpSession extends CappedSession {
  transport: WebStandardStreamableHTTPServerTransport;
  /** Ids of requests sent and not answered yet (see screenMessage). */
  pending: Set<string>;
}

/** Makes room for one more session of `clientId` by closing its least recently used idle one when it is at the cap
 *  (whose client then gets 404, or its stream ends, and it starts again, as after the idle sweep). False when all
 *  are busy. */
function roomForSession(sessions: Iterable<CappedSession>, clientId: string): boolean {
  const own = [...sessions].filter((s) => s.clientId === clientId);
  if (own.length < MAX_SESSIONS_PER_CLIENT) return true;
  const idle = own.filter((s) => s.inflight.count === 0).sort((a, b) => a.lastSeen - b.lastSeen)[0];
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

/** What a tool handler learns about its caller: made once per session, for the session's McpServer. */
export type ContextMaker = (client: string, session: () => string | null, inflight: { count: number }) => CallerContext;

/** Stateful Streamable HTTP: one transport and one McpServer per Mcp-Session-Id. */
export class StreamableSessions {
  readonly #sessions = new Map<string, McpSession>();
  constructor(readonly newContext: ContextMaker) {}

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
    if (!roomForSession(this.#sessions.values(), auth.clientId)) return tooManySessions("Close some (DELETE /mcp) first.");
    const inflight = { count: 0 };
    const pending = new Set<string>();
    const transport: WebStandardStreamableHTTPServerTransport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
      keepAliveMs: SSE_KEEPALIVE_MS,
      onsessioninitialized: (id) => {
        const close = () => (this.#sessions.delete(id), transport.close());
        this.#sessions.set(id, { transport, pending, clientId: auth.clientId, lastSeen: Date.now(), inflight, close });
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

  /** Closes sessions idle past SESSION_IDLE_MS with nothing in flight (clients that vanished without DELETE). */
  sweep(now = Date.now()): void {
    for (const session of this.#sessions.values()) {
      if (now - session.lastSeen > SESSION_IDLE_MS && session.inflight.count === 0) void session.transport.close();
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
class SseTransport implements Transport, CappedSession {
  readonly sessionId = randomUUID();
  readonly response: Response;
  lastSeen = Date.now();
  readonly inflight = { count: 0 };
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

/** Legacy HTTP+SSE sessions: one SseTransport and one McpServer per open GET /sse stream. */
export class SseSessions {
  readonly #sessions = new Map<string, SseTransport>();
  constructor(readonly newContext: ContextMaker) {}

  get size() {
    return this.#sessions.size;
  }

  /** GET /sse: the event stream, whose first event names the POST endpoint with this session's id. */
  async open(auth: AuthInfo): Promise<Response> {
    if (!roomForSession(this.#sessions.values(), auth.clientId)) return tooManySessions("Close some of its /sse streams first.");
    const transport = new SseTransport("/messages", auth.clientId);
    this.#sessions.set(transport.sessionId, transport);
    transport.onclose = () => this.#sessions.delete(transport.sessionId);
    await buildMcpServer(this.newContext(auth.clientId, () => transport.sessionId, transport.inflight)).connect(transport);
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
