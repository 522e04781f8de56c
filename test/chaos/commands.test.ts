// Chaos from inside a command (security.md §4.4): a command that ignores SIGTERM, commands that daemonize (nohup,
// a double fork, setsid), and commands whose output never ends. Each case asserts what happens to the processes,
// what the model is told, what the audit log records, and what it costs the agent in memory and disk.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { KILL_GRACE_MS } from "../../protocol.ts";
import { callsWith } from "../helpers/audit-db.ts";
import { directoryBytes, groupOf, MiB, sampleRss } from "../helpers/chaos.ts";
import { connectClient, eventually, pidsMatching, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call, resultSize } from "../helpers/tools.ts";

/** What commands.ts keeps of one command's output on disk: six segments of 8 MiB. */
const KEPT_LOG_BYTES = 48 * MiB;

let state: { path: string } & Disposable;

beforeAll(() => {
  state = tempDir("cr-state-");
});

const stack = useStack(() => ({ agent: { machine: "chaos", stateDir: state.path } }));

afterAll(() => {
  state[Symbol.dispose]();
});

const marker = () => String(5_000_000 + Math.floor(Math.random() * 4_000_000));

/** Kills whatever a test left behind on purpose (daemons that escaped their command). */
function killAll(pattern: string): void {
  for (const pid of pidsMatching(pattern)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

describe("a command that ignores SIGTERM", () => {
  test("is killed with SIGKILL after the grace period and reported as killed by its timeout", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    const r = await call(client, "run_shell_command", { command: `trap '' TERM; sleep ${tag}; echo never`, timeout: 1 });
    expect(r.data).toMatchObject({ state: "timed_out", timed_out: true, exit_code: null, signal: "SIGKILL", stdout: "" });
    // The timeout (1 s) plus the grace before SIGKILL; the upper bound is slack for a busy machine.
    expect(r.data.duration_ms).toBeGreaterThanOrEqual(1_000 + KILL_GRACE_MS - 100);
    expect(r.data.duration_ms).toBeLessThan(10_000);
    expect(r.text).toContain("timed out and was killed (SIGKILL)");
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
    const output = await call(client, "get_command_output", { command_id: r.data.command_id, wait_seconds: 0 });
    expect(output.data).toMatchObject({ state: "timed_out", signal: "SIGKILL" });
    expect(callsWith(stack.relay.databasePath, tag)).toMatchObject([{ tool: "run_shell_command", finished: true, outcome: "timed_out" }]);
  });

  test("a background command that ignores SIGTERM is stopped by kill_command with SIGKILL after the grace", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    const started = await call(client, "run_shell_command", { command: `trap '' TERM; sleep ${tag}`, background: true });
    await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 5_000, "started");
    const killed = await call(client, "kill_command", { command_id: started.data.command_id });
    expect(killed.data).toMatchObject({ signal_sent: "SIGTERM", state: "killed" });
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
  });
});

/** Ways a command can leave a process behind, and whether that process stays in the command's process group. */
const DAEMONS = [
  { how: "nohup", start: (tag: string) => `nohup sleep ${tag} &`, inGroup: true },
  { how: "a double fork", start: (tag: string) => `(sleep ${tag} >/dev/null 2>&1 &)`, inGroup: true },
  { how: "setsid", start: (tag: string) => `setsid sleep ${tag} >/dev/null 2>&1 &`, inGroup: false },
];

