// What a running agent says when it cannot register: a wrong token, a wrong address and a relay that is down each
// get their own line, saying what to do, once per cause rather than once per retry; and a client's address given
// as RELAY_URL is refused with the right one instead of being dialled.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, NEUTRAL_CWD, newToken, ROOT, startAgent, startRelay, tempDir, type Agent } from "../helpers/processes.ts";

/** The agent's "could not register" lines so far. */
const refusals = (agent: Agent) => agent.stderr.lines.filter((l) => l.includes("could not register with the relay"));

/** Long enough for an agent that keeps failing to retry at least twice (after 0.5-1 s, then 1-2 s). */
const TWO_RETRIES_MS = 3_500;

describe("a running agent that cannot register says why, once per cause", () => {
  test("a wrong token: the relay refused the agent token (and `status` says so too)", async () => {
    await using relay = await startRelay();
    using state = tempDir("cr-state-");
    await using agent = await startAgent(relay, { machine: "wrong-token", token: newToken(), stateDir: state.path, waitConnected: false });
    await agent.stderr.waitFor(/agent error could not register with the relay: the relay refused the agent token \(HTTP 401\): set AGENT_TOKEN to the token/);
    await Bun.sleep(TWO_RETRIES_MS);
    expect(refusals(agent)).toHaveLength(1);
    const status = JSON.parse(fs.readFileSync(path.join(state.path, "status.json"), "utf8"));
    expect(status).toMatchObject({ state: "disconnected", reason: expect.stringContaining("the relay refused the agent token (HTTP 401)") });
  });

  test("a URL that is not the relay's agent endpoint: RELAY_URL does not point at a Code Remote relay", async () => {
    await using relay = await startRelay();
    const elsewhere = `ws://127.0.0.1:${relay.port}/ws/agents`; // a typo: the relay answers 404, not an upgrade
    await using agent = await startAgent(relay, { machine: "wrong-url", env: { RELAY_URL: elsewhere }, waitConnected: false });
    await agent.stderr.waitFor(/could not register with the relay: RELAY_URL does not point at a Code Remote relay \(HTTP 404 instead of a WebSocket upgrade\): use the relay's address with \/ws\/agent/);
    await Bun.sleep(TWO_RETRIES_MS);
    expect(refusals(agent)).toHaveLength(1);
  });

  test("a relay that is down: cannot reach it, said once; connected when it is up; said again when it goes", async () => {
    const port = freePort();
    const url = `ws://127.0.0.1:${port}/ws/agent`;
    const token = newToken();
    const absent = { port, token } as Parameters<typeof startAgent>[0];
    await using agent = await startAgent(absent, { machine: "patient", waitConnected: false });
    await agent.stderr.waitFor(new RegExp(`agent warn could not register with the relay: cannot reach the relay at ${url} \\(Failed to connect\\); is it running\\?`));
    await Bun.sleep(TWO_RETRIES_MS);
    expect(refusals(agent)).toHaveLength(1);

    const relay = await startRelay({ port, token });
    await agent.stderr.waitFor(/agent info connected/, 20_000); // its backoff has grown to a few seconds by now
    await relay.stop();
    const from = agent.stderr.lines.length;
    await agent.stderr.waitFor(/could not register with the relay: cannot reach the relay/, 10_000, from);
    expect(refusals(agent)).toHaveLength(2);
  });
});

describe("RELAY_URL", () => {
  /** Runs agent.ts with RELAY_URL set (and a token, so that only the URL can be wrong) until it exits. */
  function agentWith(relayUrl: string) {
    const result = Bun.spawnSync([process.execPath, "run", path.join(ROOT, "agent.ts")], {
      cwd: NEUTRAL_CWD,
      env: { PATH: process.env.PATH!, HOME: process.env.HOME!, RELAY_URL: relayUrl, AGENT_TOKEN: newToken(), XDG_CONFIG_HOME: "/nonexistent-config" },
      timeout: 10_000,
    });
    return { code: result.exitCode, stderr: result.stderr.toString() };
  }

  test("a client's address (…/mcp, …/sse) is refused with the agent address to use, and nothing is dialled", () => {
    const cases: [string, string][] = [
      ["https://relay.example.com/mcp", "wss://relay.example.com/ws/agent"],
      ["http://127.0.0.1:8080/sse", "ws://127.0.0.1:8080/ws/agent"],
      ["wss://relay.example.com/proxy/mcp", "wss://relay.example.com/proxy/ws/agent"],
    ];
    for (const [given, right] of cases) {
      const r = agentWith(given);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`RELAY_URL ${given} is not the relay's agent address (MCP clients use that one)`);
      expect(r.stderr).toContain(`Use RELAY_URL=${right}`);
      expect(r.stderr).not.toContain("could not register");
    }
  });

  test("the relay's origin (http:// or https://) is taken as its /ws/agent address", async () => {
    await using relay = await startRelay();
    await using agent = await startAgent(relay, { machine: "origin", env: { RELAY_URL: `http://127.0.0.1:${relay.port}` } });
    expect(await agent.stderr.waitFor(/agent info connected/)).toContain(`relay="ws://127.0.0.1:${relay.port}/ws/agent"`);
  });
});
