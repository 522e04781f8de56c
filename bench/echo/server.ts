// The bare-SDK baseline of scenario 10: a minimal MCP server on the same SDK and version as the relay
// (@modelcontextprotocol/server 2.4.0), Streamable HTTP with one session per Mcp-Session-Id in Bun.serve, as the
// relay serves a 2025 client, and one tool, `echo`, that returns its argument. Whatever CPU the relay spends per
// forwarded call beyond this server's per call is the relay's own work (auth, audit, the hop to the agent, its
// checks). Started by bench/echo.ts; prints "listening <port>" on stdout. No auth: it listens on 127.0.0.1 only.

import { randomUUID } from "node:crypto";
import { isInitializeRequest, McpServer, WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/server";
import { z } from "zod";

/** The relay's session transports allow a body this large too (relay/transports.ts MAX_REQUEST_BODY_BYTES). */
const MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024;
/** As the relay's: Bun's default of 10 s would cut a session's GET stream. */
const IDLE_TIMEOUT_S = 30;

/** Input and output schemas, as the relay's tools have both: the SDK checks the arguments on the way in and the
 *  structured result on the way out, so the baseline does the SDK's share of a tool call's work and no more. */
const echoSchema = z.object({ text: z.string() });

function newServer(): McpServer {
  const server = new McpServer({ name: "code-remote-bench-echo", version: "1.0.0" }, { capabilities: { tools: { listChanged: false } } });
  server.registerTool("echo", { description: "Returns its argument.", inputSchema: echoSchema, outputSchema: echoSchema }, ({ text }) => ({
    content: [{ type: "text", text }],
    structuredContent: { text },
  }));
  return server;
}

const sessions = new Map<string, WebStandardStreamableHTTPServerTransport>();

/** An initialize without a session id opens a session: its own transport and McpServer (one per transport). */
async function open(req: Request, body: unknown): Promise<Response> {
  const transport: WebStandardStreamableHTTPServerTransport = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    maxRequestBodySize: MAX_REQUEST_BODY_BYTES,
    onsessioninitialized: (id) => void sessions.set(id, transport),
  });
  transport.onclose = () => void (transport.sessionId && sessions.delete(transport.sessionId));
  await newServer().connect(transport);
  return transport.handleRequest(req, { parsedBody: body });
}

const badRequest = (message: string) => Response.json({ jsonrpc: "2.0", id: null, error: { code: -32000, message } }, { status: 400 });

async function handle(req: Request): Promise<Response> {
  if (new URL(req.url).pathname !== "/mcp") return new Response("not found", { status: 404 });
  // The relay reads the body once and hands it to the transport parsed; so does this server.
  const body = req.method === "POST" ? await req.json() : undefined;
  const id = req.headers.get("mcp-session-id");
  if (id) {
    const transport = sessions.get(id);
    return transport ? transport.handleRequest(req, { parsedBody: body }) : badRequest("Session not found");
  }
  if (req.method === "POST" && isInitializeRequest(body)) return open(req, body);
  return badRequest("start a session with initialize");
}

const server = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: IDLE_TIMEOUT_S, fetch: handle });
console.log(`listening ${server.port}`);
