// Raw access for the hostile suite: HTTP requests and WebSocket frames that no SDK client would send, read back as
// status, headers and JSON-RPC messages, plus a check that a secret appears nowhere a relay or agent writes.

import * as fs from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { approve, TestOAuthProvider } from "../helpers/oauth.ts";
import type { Agent, Relay } from "../helpers/processes.ts";

export const PROTOCOL_VERSION = "2025-11-25";

export const INITIALIZE = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "hostile", version: "1" } },
};

/** What came back: the status, the headers, the body, and the JSON-RPC messages in it (JSON or SSE). */
export interface Reply {
  status: number;
  headers: Headers;
  text: string;
  messages: any[];
  /** The error of the first message, if it is one. */
  error?: { code: number; message: string };
}

export const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
export const MCP_HEADERS = { "Content-Type": "application/json", Accept: "application/json, text/event-stream" };

async function read(response: Response): Promise<Reply> {
  const text = await response.text();
  const type = response.headers.get("content-type") ?? "";
  let messages: any[] = [];
  if (type.includes("text/event-stream")) {
    messages = text
      .split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => JSON.parse(line.slice(6)));
  } else if (type.includes("json") && text) {
    messages = [JSON.parse(text)];
  }
  return { status: response.status, headers: response.headers, text, messages, error: messages[0]?.error };
}