describe.each(DAEMONS)("a command that daemonizes with $how", ({ start, inGroup }) => {
  test(`while the command runs, its timeout ${inGroup ? "kills the daemon too (same process group)" : "does not reach the daemon (a new session)"}`, async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    try {
      const r = await call(client, "run_shell_command", { command: `${start(tag)}\nsleep 30`, timeout: 1 });
      expect(r.data.state).toBe("timed_out");
      if (inGroup) {
        await eventually(() => pidsMatching(`sleep ${tag}`).length === 0, 5_000, "the daemon killed with its group");
      } else {
        await Bun.sleep(KILL_GRACE_MS + 500); // past the SIGKILL that follows the group's SIGTERM
        const [daemon, ...others] = pidsMatching(`sleep ${tag}`);
        expect(others).toEqual([]);
        expect(groupOf(daemon!)).toBe(daemon!); // it leads a process group of its own, out of the command's reach
      }
    } finally {
      killAll(`sleep ${tag}`);
    }
  });

  test("after the command exits, the daemon keeps running and kill_command no longer reaches it", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    try {
      const r = await call(client, "run_shell_command", { command: `${start(tag)}\necho started` });
      expect(r.data).toMatchObject({ state: "exited", exit_code: 0, stdout: "started\n" });
      expect(r.data.duration_ms).toBeLessThan(5_000); // a daemon holding the output pipe does not hold the call
      const daemons = pidsMatching(`sleep ${tag}`);
      expect(daemons).toHaveLength(1);
      const killed = await call(client, "kill_command", { command_id: r.data.command_id });
      expect(killed.data).toMatchObject({ signal_sent: null, state: "exited" });
      expect(pidsMatching(`sleep ${tag}`)).toEqual(daemons);
    } finally {
      killAll(`sleep ${tag}`);
    }
  });
});

describe.each([
  { what: "text (yes)", command: (tag: string) => `yes ${tag}` },
  { what: "NUL bytes (cat /dev/zero)", command: (tag: string) => `cat /dev/zero # ${tag}` },
])("infinite output: $what", ({ what, command }) => {
  test("the result stays under 100,000 characters, the command is killed at its timeout, and agent memory and disk stay bounded", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    await call(client, "run_shell_command", { command: "head -c 20000000 /dev/zero" }); // warm up the pipes
    const tag = marker();
    const rss = sampleRss(stack.agent.proc.pid, 100);
    const earlier = new Set(fs.readdirSync(state.path)); // other commands' logs: not this one's
    const logBytes: number[] = [];
    const disk = setInterval(() => logBytes.push(directoryBytes(state.path, (name) => !earlier.has(name))), 100);
    let r;
    try {
      r = await call(client, "run_shell_command", { command: command(tag), timeout: 4 });
    } finally {
      clearInterval(disk);
    }
    const samples = rss.stop();
    const grewMiB = (Math.max(...samples) - samples[0]!) / MiB;
    console.log(`infinite output, ${what}: ${(r.data.stdout_bytes / 1e9).toFixed(1)} GB in 4 s; agent RSS +${grewMiB.toFixed(0)} MiB at peak`);
    expect(r.data).toMatchObject({ state: "timed_out", timed_out: true, truncated: true });
    expect(resultSize(r)).toBeLessThan(100_000);
    expect(r.data.stdout_bytes).toBeGreaterThan(20 * MiB);
    expect(pidsMatching(tag)).toEqual([]);
    // Memory: the agent keeps a head and a tail in memory and streams the rest to disk, so gigabytes of output
    // cost it tens of MiB of buffers in flight, not a growth in step with the output (+30 to +74 MiB alone, +97 once
    // in a whole-suite run, as the collector falls behind on a busy machine; in step with 2-3 GB would be GBs).
    expect(grewMiB).toBeLessThan(128);
    // Disk: the log keeps the last 48 MiB, whatever the command prints (plus the command's small record).
    expect(Math.max(...logBytes)).toBeLessThan(KEPT_LOG_BYTES + MiB);
    const output = await call(client, "get_command_output", { command_id: r.data.command_id, offset: 0, wait_seconds: 0 });
    expect(output.data.state).toBe("timed_out");
    expect(output.data.total_bytes).toBe(r.data.stdout_bytes);
    if (output.data.total_bytes > KEPT_LOG_BYTES) expect(output.data.offset).toBeGreaterThanOrEqual(output.data.total_bytes - KEPT_LOG_BYTES);
    expect(resultSize(output)).toBeLessThan(100_000);
    console.log(`infinite output: ${(r.data.stdout_bytes / MiB).toFixed(0)} MiB in 4 s; agent RSS ${(samples[0]! / MiB).toFixed(0)} → peak ${(Math.max(...samples) / MiB).toFixed(0)} MiB; state dir peak ${(Math.max(...logBytes) / MiB).toFixed(0)} MiB`);
  });
});
