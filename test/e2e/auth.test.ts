// Authentication and request guards on every route, against a real relay: bearer tokens (never in URLs),
// DNS-rebinding checks on Host and Origin, what /health reveals, and that no token reaches a log or the database.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { connectClient, newToken, startAgent } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { eventsOf } from "../helpers/audit.ts";
import { call } from "../helpers/tools.ts";

const stack = useStack({ agent: { machine: "guarded" } });

const INITIALIZE = {
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "curl", version: "1" } },
};

function post(pathAndQuery: string, headers: Record<string, string> = {}, body: unknown = INITIALIZE): Promise<Response> {
  return fetch(new URL(pathAndQuery, stack.relay.url), {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream", ...headers },
    body: JSON.stringify(body),
  });
}

const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });

describe("MCP clients need the bearer token", () => {
  const refusals: [string, () => Promise<Response>][] = [
    ["no Authorization header", () => post("/mcp")],
    ["a wrong token of the same length", () => post("/mcp", bearer(newToken()))],
    ["a wrong token of another length", () => post("/mcp", bearer("short"))],
    ["the right token in ?access_token=", () => post(`/mcp?access_token=${stack.relay.token}`)],
    ["the right token in ?token= even with the header too", () => post(`/mcp?token=${stack.relay.token}`, bearer(stack.relay.token))],
    ["a Basic scheme", () => post("/mcp", { Authorization: `Basic ${btoa(`x:${stack.relay.token}`)}` })],
    ["GET /sse with a wrong token", () => fetch(new URL("/sse", stack.relay.url), { headers: bearer(newToken()) })],
    ["POST /messages without a token", () => post("/messages?sessionId=x", {})],
  ];
  for (const [what, request] of refusals) {
    test(`${what} gets 401 with WWW-Authenticate`, async () => {
      const response = await request();
      expect(response.status).toBe(401);
      expect(response.headers.get("www-authenticate")).toStartWith("Bearer");
      const body = (await response.json()) as any;
      expect(body.error.message).not.toContain(stack.relay.token);
    });
  }

  test("a token in the URL is answered with how to send it instead", async () => {
    const body = (await (await post(`/mcp?access_token=${stack.relay.token}`)).json()) as any;
    expect(body.error.message).toContain("Authorization: Bearer");
  });

  test("the scheme is case-insensitive and initialize then succeeds", async () => {
    const response = await post("/mcp", { Authorization: `bearer ${stack.relay.token}` });
    expect(response.status).toBe(200);
    expect(response.headers.get("mcp-session-id")).toBeTruthy();
  });

  test("an unknown session id gets 404, a missing one 400", async () => {
    const unknown = await post("/mcp", { ...bearer(stack.relay.token), "Mcp-Session-Id": "forged" }, { jsonrpc: "2.0", id: 2, method: "tools/list" });
    expect(unknown.status).toBe(404);
    const missing = await post("/mcp", bearer(stack.relay.token), { jsonrpc: "2.0", id: 2, method: "tools/list" });
    expect(missing.status).toBe(400);
  });

  test("a body that is not JSON gets a JSON-RPC parse error", async () => {
    const response = await fetch(new URL("/mcp", stack.relay.url), {
      method: "POST",
      headers: { ...bearer(stack.relay.token), "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
      body: "{not json",
    });
    expect(response.status).toBe(400);
    expect(((await response.json()) as any).error.code).toBe(-32700);
  });
});

describe("DNS rebinding", () => {
  test("an Origin that is not ours gets 403, even with the right token", async () => {
    const response = await post("/mcp", { ...bearer(stack.relay.token), Origin: "https://evil.example" });
    expect(response.status).toBe(403);
  });

  test("our own loopback origin is accepted", async () => {
    const response = await post("/mcp", { ...bearer(stack.relay.token), Origin: `http://127.0.0.1:${stack.relay.port}` });
    expect(response.status).toBe(200);
  });

  test("a Host that is not ours gets 403 with how to allow it", async () => {
    const response = await post("/mcp", { ...bearer(stack.relay.token), Host: "evil.example" });
    expect(response.status).toBe(403);
    expect(((await response.json()) as any).error.message).toContain("PUBLIC_URL");
  });
});

describe("agents need the agent token, in the header", () => {
  const tryConnect = (url: string, headers: Record<string, string>) =>
    new Promise<string>((resolve) => {
      const ws = new WebSocket(url, { headers });
      ws.addEventListener("open", () => (ws.close(), resolve("open")));
      ws.addEventListener("error", () => resolve("refused"));
    });
  const wsUrl = () => `ws://127.0.0.1:${stack.relay.port}/ws/agent`;

  test("a wrong token is refused at the upgrade", async () => {
    expect(await tryConnect(wsUrl(), bearer(newToken()))).toBe("refused");
  });

  test("the right token in the URL is refused", async () => {
    expect(await tryConnect(`${wsUrl()}?token=${stack.relay.token}`, {})).toBe("refused");
  });

  test("the right token in the header is accepted", async () => {
    expect(await tryConnect(wsUrl(), bearer(stack.relay.token))).toBe("open");
  });

  test("an agent with a wrong token keeps retrying and says what to check", async () => {
    await using wrong = await startAgent(stack.relay, { machine: "intruder", token: newToken(), waitConnected: false });
    await wrong.stderr.waitFor(/could not register with the relay: the relay refused the agent token \(HTTP 401\): set AGENT_TOKEN/);
  });
});

describe("/health", () => {
  test("without a token it says only that it is alive", async () => {
    const body = (await (await fetch(new URL("/health", stack.relay.url))).json()) as any;
    expect(body).toEqual({ status: "ok", version: "0.1.0" });
  });

  test("with the token it names the connected machines", async () => {
    const body = (await (await fetch(new URL("/health", stack.relay.url), { headers: bearer(stack.relay.token) })).json()) as any;
    expect(body.machines).toContain("guarded");
  });
});

describe("audit and secrecy", () => {
  test("refused authentications are recorded without the token", async () => {
    await post(`/mcp?access_token=${stack.relay.token}`);
    const refusals = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "auth_refused");
    expect(refusals.some((e) => e.detail.detail === "/mcp: token in URL" && e.detail.address === "127.0.0.1")).toBe(true);
  });

  test("neither process ever writes the token to its output, and the database does not hold it", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    await call(client, "run_shell_command", { command: "echo hello" });
    const outputs = [stack.relay.stdout.text, stack.relay.stderr.text, stack.agent.stdout.text, stack.agent.stderr.text];
    for (const output of outputs) expect(output).not.toContain(stack.relay.token);
    for (const file of [stack.relay.databasePath, `${stack.relay.databasePath}-wal`]) {
      if (fs.existsSync(file)) expect(fs.readFileSync(file).includes(stack.relay.token)).toBe(false);
    }
  });
});