/** POSTs `body` (sent as is when a string) to `path` on the relay. */
export async function post(relay: Pick<Relay, "url">, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const response = await fetch(new URL(path, relay.url), {
    method: "POST",
    headers: { ...MCP_HEADERS, ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return read(response);
}

export async function request(relay: Pick<Relay, "url">, path: string, init: RequestInit): Promise<Reply> {
  return read(await fetch(new URL(path, relay.url), init));
}

/** A Streamable HTTP session opened by hand: initialize, then notifications/initialized. */
export interface RawSession {
  id: string;
  /** The headers every request of the session carries (token, session id, protocol version). */
  headers: Record<string, string>;
  post(body: unknown, headers?: Record<string, string>): Promise<Reply>;
  /** A tools/call with a fresh id; the reply's first message is its answer. */
  callTool(name: string, args: unknown): Promise<Reply>;
}

let nextId = 1000;

export async function openSession(relay: Pick<Relay, "url" | "token">, token = relay.token): Promise<RawSession> {
  const init = await post(relay, "/mcp", INITIALIZE, bearer(token));
  const id = init.headers.get("mcp-session-id");
  if (init.status !== 200 || !id) throw new Error(`initialize failed: ${init.status} ${init.text}`);
  const headers = { ...bearer(token), "Mcp-Session-Id": id, "MCP-Protocol-Version": PROTOCOL_VERSION };
  const session: RawSession = {
    id,
    headers,
    post: (body, extra = {}) => post(relay, "/mcp", body, { ...headers, ...extra }),
    callTool: (name, args) => session.post({ jsonrpc: "2.0", id: nextId++, method: "tools/call", params: { name, arguments: args } }),
  };
  const initialized = await session.post({ jsonrpc: "2.0", method: "notifications/initialized" });
  if (initialized.status !== 202) throw new Error(`notifications/initialized got ${initialized.status}`);
  return session;
}

/** The stateless revision: no initialize and no session; each request carries its version in _meta. */
export const MODERN_PROTOCOL_VERSION = "2026-07-28";

/** A 2026-07-28 request as a conforming client sends it: its protocol version and capabilities in _meta, and the
 *  standard headers that must agree with the body (MCP-Protocol-Version, Mcp-Method, and Mcp-Name on a tools/call). */
export function modernRequest(method: string, params: Record<string, unknown> = {}, id: number | string = nextId++) {
  const meta = { "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION, "io.modelcontextprotocol/clientCapabilities": {}, ...(params._meta as object) };
  const named = method === "tools/call" && typeof params.name === "string" ? { "Mcp-Name": params.name } : {};
  return {
    body: { jsonrpc: "2.0", id, method, params: { ...params, _meta: meta } as Record<string, any> },
    headers: { ...MCP_HEADERS, "MCP-Protocol-Version": MODERN_PROTOCOL_VERSION, "Mcp-Method": method, ...named } as Record<string, string>,
  };
}

/** POSTs a 2026-07-28 request to /mcp with `token`; `headers` change or add to its standard ones. */
export function postModern(relay: Pick<Relay, "url">, token: string, method: string, params?: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Reply> {
  const sent = modernRequest(method, params);
  return post(relay, "/mcp", sent.body, { ...sent.headers, ...bearer(token), ...headers });
}

/** The text of a tools/call answer, and whether it is a tool error. */
export function toolAnswer(reply: Reply): { isError: boolean; text: string; data: any } {
  const result = reply.messages[0]?.result;
  if (!result) throw new Error(`not a tool result: ${reply.status} ${reply.text.slice(0, 500)}`);
  return { isError: result.isError === true, text: result.content?.[0]?.text ?? "", data: result.structuredContent };
}

/** What an OAuth client holds after the owner approved it: its tokens and its own credentials. */
export interface Grant {
  access: string;
  refresh: string;
  clientId: string;
  clientSecret: string;
}

/** A second principal: an OAuth client registers, the owner approves it with `ownerSecret`, it gets tokens for
 *  `/mcp` (the SDK's own client runs the flow). */
export async function oauthGrant(relay: Pick<Relay, "url">, ownerSecret: string): Promise<Grant> {
  const provider = new TestOAuthProvider();
  const first = new StreamableHTTPClientTransport(new URL("/mcp", relay.url), { authProvider: provider });
  const refused = await new Client({ name: "second-principal", version: "1" }).connect(first).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(refused instanceof UnauthorizedError) || !provider.authorizationUrl) throw new Error(`expected an authorization request, got ${String(refused)}`);
  await first.finishAuth(await approve(provider.authorizationUrl, ownerSecret));
  const tokens = provider.tokens()!;
  const client = provider.clientInformation()!;
  return { access: tokens.access_token, refresh: tokens.refresh_token!, clientId: client.client_id, clientSecret: client.client_secret! };
}

export const oauthAccessToken = async (relay: Pick<Relay, "url">, ownerSecret: string) => (await oauthGrant(relay, ownerSecret)).access;

/** Where `secret` shows up: the output of each process, and the database files (raw bytes, any layout). */
export function whereLeaked(secret: string, relay: Relay, agents: Agent[] = []): string[] {
  const places: [string, string | Buffer][] = [
    ["relay stdout", relay.stdout.text],
    ["relay stderr", relay.stderr.text],
    ...agents.flatMap((a): [string, string][] => [
      [`agent ${a.machine} stdout`, a.stdout.text],
      [`agent ${a.machine} stderr`, a.stderr.text],
    ]),
    ...["", "-wal", "-journal"]
      .map((suffix) => relay.databasePath + suffix)
      .filter((file) => fs.existsSync(file))
      .map((file): [string, Buffer] => [file, fs.readFileSync(file)]),
  ];
  return places.filter(([, content]) => content.includes(secret)).map(([where]) => where);
}

/** A raw WebSocket to the relay's agent endpoint, with the next frame and the close as promises. */
export interface RawSocket {
  ws: WebSocket;
  opened: Promise<boolean>;
  closed: Promise<{ code: number; reason: string }>;
  frames: string[];
  send(data: string | Uint8Array): void;
  /** Resolves with the next text frame (or one already received and not yet taken), or null on close/timeout. */
  next(timeoutMs?: number): Promise<string | null>;
}

export function rawSocket(url: string, headers: Record<string, string>): RawSocket {
  const ws = new WebSocket(url, { headers } as never);
  const frames: string[] = [];
  let taken = 0;
  let wake: (() => void) | undefined;
  let isClosed = false;
  const opened = new Promise<boolean>((resolve) => {
    ws.addEventListener("open", () => resolve(true));
    ws.addEventListener("error", () => resolve(false));
    ws.addEventListener("close", () => resolve(false));
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.addEventListener("close", (e) => {
      isClosed = true;
      wake?.();
      resolve({ code: e.code, reason: e.reason });
    }),
  );
  ws.addEventListener("message", (e) => {
    frames.push(typeof e.data === "string" ? e.data : "(binary)");
    wake?.();
  });
  return {
    ws,
    opened,
    closed,
    frames,
    send: (data) => ws.send(data),
    async next(timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (taken >= frames.length && !isClosed && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, Math.max(0, deadline - Date.now()));
        });
      }
      return taken < frames.length ? frames[taken++]! : null;
    },
  };
}

/** A legacy /sse stream, opened over a plain TCP connection: fetch would hold one of the few connections Bun's client
 *  keeps per process for as long as each stream lives, and a test may need hundreds of streams open at once. */
export interface SseStream {
  /** Where its messages are POSTed: /messages?sessionId=… */
  endpoint: string;
  /** Everything the relay has sent on the stream so far (HTTP headers and chunk framing included). */
  received(): string;
  /** Resolves when the relay ends the stream. */
  ended: Promise<void>;
  close(): void;
}

export async function openSseStream(relay: Pick<Relay, "port">, token: string): Promise<SseStream> {
  let text = "";
  let end!: () => void;
  const ended = new Promise<void>((resolve) => (end = resolve));
  let sawEndpoint!: (endpoint: string) => void;
  const endpoint = new Promise<string>((resolve) => (sawEndpoint = resolve));
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port: relay.port,
    socket: {
      data(_, chunk) {
        text += chunk.toString();
        const named = /data: (\/messages\?sessionId=[\w-]+)/.exec(text);
        if (named) sawEndpoint(named[1]!);
        if (text.endsWith("\r\n0\r\n\r\n")) end(); // the last chunk of a chunked body: the relay closed the stream
      },
      close: () => end(),
    },
  });
  socket.write(`GET /sse HTTP/1.1\r\nHost: 127.0.0.1:${relay.port}\r\nAuthorization: Bearer ${token}\r\nAccept: text/event-stream\r\n\r\n`);
  const named = await Promise.race([endpoint, ended.then(() => undefined), Bun.sleep(10_000).then(() => undefined)]);
  if (!named) throw new Error(`no endpoint event on the /sse stream; received: ${text.slice(0, 500)}`);
  return { endpoint: named, received: () => text, ended, close: () => socket.end() };
}
