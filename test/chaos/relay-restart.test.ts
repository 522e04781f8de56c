// Chaos: the relay restarts while clients keep calling (security.md §4.4, third row), once gracefully (SIGTERM, as
// a deploy does) and once by crashing (SIGKILL). Agents must come back by themselves within their backoff, old
// session ids must get 404, and the audit database must stay sound: PRAGMA integrity_check passes, and every call
// that returned a result to its client is recorded as finished with the matching outcome. A call the crash cut off
// is closed as interrupted when the relay starts again, so it never holds audit pruning back.

import { expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { auditCli, callsOf } from "../helpers/audit.ts";
import { ageEvents, auditedCalls, callsWith, integrityCheck } from "../helpers/audit-db.ts";
import { connectClient, eventually, freePort, pidsMatching, startAgent, startRelay, TRANSPORTS, type Agent, type McpClient, type Relay, type TransportKind } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

setDefaultTimeout(90_000);

/** Agents reconnect after 0-1 s, doubling to 5 s while the relay is down; the relay is down a second or two. */
const BACK_WITHIN_MS = 10_000;
/** Calls each client makes at most, and the longest the load runs: the loop is bounded either way. */
const MAX_CALLS_PER_CLIENT = 2_000;
const MAX_LOAD_MS = 60_000;
/** The client gives up on a call after this long: an SSE client does not notice its stream died under it, so a call
 *  in flight at the restart only ends by this timeout. Echo and small writes take milliseconds. */
const CALL_TIMEOUT_MS = 8_000;
/** Calls that must succeed once the agents are back, and the longest to wait for them (past CALL_TIMEOUT_MS). */
const SETTLED_CALLS = 200;
const SETTLED_WAIT_MS = 20_000;

/** When a call started: while the relay was up, while it restarted (from the signal until every agent is back), or
 *  once everything was back. */
type Answer = { marker: string; phase: "before" | "restart" | "settled"; kind: "ok" | "wrong" | "tool_error" | "threw"; text?: string };

/** One client calling in a loop, reconnecting (a new session) whenever a call throws. Every call carries a fresh
 *  marker in its arguments, so its audit row can be found. */
async function clientLoop(relay: Pick<Relay, "url" | "token">, transport: TransportKind, machines: Agent[], state: { phase: Answer["phase"]; stop: boolean }, answers: Answer[], sessions: string[]) {
  let client: (McpClient & AsyncDisposable) | undefined;
  const started = Date.now();
  for (let i = 0; i < MAX_CALLS_PER_CLIENT && !state.stop && Date.now() - started < MAX_LOAD_MS; i++) {
    const phase = state.phase;
    try {
      client ??= await connectClient(relay, transport);
      if (transport === "streamable-http" && client.transport?.sessionId) sessions.push(client.transport.sessionId);
    } catch {
      await Bun.sleep(100); // the relay is down: try again shortly
      continue;
    }
    const agent = machines[i % machines.length]!;
    const marker = randomBytes(8).toString("hex");
    try {
      const r =
        i % 2 === 0
          ? await call(client, "run_shell_command", { command: `echo ${marker}`, machine: agent.machine }, { timeout: CALL_TIMEOUT_MS })
          : await call(client, "write_file", { path: `${agent.roots[0]}/${marker}`, content: marker, machine: agent.machine }, { timeout: CALL_TIMEOUT_MS });
      const right = i % 2 === 0 ? r.data.stdout === `${marker}\n` : r.data.size === marker.length;
      answers.push({ marker, phase, kind: r.isError ? "tool_error" : right ? "ok" : "wrong", text: r.text });
    } catch (e) {
      answers.push({ marker, phase, kind: "threw", text: String(e) });
      await client.close().catch(() => {});
      client = undefined;
    }
  }
  await client?.close().catch(() => {});
}

/** Restarts the relay under load and checks what every restart must keep; `alsoCheck` runs on the database
 *  before it is removed. */
async function restartUnderLoad(how: "SIGTERM" | "SIGKILL", alsoCheck: (databasePath: string) => void = () => {}) {
  const port = freePort();
  // No per-client rate limit: eight clients share the one owner token, and this test is about the restart.
  const env = { CLIENT_CALLS_PER_MINUTE: "0" };
  const first = await startRelay({ port, env });
  const agents = await Promise.all(["r1", "r2", "r3"].map((machine) => startAgent(first, { machine })));
  const state = { phase: "before" as Answer["phase"], stop: false };
  const answers: Answer[] = [];
  const sessions: string[] = [];
  const transports: TransportKind[] = ["streamable-http", "streamable-http", "streamable-http", "streamable-http", "streamable-http", "sse", "sse", "sse"];
  const loops = transports.map((t) => clientLoop(first, t, agents, state, answers, sessions));
  let second: Relay | undefined;
  const t0 = Date.now();
  const marks: Record<string, number> = {};
  const mark = (what: string) => (marks[what] = Date.now() - t0);
  try {
    await Bun.sleep(2_000);
    const before = answers.filter((a) => a.kind === "ok").length;
    const staleSession = sessions.at(-1)!;
    state.phase = "restart";
    if (how === "SIGTERM") expect(await first.stop()).toBe(0);
    else await first.kill();
    mark("stopped");
    second = await startRelay({ port, token: first.token, databasePath: first.databasePath, env });
    const upAt = Date.now();
    mark("up");
    for (const agent of agents) {
      const from = agent.stderr.lines.findLastIndex((l) => l.includes("disconnected"));
      await agent.stderr.waitFor(/agent info connected/, BACK_WITHIN_MS, Math.max(0, from));
    }
    const backMs = Date.now() - upAt;
    mark("agents back");
    state.phase = "settled";
    expect(backMs).toBeLessThan(BACK_WITHIN_MS);

    const stale = await fetch(new URL("/mcp", second.url), {
      method: "POST",
      headers: { Authorization: `Bearer ${second.token}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream", "Mcp-Session-Id": staleSession },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
    });
    expect(stale.status).toBe(404);

    // Load on the restarted relay until enough calls have gone through. A client whose call was in flight at a crash
    // gets no answer at all and comes back only at its own timeout, so wait for calls, not for a fixed time.
    const settledOk = () => answers.filter((a) => a.phase === "settled" && a.kind === "ok").length;
    for (let waited = 0; waited < SETTLED_WAIT_MS && settledOk() < SETTLED_CALLS; waited += 100) await Bun.sleep(100);
    state.stop = true;
    await Promise.all(loops);
    mark("load stopped");
    const summary: Record<string, number> = {};
    for (const a of answers) summary[`${a.phase}/${a.kind}`] = (summary[`${a.phase}/${a.kind}`] ?? 0) + 1;
    expect(answers.filter((a) => a.kind === "wrong")).toEqual([]);
    expect(before).toBeGreaterThan(10);
    expect(settledOk()).toBeGreaterThanOrEqual(SETTLED_CALLS);
    // Errors only for calls in flight at the signal (one per client at most) and during the restart; none once
    // the agents are back.
    expect(answers.filter((a) => a.phase === "before" && a.kind !== "ok").length).toBeLessThanOrEqual(transports.length);
    expect(answers.filter((a) => a.phase === "settled" && a.kind !== "ok")).toEqual([]);

    expect(integrityCheck(first.databasePath)).toBe("ok");
    // The marker is the echoed word of a shell call, or the file name of a write.
    const markerOf = (args: { command?: string; path?: string }) => args.command?.replace(/^echo /, "") ?? args.path?.split("/").pop();
    const rows = new Map(auditedCalls(first.databasePath).map((c) => [markerOf(JSON.parse(c.arguments)), c]));
    for (const answer of answers.filter((a) => a.kind === "ok" || a.kind === "tool_error")) {
      const row = rows.get(answer.marker);
      expect(row, `the audit row of a call that returned (${answer.text?.slice(0, 80)})`).toBeDefined();
      expect(row!.finished).toBe(true);
      if (answer.kind === "ok") expect(row!.outcome).toBe("ok");
      else expect(row!.outcome).not.toBe("ok");
    }
    const unfinished = [...rows.values()].filter((r) => !r.finished).length;
    const interrupted = [...rows.values()].filter((r) => r.outcome === "interrupted").length;
    alsoCheck(first.databasePath);
    console.log(`relay ${how} under load: calls by phase/result ${JSON.stringify(summary)}; agents back ${backMs} ms after the relay; ${rows.size} audit rows, ${unfinished} unfinished, ${interrupted} interrupted; timeline ${JSON.stringify(marks)}`);
    return { rows: [...rows.values()], answers, backMs };
  } finally {
    state.stop = true;
    await Promise.all(loops);
    for (const agent of agents) await agent[Symbol.asyncDispose]();
    await second?.[Symbol.asyncDispose]();
    await first[Symbol.asyncDispose]();
    fs.rmSync(first.databasePath.replace(/\/[^/]+$/, ""), { recursive: true, force: true });
  }
}

test("a graceful restart under load: agents are back within the backoff, stale sessions get 404, every answered call is audited as finished, and no row is left unfinished", async () => {
  const { rows } = await restartUnderLoad("SIGTERM");
  expect(rows.filter((r) => !r.finished)).toEqual([]);
});

test("a crash (SIGKILL) under load: agents are back within the backoff, stale sessions get 404, the database passes integrity_check, and every answered call is audited as finished", async () => {
  const { rows, answers } = await restartUnderLoad("SIGKILL");
  // Calls cut short by the crash are closed as interrupted by the restarted relay, never more than were in flight.
  expect(rows.filter((r) => !r.finished)).toEqual([]);
  expect(rows.filter((r) => r.outcome === "interrupted").length).toBeLessThanOrEqual(answers.filter((a) => a.kind === "threw").length);
});

// Each audit row joins the hash chain in one INSERT, so a crash can only cut the chain short, never break a link.
test("audit verify passes after the crash", async () => {
  await restartUnderLoad("SIGKILL", (databasePath) => {
    const verify = auditCli(databasePath, "verify");
    expect(verify.stderr).toBe("");
    expect(verify.code).toBe(0);
  });
});

// A crash leaves the calls in flight without an end. Pruning never cuts a call in half, so one such call used to hold
// it back for ever; the next relay to start closes them as interrupted, and the audit shows that outcome.
test("calls cut off by a crash are closed as interrupted at the next start, shown so, and pruning goes past them", async () => {
  const first = await startRelay();
  const { databasePath, token } = first;
  try {
    {
      await using agent = await startAgent(first, { machine: "crashed-mid-call" });
      await using client = await connectClient(first, "streamable-http");
      const tag = String(6_000_000 + Math.floor(Math.random() * 3_000_000));
      const args = { command: `sleep ${tag}`, timeout: 600, machine: agent.machine };
      const pending = call(client, "run_shell_command", args, { timeout: 30_000 }).catch(() => "no answer");
      await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 5_000, "command started");
      await first.kill();
      expect(await pending).toBe("no answer");
      expect(callsWith(databasePath, tag).map((c) => c.outcome)).toEqual(["unfinished"]);
    }

    {
      await using second = await startRelay({ databasePath, token });
      await second.stderr.waitFor(/calls left open by a relay that stopped without finishing them are recorded as interrupted calls=1/);
      const [interrupted] = callsOf(databasePath, "--tool", "run_shell_command");
      expect(interrupted).toMatchObject({ machine: "crashed-mid-call", outcome: "interrupted", duration_ms: null });
      expect(interrupted.error).toContain("whether it completed is unknown");
      expect(auditCli(databasePath, "--tool", "run_shell_command").stdout).toMatch(/crashed-mid-call\s+run_shell_command\s+interrupted/);
      expect(await dashboardHtml(second)).toContain('<span class="tag interrupted">interrupted');
    }
    expect(auditCli(databasePath, "verify").code).toBe(0);

    // Long after the crash, retention prunes every old event, the interrupted call's included.
    const aged = ageEvents(databasePath, 10);
    await using third = await startRelay({ databasePath, token, env: { AUDIT_RETENTION_DAYS: "5" } });
    await third.stderr.waitFor(new RegExp(`audit events pruned deleted=${aged} `));
    const verified = auditCli(databasePath, "verify");
    expect(verified.code).toBe(0);
    expect(verified.stdout).toContain(`continuing from pruned event ${aged}`);
  } finally {
    await first[Symbol.asyncDispose]();
    fs.rmSync(path.dirname(databasePath), { recursive: true, force: true });
  }
});

/** The owner's dashboard page, signed in with the owner secret (AUTH_TOKEN here). */
async function dashboardHtml(relay: Relay): Promise<string> {
  const login = await fetch(new URL("/login", relay.url), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ owner_secret: relay.token }),
    redirect: "manual",
  });
  expect(login.status).toBe(303);
  const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
  return (await fetch(new URL("/", relay.url), { headers: { Cookie: cookie } })).text();
}

// A deploy (SIGTERM) must not leave a client waiting on its own timeout: the relay answers what is in flight first.
for (const transport of TRANSPORTS) {
  test(`a graceful stop answers every call in flight over ${transport} with an error before it exits`, async () => {
    const relay = await startRelay();
    await using _agent = await startAgent(relay, { machine: "stopping" });
    await using client = await connectClient(relay, transport);
    const tag = String(6_000_000 + Math.floor(Math.random() * 3_000_000));
    const pending = call(client, "run_shell_command", { command: `sleep ${tag}`, timeout: 600 }, { timeout: 30_000 });
    await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 5_000, "command started");
    const stoppedAt = Date.now();
    expect(await relay.stop()).toBe(0);
    const r = await pending;
    expect(Date.now() - stoppedAt).toBeLessThan(5_000);
    expect(r.isError).toBe(true);
    expect(r.text).toContain("may or may not have completed");
  });
}
