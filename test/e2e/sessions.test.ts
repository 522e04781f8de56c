// Streamable HTTP sessions that clients abandon are closed after an hour idle, but never while a call waits on a
// machine. The relay runs in this process (a real Bun.serve on loopback) so the test can run its sweep as if an
// hour had passed; the agent is a real child process.

import { expect, test } from "bun:test";
import * as path from "node:path";
import { TOOLS } from "../../protocol.ts";
import { loadConfig } from "../../relay/config.ts";
import { startServer } from "../../server.ts";
import { connectClient, newToken, startAgent, tempDir, type Relay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

const AN_HOUR_LATER = () => Date.now() + 61 * 60 * 1000;

function inProcessRelay(dir: string) {
  const token = newToken();
  const server = startServer(loadConfig({ AUTH_TOKEN: token, PORT: "0", DATABASE_PATH: path.join(dir, "audit.db") }));
  const handle = { url: server.url, token, port: Number(server.url.port) } as Relay;
  return { server, handle, [Symbol.asyncDispose]: () => server.stop() };
}

test("a session idle for an hour is closed: its client gets 404 and a new session works", async () => {
  using dir = tempDir();
  await using relay = inProcessRelay(dir.path);
  const client = await connectClient(relay.handle, "streamable-http");
  await client.listTools();
  relay.server.sweepSessions(AN_HOUR_LATER());
  await expect(client.listTools()).rejects.toThrow(/404|Session not found/);
  await using fresh = await connectClient(relay.handle, "streamable-http");
  expect((await fresh.listTools()).tools.length).toBe(Object.keys(TOOLS).length);
});

test("a session with a call in flight survives the sweep and gets its answer", async () => {
  using dir = tempDir();
  await using relay = inProcessRelay(dir.path);
  await using agent = await startAgent(relay.handle, { machine: "busy" });
  await using client = await connectClient(relay.handle, "streamable-http");
  const pending = call(client, "run_shell_command", { command: "sleep 1; echo still-here" });
  await Bun.sleep(300);
  relay.server.sweepSessions(AN_HOUR_LATER());
  expect((await pending).data.stdout).toBe("still-here\n");
  expect((await client.listTools()).tools.length).toBe(Object.keys(TOOLS).length);
  expect(agent.stderr.text).toContain("connected");
});

test("a method a route does not serve gets 405 with Allow", async () => {
  using dir = tempDir();
  await using relay = inProcessRelay(dir.path);
  const response = await fetch(new URL("/mcp", relay.server.url), { method: "PUT" });
  expect(response.status).toBe(405);
  expect(response.headers.get("allow")).toBe("GET, POST, DELETE");
  expect((await fetch(new URL("/nowhere", relay.server.url))).status).toBe(404);
});
