// Riding out a blip (issue 17): a call for a machine that was connected a moment ago waits for it to come back
// (RECONNECT_GRACE_S), telling the client so every 2 s, and is sent once it is back; after the grace it fails saying
// it waited; a cancel ends the wait and nothing runs. And at most once: a command in flight when its agent dies fails
// with the command_id the relay gave it, which get_command_output answers once the agent is back on its state
// directory. A relay that restarts (or crashed) waits, likewise, for the machines its predecessor served. Real relay
// and agent processes on loopback; the agent is stopped (SIGTERM) or killed (SIGKILL).

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import type { CallToolResult, Progress } from "@modelcontextprotocol/sdk/types.js";
import { callsWith } from "../helpers/audit-db.ts";
import { connectClient, eventually, freePort, startAgent, startRelay, tempDir, type Agent, type Relay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

const WAITING = /^waiting for (\S+) to reconnect \(up to (\d+) s\)$/;
const marker = () => String(5_000_000 + Math.floor(Math.random() * 4_000_000));

/** The time an agent logged its "connected" line (its own clock, the same as ours). */
const connectedAt = (agent: Agent, from = 0) => Date.parse(agent.stderr.lines.slice(from).find((l) => l.includes("agent info connected"))!.split(" ")[0]!);

/** The agent again, on the same state directory (its key, its commands) and roots. */
const restart = (relay: Relay, agent: Agent, stateDir: string) => startAgent(relay, { machine: agent.machine, stateDir, roots: agent.roots });

describe("a call for a machine that dropped a moment ago", () => {
  test("waits for it, with progress every 2 s whose value grows, and is sent once it is back (machine omitted: the only one that was connected)", async () => {
    await using relay = await startRelay();
    using state = tempDir("cr-state-");
    const first = await startAgent(relay, { machine: "lid", stateDir: state.path });
    await using client = await connectClient(relay, "streamable-http");
    expect(await first.stop()).toBe(0);
    await relay.stderr.waitFor(/agent disconnected machine="lid"/);
    const status = await call(client, "check_agent_status");
    expect(status.data).toEqual({ machines: [], connected: 0 });
    expect(status.text).toMatch(/^Recently connected: lid \(disconnected \d+ s ago\); a call for one of them waits for it to reconnect, up to 30 s after it left\. No machine is connected\./);

    const progress: Progress[] = [];
    const issuedAt = Date.now();
    const pending = client.callTool({ name: "run_shell_command", arguments: { command: "echo back" } }, undefined, {
      timeout: 60_000,
      onprogress: (p) => void progress.push(p),
    });
    await Bun.sleep(4_500); // the lid stays closed for a while
    await using second = await restart(relay, first, state.path);
    const backAt = connectedAt(second);
    const result = (await pending) as CallToolResult;
    const answeredAt = Date.now();
    console.log(
      `blip: waited ${backAt - issuedAt} ms for the agent; answered ${answeredAt - backAt} ms after it connected; ${progress.length} progress notifications: ${progress.map((p) => p.progress).join(", ")}`,
    );

    expect(result.isError).toBeFalsy();
    expect(result.structuredContent).toMatchObject({ machine: "lid", stdout: "back\n", exit_code: 0 });
    expect(answeredAt - backAt).toBeLessThan(1_000);
    // One at once, then every 2 s: at 0, 2 and 4 s at least, while the agent was away.
    const waiting = progress.filter((p) => WAITING.test(p.message ?? ""));
    expect(waiting.length).toBeGreaterThanOrEqual(3);
    for (const p of waiting) expect(p.message).toMatch(/^waiting for lid to reconnect \(up to (30|29|28|27|26|25|24) s\)$/);
    const values = progress.map((p) => p.progress);
    for (let i = 1; i < values.length; i++) expect(values[i]!).toBeGreaterThan(values[i - 1]!);
    expect(values[1]! - values[0]!).toBeGreaterThan(1.5); // every 2 s, not faster
  });

  test("fails after the grace (1 s here) saying it waited; once the grace is over, and with RECONNECT_GRACE_S=0, it fails at once", async () => {
    await using relay = await startRelay({ env: { RECONNECT_GRACE_S: "1" } });
    await using off = await startRelay({ env: { RECONNECT_GRACE_S: "0" } });
    const agent = await startAgent(relay, { machine: "gone" });
    const other = await startAgent(off, { machine: "gone" });
    await using client = await connectClient(relay, "sse");
    await using offClient = await connectClient(off, "streamable-http");
    await Promise.all([agent.stop(), other.stop()]);
    await Promise.all([relay.stderr.waitFor(/agent disconnected machine="gone"/), off.stderr.waitFor(/agent disconnected machine="gone"/)]);

    const started = Date.now();
    const failed = await call(client, "list_directory", { machine: "gone", path: "/tmp" });
    const failedMs = Date.now() - started;
    console.log(`RECONNECT_GRACE_S=1: the call failed after ${failedMs} ms: ${failed.text}`);
    expect(failed.isError).toBe(true);
    expect(failed.text).toMatch(/^Machine 'gone' is not connected \(it disconnected 1 s ago; the relay waited 1 s for it to reconnect\)\. No machine is connected\./);
    expect(failedMs).toBeGreaterThan(500);
    expect(failedMs).toBeLessThan(2_500);

    const later = Date.now();
    const again = await call(client, "list_directory", { machine: "gone", path: "/tmp" });
    expect(Date.now() - later).toBeLessThan(500);
    expect(again.text).toBe("Machine 'gone' is not connected. No machine is connected. Start an agent on the machine: RELAY_URL=wss://<this server>/ws/agent AGENT_TOKEN=<token> code-remote-agent");

    const offAt = Date.now();
    const offFailed = await call(offClient, "list_directory", { machine: "gone", path: "/tmp" });
    expect(Date.now() - offAt).toBeLessThan(500);
    expect(offFailed.text).toStartWith("Machine 'gone' is not connected. No machine is connected.");
  });

  test("with the machine omitted and two machines gone, nothing is guessed: it fails at once naming both; a machine never seen fails at once", async () => {
    await using relay = await startRelay();
    const a = await startAgent(relay, { machine: "one" });
    const b = await startAgent(relay, { machine: "two" });
    await using client = await connectClient(relay, "streamable-http");
    await a.stop();
    await relay.stderr.waitFor(/agent disconnected machine="one"/);
    await b.stop();
    await eventually(() => relay.stderr.lines.filter((l) => l.includes("agent disconnected")).length === 2, 5_000, "both gone");
    const started = Date.now();
    const omitted = await call(client, "read_file", { path: "/etc/hostname" });
    const unknown = await call(client, "read_file", { machine: "never", path: "/etc/hostname" });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(omitted.text).toMatch(
      /^No machine is connected; several were a moment ago: two \(disconnected \d s ago\), one \(disconnected \d s ago\)\. Say which one with "machine": a call for one of them waits for it to reconnect, up to 30 s after it left\.$/,
    );
    expect(unknown.text).toStartWith("Machine 'never' is not connected. No machine is connected.");
  });

  test("a cancel ends the wait: the audit says cancelled at once, and nothing runs when the machine is back", async () => {
    await using relay = await startRelay();
    using state = tempDir("cr-state-");
    const first = await startAgent(relay, { machine: "cancelme", stateDir: state.path });
    await using client = await connectClient(relay, "streamable-http");
    await first.stop();
    await relay.stderr.waitFor(/agent disconnected machine="cancelme"/);

    const tag = marker();
    const target = path.join(first.roots[0]!, `ran-${tag}`);
    const progress: string[] = [];
    const abort = new AbortController();
    const pending = client.callTool({ name: "run_shell_command", arguments: { machine: "cancelme", command: `touch ${target}` } }, undefined, {
      signal: abort.signal,
      onprogress: (p) => void progress.push(p.message ?? ""),
    });
    await eventually(() => progress.length > 0, 3_000, "waiting progress");
    expect(progress[0]).toMatch(/^waiting for cancelme to reconnect \(up to 30 s\)$/);
    const abortedAt = Date.now();
    abort.abort("cancelled by the user");
    await expect(pending).rejects.toThrow(/cancelled by the user/);
    await eventually(() => callsWith(relay.databasePath, tag)[0]?.outcome === "cancelled", 3_000, "the audit says cancelled");
    const endedMs = Date.now() - abortedAt;
    console.log(`cancel during the wait: recorded as cancelled ${endedMs} ms after the abort`);
    expect(callsWith(relay.databasePath, tag)[0]).toMatchObject({ finished: true, outcome: "cancelled", error: "The call was cancelled." });

    await using second = await restart(relay, first, state.path);
    const after = await call(client, "run_shell_command", { machine: "cancelme", command: "echo fine" });
    expect(after.data.stdout).toBe("fine\n");
    expect(fs.existsSync(target)).toBe(false);
    // The agent logs a call just after sending its answer: the line may reach us a moment after the answer does.
    const calls = () => second.stderr.lines.filter((l) => l.includes('op="run_shell_command"'));
    await eventually(() => calls().length > 0, 3_000, "the agent's log line of the call");
    await Bun.sleep(200); // and nothing else after it
    expect(calls()).toHaveLength(1); // only "echo fine"
  });
});

describe("a relay restart (a deploy, or a crash)", () => {
  test.each(["SIGTERM", "SIGKILL"] as const)("after %s, a call for a machine the old relay served waits for it to redial; one that had left does not wait", async (how) => {
    const port = freePort();
    using data = tempDir("cr-db-");
    const databasePath = path.join(data.path, "audit.db");
    await using first = await startRelay({ port, databasePath });
    await using desk = await startAgent(first, { machine: "desk" });
    const left = await startAgent(first, { machine: "left" });
    await left.stop();
    await first.stderr.waitFor(/agent disconnected machine="left"/);
    desk.proc.kill("SIGSTOP"); // held still, so that it cannot redial before the call is made
    try {
      if (how === "SIGTERM") await first.stop();
      else await first.kill();
      await using second = await startRelay({ port, databasePath, token: first.token });
      expect(await second.stderr.waitFor(/waiting for the machines connected when the relay last stopped/)).toMatch(/machines="desk" count=1 grace_s=30$/);
      await using client = await connectClient(second, "streamable-http");
      const progress: string[] = [];
      const pending = client.callTool({ name: "run_shell_command", arguments: { machine: "desk", command: "echo back" } }, undefined, {
        timeout: 60_000,
        onprogress: (p) => void progress.push(p.message ?? ""),
      });
      await eventually(() => progress.length > 0, 5_000, "waiting progress");
      expect(progress[0]).toMatch(/^waiting for desk to reconnect \(up to (30|29|28) s\)$/);

      const askedAt = Date.now();
      const gone = await call(client, "read_file", { machine: "left", path: "/etc/hostname" });
      expect(Date.now() - askedAt).toBeLessThan(1_000);
      expect(gone.text).toStartWith("Machine 'left' is not connected.");

      const resumedAt = Date.now();
      desk.proc.kill("SIGCONT");
      const result = (await pending) as CallToolResult;
      console.log(`after ${how}: the call waited for desk and was answered ${Date.now() - resumedAt} ms after it could redial`);
      expect(result.isError).toBeFalsy();
      expect(result.structuredContent).toMatchObject({ machine: "desk", stdout: "back\n", exit_code: 0 });
    } finally {
      desk.proc.kill("SIGCONT");
    }
  }, 90_000);

  test("a machine that does not come back is waited for once: the restart after that one forgets it", async () => {
    const port = freePort();
    using data = tempDir("cr-db-");
    const databasePath = path.join(data.path, "audit.db");
    await using first = await startRelay({ port, databasePath });
    await using gone = await startAgent(first, { machine: "retired" });
    await first.stop();
    await gone.kill(); // it goes while no relay runs: nobody sees it leave
    await using second = await startRelay({ port, databasePath, token: first.token });
    expect(await second.stderr.waitFor(/waiting for the machines connected when the relay last stopped/)).toMatch(/machines="retired" count=1/);
    await second.stop();
    await using third = await startRelay({ port, databasePath, token: first.token });
    await using client = await connectClient(third, "streamable-http");
    const askedAt = Date.now();
    const failed = await call(client, "read_file", { machine: "retired", path: "/etc/hostname" });
    expect(Date.now() - askedAt).toBeLessThan(1_000);
    expect(failed.text).toStartWith("Machine 'retired' is not connected.");
    expect(third.stderr.text).not.toContain("waiting for the machines connected when the relay last stopped");
  });
});

describe("a command in flight when its agent dies", () => {
  test("fails with the command_id the relay gave it (never re-sent); get_command_output with that id waits for the agent and answers once it is back", async () => {
    await using relay = await startRelay();
    using state = tempDir("cr-state-");
    const first = await startAgent(relay, { machine: "crashy", stateDir: state.path });
    await using client = await connectClient(relay, "streamable-http");
    const tag = marker();
    const counter = path.join(first.roots[0]!, "runs");
    const pending = call(client, "run_shell_command", { command: `echo ran >> ${counter}; echo started-${tag}; sleep 30`, timeout: 120 });
    await eventually(() => fs.existsSync(counter), 5_000, "the command started");
    await Bun.sleep(200); // its first line reaches the log on disk

    await first.kill();
    const failed = await pending;
    expect(failed.isError).toBe(true);
    const [, commandId] =
      /^Machine 'crashy' disconnected before answering; it may or may not have run\. Its command_id is ([0-9a-f]{12}@crashy): check with get_command_output once 'crashy' is back\.$/.exec(
        failed.text,
      ) ?? [];
    expect(commandId, failed.text).toBeDefined();

    // Asked while the machine is away: the call waits for it (the command_id routes it), and is answered once it is back.
    const asked = call(client, "get_command_output", { command_id: commandId, offset: 0, wait_seconds: 0 });
    await Bun.sleep(1_000);
    await using second = await restart(relay, first, state.path);
    const output = await asked;
    console.log(`SIGKILL mid-command: failed naming ${commandId}; get_command_output asked while away was answered ${Date.now() - connectedAt(second)} ms after the agent connected`);
    expect(output.isError, output.text).toBe(false);
    expect(output.data).toMatchObject({ command_id: commandId, state: "killed", output: `started-${tag}\n` });
    // At most once: it ran once, and the new agent was never asked to run it again.
    expect(fs.readFileSync(counter, "utf8")).toBe("ran\n");
    expect(second.stderr.lines.filter((l) => l.includes('op="run_shell_command"'))).toEqual([]);
  });
});
