// Per-machine agent tokens (made, listed and revoked with `bun run server.ts agent-token`), throttling of an
// address that keeps failing, and per-client limits on tool calls: against a real relay and real agents.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { connectClient, newToken, ROOT, startAgent, startRelay, type Relay } from "../helpers/processes.ts";
import { relayCommand } from "../helpers/audit.ts";
import { call } from "../helpers/tools.ts";

/** Runs `bun run server.ts agent-token …` against the relay's database. */
const agentToken = (relay: Relay, ...args: string[]) => relayCommand(relay.databasePath, "agent-token", ...args);

describe("per-machine agent tokens", () => {
  test("a token admits only its machine, is stored as a hash, and revoking it cuts the agent off at once", async () => {
    await using relay = await startRelay({ env: { AGENT_TOKEN: newToken() } });
    const created = agentToken(relay, "create", "laptop");
    expect(created.code).toBe(0);
    const token = /crm_[A-Za-z0-9_-]{43}/.exec(created.stdout)![0];
    expect(agentToken(relay, "create", "laptop").stderr).toContain("already has a token");

    await using laptop = await startAgent(relay, { machine: "laptop", token });
    await relay.stderr.waitFor(/agent connected machine="laptop".*credential="machine token"/);
    await using client = await connectClient(relay, "streamable-http");
    expect((await call(client, "run_shell_command", { command: "echo hi" })).data.stdout).toBe("hi\n");

    await using thief = await startAgent(relay, { machine: "desktop", token, waitConnected: false });
    await relay.stderr.waitFor(/closing agent socket .*reason="this agent token is for machine 'laptop'"/);

    expect(agentToken(relay, "list").stdout).toMatch(/^laptop\s+made \S+, last used \S+/m);
    const database = Buffer.concat([relay.databasePath, `${relay.databasePath}-wal`].filter(fs.existsSync).map((f) => fs.readFileSync(f)));
    expect(database.includes(token)).toBe(false);

    const revokedAt = Date.now();
    expect(agentToken(relay, "revoke", "laptop").code).toBe(0);
    await laptop.stderr.waitFor(/disconnected code=4003 reason="agent token revoked"/, 3_000);
    expect(Date.now() - revokedAt).toBeLessThan(2_500);
    await laptop.stderr.waitFor(/could not register with the relay/, 5_000); // its token no longer opens the door
    expect(agentToken(relay, "revoke", "laptop").stderr).toContain("No agent token for 'laptop'");
    await thief.stop();
  });

  test("the shared token still works, and the relay says it is the compatibility path", async () => {
    await using relay = await startRelay();
    await using agent = await startAgent(relay, { machine: "legacy" });
    await relay.stderr.waitFor(/agent connected machine="legacy".*credential="shared token \(compatibility\)"/);
    expect(agent.stderr.text).toContain('connected relay=');
    expect(relay.stderr.text).toContain("agents share AUTH_TOKEN (compatibility with the original)");
  });

  test("agent-token refuses a bad machine name and explains its usage", async () => {
    await using relay = await startRelay();
    expect(agentToken(relay, "create", "bad name").stderr).toContain("is not a machine name");
    expect(agentToken(relay, "frobnicate").stderr).toContain("usage: bun run server.ts agent-token");
  });
});

describe("abuse limits", () => {
  test("200 failed logins from one address are throttled with 429 and Retry-After; the right token and another address are not", async () => {
    // The test plays a trusted proxy (TRUST_PROXY=1), so it can speak for two client addresses.
    await using relay = await startRelay({ env: { TRUST_PROXY: "1" } });
    const attempt = (address: string, token: string) =>
      fetch(new URL("/mcp", relay.url), {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "X-Forwarded-For": `198.51.100.7, ${address}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "x", version: "1" } } }),
      });
    const statuses: number[] = [];
    for (let i = 0; i < 200; i++) statuses.push((await attempt("203.0.113.1", newToken())).status);
    expect(statuses.slice(0, 10).every((s) => s === 401)).toBe(true);
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(180);
    const blocked = await attempt("203.0.113.1", newToken()); // its failures wait
    expect(blocked.status).toBe(429);
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await attempt("203.0.113.1", relay.token)).status).toBe(200); // the right token is never held up by them
    const other = await attempt("203.0.113.2", relay.token);
    expect(other.status).toBe(200);
  }, 60_000);

  test("an agent with a wrong token is throttled too", async () => {
    await using relay = await startRelay();
    const statuses: number[] = [];
    for (let i = 0; i < 15; i++) {
      const response = await fetch(new URL("/ws/agent", relay.url), { headers: { Authorization: `Bearer ${newToken()}`, Upgrade: "websocket", Connection: "Upgrade" } });
      statuses.push(response.status);
    }
    expect(statuses.slice(0, 10)).toEqual(Array(10).fill(401));
    expect(statuses.at(-1)).toBe(429);
  });

  test("tool calls are limited per client, with a clear error", async () => {
    await using relay = await startRelay({ env: { CLIENT_CALLS_PER_MINUTE: "5" } });
    await using agent = await startAgent(relay, { machine: "limited" });
    await using client = await connectClient(relay, "streamable-http");
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await call(client, "check_agent_status", { machine: agent.machine }));
    expect(results.slice(0, 5).every((r) => !r.isError)).toBe(true);
    expect(results[5]!.isError).toBe(true);
    expect(results[5]!.text).toContain("may start 5 per minute");
  });

  test("concurrent calls per client are bounded", async () => {
    await using relay = await startRelay({ env: { CLIENT_MAX_CALLS_IN_FLIGHT: "2" } });
    await using agent = await startAgent(relay, { machine: "busy" });
    await using client = await connectClient(relay, "sse");
    const results = await Promise.all([1, 2, 3].map(() => call(client, "run_shell_command", { command: "sleep 1", machine: agent.machine })));
    const refused = results.filter((r) => r.isError);
    expect(refused.length).toBe(1);
    expect(refused[0]!.text).toContain("Too many calls in flight for this client (2)");
  });

  test("request bodies are capped", async () => {
    await using relay = await startRelay();
    const big = await fetch(new URL("/register", relay.url), { method: "POST", headers: { "Content-Type": "application/json" }, body: "x".repeat(100_000) });
    expect(big.status).toBe(413);
  });
});

test("the relay refuses a plain-http PUBLIC_URL that is not loopback, and explains", () => {
  const result = Bun.spawnSync([process.execPath, "run", path.join(ROOT, "server.ts")], {
    env: { PATH: process.env.PATH!, AUTH_TOKEN: newToken(), PUBLIC_URL: "http://relay.example.com" },
  });
  expect(result.exitCode).toBe(2);
  expect(result.stderr.toString()).toContain("PUBLIC_URL must be https://");
});

test("issued agent tokens survive a relay restart", async () => {
  await using first = await startRelay();
  const token = /crm_[A-Za-z0-9_-]{43}/.exec(agentToken(first, "create", "steady").stdout)![0];
  await first.stop();
  await using second = await startRelay({ databasePath: first.databasePath });
  await using agent = await startAgent(second, { machine: "steady", token });
  await second.stderr.waitFor(/agent connected machine="steady".*credential="machine token"/);
  expect(agent.stderr.text).toContain('connected relay=');
});
