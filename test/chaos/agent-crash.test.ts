// Chaos: the agent is killed with SIGKILL while a command runs (security.md §4.4, first row). The client's call must
// fail fast instead of hanging, the command's processes are orphaned (nothing could stop them), and the next agent
// started with the same state directory must reap exactly that process group and report the command as killed.

import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { callsWith } from "../helpers/audit-db.ts";
import { groupOf, processGroup } from "../helpers/chaos.ts";
import { connectClient, eventually, pidsMatching, startAgent, startRelay, tempDir } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

/** How soon a call must fail once its agent is gone: the relay sees the socket close at once; the rest is slack
 *  for a busy machine. */
const FAIL_FAST_MS = 5_000;

const marker = () => String(4_000_000 + Math.floor(Math.random() * 5_000_000));

test("SIGKILL of the agent mid-command fails the call fast; the restarted agent reaps the orphaned group and reports the command killed", async () => {
  await using relay = await startRelay();
  using state = tempDir("cr-state-");
  const tag = marker();
  const first = await startAgent(relay, { machine: "crashing", stateDir: state.path });
  await using client = await connectClient(relay, "streamable-http");

  // A shell with two children in the command's process group: the shell, a background sleep, a foreground sleep.
  const pending = call(client, "run_shell_command", { command: `sleep ${tag} & sleep ${tag}; wait`, timeout: 600 });
  // The shell's own command line carries the tag too: three processes match.
  await eventually(() => pidsMatching(`sleep ${tag}`).length === 3, 5_000, "both sleeps started");
  const pgid = groupOf(pidsMatching(`sleep ${tag}`)[0]!)!;
  expect(processGroup(pgid)).toHaveLength(3);

  const killedAt = Date.now();
  await first.kill();
  const failed = await pending;
  const failedMs = Date.now() - killedAt;
  console.log(`agent SIGKILL: the call failed after ${failedMs} ms`);
  expect(failedMs).toBeLessThan(FAIL_FAST_MS);
  expect(failed.isError).toBe(true);
  expect(failed.text).toMatch(/^Machine 'crashing' disconnected before answering; it may or may not have run\. Its command_id is [0-9a-f]{12}@crashing: check with get_command_output once 'crashing' is back\.$/);
  expect(processGroup(pgid)).toHaveLength(3); // orphaned: nobody was left to stop them

  await using second = await startAgent(relay, { machine: "crashing", stateDir: state.path });
  await second.stderr.waitFor(/commands left running by a previous agent were killed commands=1 processes=3/);
  await eventually(() => processGroup(pgid).length === 0, 5_000, "the orphaned process group reaped");
  expect(pidsMatching(`sleep ${tag}`)).toEqual([]);

  const listed = await call(client, "list_commands", { machine: "crashing" });
  const mine = listed.data.commands.filter((c: { command: string }) => c.command.includes(tag));
  expect(mine).toHaveLength(1);
  const output = await call(client, "get_command_output", { command_id: mine[0].command_id, wait_seconds: 0 });
  expect(output.isError).toBe(false);
  expect(output.data).toMatchObject({ state: "killed", exit_code: null });

  const [row] = callsWith(relay.databasePath, tag).filter((c) => c.tool === "run_shell_command");
  expect(row).toMatchObject({ finished: true, outcome: "error" });
});

test("SIGKILL while several calls wait on the agent fails every one of them, and none is answered twice after the restart", async () => {
  await using relay = await startRelay();
  using state = tempDir("cr-state-");
  const tag = marker();
  const first = await startAgent(relay, { machine: "busy", stateDir: state.path });
  await using client = await connectClient(relay, "sse");
  const pending = Array.from({ length: 4 }, (_, i) => call(client, "run_shell_command", { command: `sleep ${tag}${i}`, timeout: 600 }));
  await eventually(() => [0, 1, 2, 3].every((i) => pidsMatching(`sleep ${tag}${i}`).length >= 1), 5_000, "four commands running");
  const killedAt = Date.now();
  await first.kill();
  const results = await Promise.all(pending);
  expect(Date.now() - killedAt).toBeLessThan(FAIL_FAST_MS);
  expect(results.map((r) => r.isError)).toEqual([true, true, true, true]);

  await using second = await startAgent(relay, { machine: "busy", stateDir: state.path });
  await second.stderr.waitFor(/commands left running by a previous agent were killed commands=4/);
  await eventually(() => [0, 1, 2, 3].every((i) => pidsMatching(`sleep ${tag}${i}`).length === 0), 5_000, "orphans reaped");
  // The new agent was never asked to run them again (at most once): it logs no call at all before this one.
  expect(second.stderr.lines.filter((l) => l.includes("agent info call "))).toEqual([]);
  const again = await call(client, "run_shell_command", { command: "echo still-serving" });
  expect(again.data.stdout).toBe("still-serving\n");
});

test("after a crash the restarted agent still knows a command's output: its size, its end, and every segment to delete when it is pruned", async () => {
  await using relay = await startRelay();
  using state = tempDir("cr-state-");
  const first = await startAgent(relay, { machine: "logs", stateDir: state.path });
  await using client = await connectClient(relay, "streamable-http");
  // More than the ~48 MiB a command keeps, so its oldest segments were rotated away before the crash.
  const TOTAL = 60_000_000;
  const started = await call(client, "run_shell_command", { command: `head -c ${TOTAL} /dev/zero | tr '\\0' x; sleep 600`, background: true });
  const id: string = started.data.command_id;
  const outputSoFar = async () => (await call(client, "get_command_output", { command_id: id, offset: 0, wait_seconds: 0 })).data.total_bytes;
  await eventually(async () => (await outputSoFar()) === TOTAL, 20_000, "all output on disk");
  const segments = () => fs.readdirSync(state.path).filter((name) => name.startsWith(`${id}.`) && name.endsWith(".log"));
  expect(segments().length).toBeGreaterThan(1);

  await first.kill();
  await using second = await startAgent(relay, { machine: "logs", stateDir: state.path });
  await second.stderr.waitFor(/commands left running by a previous agent were killed commands=1/);
  const end = await call(client, "get_command_output", { command_id: id, offset: TOTAL - 5, wait_seconds: 0 });
  expect(end.data).toMatchObject({ state: "killed", output: "xxxxx", total_bytes: TOTAL, more: false });

  // A hundred newer commands push it out of the kept ones: all of its segments go with it.
  for (let batch = 0; batch < 10; batch++) {
    await Promise.all(Array.from({ length: 10 }, () => call(client, "run_shell_command", { command: "true", machine: "logs" })));
  }
  await eventually(() => !fs.existsSync(path.join(state.path, `${id}.json`)), 5_000, "the command pruned");
  expect(segments()).toEqual([]);
});
