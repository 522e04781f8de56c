// Long-running work against a real relay and agent: progress while a command runs, cancellation that kills the
// whole process group, commands handed back with a command_id and followed with get_command_output, input to a
// prompt, per-command argv/env/stdin/shell, limits, and what an agent restart does to running commands.

import { describe, expect, test } from "bun:test";
import { callsOf } from "../helpers/audit.ts";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { connectClient, eventually, pidsMatching, startAgent, tempDir, TRANSPORTS, type McpClient } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";

const stack = useStack({ agent: { machine: "worker", env: { MAX_BACKGROUND_COMMANDS: "3" } } });

/** A marker unlikely to appear in any other process's command line. */
const marker = () => String(3_000_000 + Math.floor(Math.random() * 6_000_000));

/** Follows a command with get_command_output until it is final; returns all its output and the last answer. */
async function follow(client: McpClient, commandId: string): Promise<{ output: string; last: Record<string, any>; calls: number }> {
  let output = "";
  let offset = 0;
  for (let calls = 1; calls <= 50; calls++) {
    const r = await call(client, "get_command_output", { command_id: commandId, offset, wait_seconds: 5 });
    expect(r.data.offset).toBe(offset);
    output += r.data.output;
    offset = r.data.next_offset;
    if (!["running", "queued"].includes(r.data.state) && !r.data.more) return { output, last: r.data, calls };
  }
  throw new Error(`${commandId} did not finish`);
}

describe.each(TRANSPORTS)("over %s", (transport) => {
  test("a silent 10 s command sends progress at least every 2 s and completes with a 3 s client timeout that progress resets", async () => {
    await using client = await connectClient(stack.relay, transport);
    const progress: { progress: number; message?: string }[] = [];
    const result = (await client.callTool({ name: "run_shell_command", arguments: { command: "sleep 10; echo finished" } }, undefined, {
      timeout: 3_000,
      resetTimeoutOnProgress: true,
      maxTotalTimeout: 30_000,
      onprogress: (p) => progress.push(p),
    })) as CallToolResult;
    expect((result.structuredContent as any).stdout).toBe("finished\n");
    expect(progress.length).toBeGreaterThanOrEqual(4);
    expect(progress.map((p) => p.progress)).toEqual([...progress.map((p) => p.progress)].sort((a, b) => a - b));
    expect(progress[0]!.message).toContain("running");
  }, 30_000);

  test("progress messages carry the latest output lines", async () => {
    await using client = await connectClient(stack.relay, transport);
    const messages: string[] = [];
    await client.callTool({ name: "run_shell_command", arguments: { command: "for i in 1 2 3; do echo step-$i; sleep 1; done" } }, undefined, {
      onprogress: (p) => messages.push(p.message ?? ""),
    });
    expect(messages.some((m) => m.includes("step-2"))).toBe(true);
  });

  test("cancelling a call kills the command's whole process group within 2 s, and the audit says cancelled", async () => {
    await using client = await connectClient(stack.relay, transport);
    const tag = marker();
    const abort = new AbortController();
    const pending = client.callTool({ name: "run_shell_command", arguments: { command: `sh -c 'sleep ${tag} & sleep ${tag}'` } }, undefined, { signal: abort.signal });
    await eventually(() => pidsMatching(`sleep ${tag}`).length >= 2, 3_000, "commands started");
    abort.abort("user cancelled");
    await expect(pending).rejects.toThrow(/cancel/);
    const cancelledAt = Date.now();
    await eventually(() => pidsMatching(`sleep ${tag}`).length === 0, 2_000, "no process left");
    expect(Date.now() - cancelledAt).toBeLessThan(2_000);
    await eventually(() => callsOf(stack.relay.databasePath).find((c) => c.arguments.command?.includes(`sleep ${tag}`))?.outcome === "cancelled", 3_000, "audit says cancelled");
  });

  test("a background loop is followed to completion with get_command_output", async () => {
    await using client = await connectClient(stack.relay, transport);
    const started = await call(client, "run_shell_command", { command: "for i in $(seq 5); do echo $i; sleep 1; done", background: true });
    expect(started.data).toMatchObject({ state: "running", exit_code: null, next_offset: 0 });
    expect(started.data.command_id).toMatch(/^[0-9a-f]{12}@worker$/);
    const { output, last, calls } = await follow(client, started.data.command_id);
    expect(output).toBe("1\n2\n3\n4\n5\n");
    expect(last).toMatchObject({ state: "exited", exit_code: 0, total_bytes: 10 });
    expect(calls).toBeGreaterThan(1);
  }, 20_000);

  test("send_command_input answers a read prompt", async () => {
    await using client = await connectClient(stack.relay, transport);
    const started = await call(client, "run_shell_command", { command: "printf 'name? '; read name; echo \"hello $name\"", background: true });
    const sent = await call(client, "send_command_input", { command_id: started.data.command_id, input: "world\n" });
    expect(sent.data).toMatchObject({ bytes_written: 6, stdin_open: true });
    const { output, last } = await follow(client, started.data.command_id);
    expect(output).toBe("name? hello world\n");
    expect(last.exit_code).toBe(0);
  });
});

describe("commands handed back", () => {
  test("a foreground command still running at wait_seconds comes back with its output so far and goes on", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const r = await call(client, "run_shell_command", { command: "echo start; sleep 2; echo end", wait_seconds: 1 });
    expect(r.data).toMatchObject({ state: "running", stdout: "start\n", exit_code: null, next_offset: 6 });
    expect(r.text).toContain("get_command_output");
    const rest = await follow(client, r.data.command_id);
    expect(rest.output).toBe("start\nend\n");
    expect(rest.last.state).toBe("exited");
  });

  test("a handed-back command is still killed at its timeout, grandchildren included", async () => {
    await using client = await connectClient(stack.relay, "sse");
    const tag = marker();
    const r = await call(client, "run_shell_command", { command: `sleep ${tag} & wait`, timeout: 2, wait_seconds: 1 });
    expect(r.data.state).toBe("running");
    const { last } = await follow(client, r.data.command_id);
    expect(last).toMatchObject({ state: "timed_out", exit_code: null });
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
  });

  test("kill_command stops a background command and everything it started", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    const started = await call(client, "run_shell_command", { command: `sleep ${tag} & sleep ${tag}`, background: true });
    await eventually(() => pidsMatching(`sleep ${tag}`).length >= 2, 3_000, "started");
    const killed = await call(client, "kill_command", { command_id: started.data.command_id });
    expect(killed.data).toMatchObject({ state: "killed", signal_sent: "SIGTERM" });
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
    const again = await call(client, "kill_command", { command_id: started.data.command_id });
    expect(again.data.signal_sent).toBeNull();
  });

  test("background commands have their own limit; the next one is refused with what to do", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const ids: string[] = [];
    try {
      const running = (await call(client, "list_commands", { state: "running" })).data.commands.length;
      for (let i = running; i < 3; i++) ids.push((await call(client, "run_shell_command", { command: "sleep 60", background: true })).data.command_id);
      const refused = await call(client, "run_shell_command", { command: "sleep 60", background: true });
      expect(refused.isError).toBe(true);
      expect(refused.text).toContain("3 background commands are running already");
      const foreground = await call(client, "run_shell_command", { command: "echo still-fine" });
      expect(foreground.data.stdout).toBe("still-fine\n");
    } finally {
      for (const id of ids) await call(client, "kill_command", { command_id: id });
    }
  });

  // Found by review: the queue had no bound (3,000 queued commands: +100 MiB, 3,000 record files, all to run later).
  test("at most 64 commands wait for a foreground slot; the next is refused with what to do", async () => {
    await using _oneSlot = await startAgent(stack.relay, { machine: "one-slot", env: { MAX_CONCURRENT_COMMANDS: "1" } });
    await using client = await connectClient(stack.relay, "streamable-http");
    const ids: string[] = [];
    try {
      for (let i = 0; i < 65; i++) {
        const r = await call(client, "run_shell_command", { command: "sleep 60", wait_seconds: 0, machine: "one-slot" });
        ids.push(r.data.command_id);
      }
      const refused = await call(client, "run_shell_command", { command: "echo never", wait_seconds: 0, machine: "one-slot" });
      expect(refused.isError).toBe(true);
      expect(refused.text).toContain("64 commands are already waiting for one of the 1 slots");
    } finally {
      for (const id of ids) await call(client, "kill_command", { command_id: id });
    }
  });

  test("list_commands shows state, and get_command_output for an unknown id says what to do", async () => {
    await using client = await connectClient(stack.relay, "sse");
    const done = await call(client, "run_shell_command", { command: "exit 7" });
    const listed = await call(client, "list_commands", {});
    const entry = listed.data.commands.find((c: any) => c.command_id === done.data.command_id);
    expect(entry).toMatchObject({ machine: "worker", state: "exited", exit_code: 7, command: "exit 7", background: false });
    const unknown = await call(client, "get_command_output", { command_id: "000000000000@worker" });
    expect(unknown.isError).toBe(true);
    expect(unknown.text).toContain("list_commands");
  });

  test("a dropped HTTP connection does not kill the command; its result is kept", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    const session = await rawSession();
    const abort = new AbortController();
    void rawPost(session, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "run_shell_command", arguments: { command: `sleep 2; echo survived-${tag}` } } }, abort.signal).catch(() => {});
    await eventually(() => pidsMatching(`survived-${tag}`).length > 0, 3_000, "started");
    abort.abort(); // the client's connection goes away without notifications/cancelled
    const listed = await call(client, "list_commands", {});
    const entry = listed.data.commands.find((c: any) => c.command.includes(`survived-${tag}`));
    expect(entry.state).toBe("running");
    const { output, last } = await follow(client, entry.command_id);
    expect(output).toBe(`survived-${tag}\n`);
    expect(last.state).toBe("exited");
  });
});

// Found by review: send_command_input to a command that never read its stdin waited for ever (until the relay's
// deadline), holding the input in memory, and the next input piled up behind it.
describe("input to a command that does not read it", () => {
  /** More than a command's stdin holds unread (Bun gives it a socket pair of a few hundred KiB), so the command must
   *  read before all of it is taken. */
  const BYTES = 1_000_000;

  test("send_command_input answers within seconds and says so; more input is refused; kill_command still stops it", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tag = marker();
    const started = await call(client, "run_shell_command", { command: `sleep ${tag}`, background: true });
    const sentAt = Date.now();
    const sent = await call(client, "send_command_input", { command_id: started.data.command_id, input: "x".repeat(BYTES) }, { timeout: 15_000 });
    const waitedMs = Date.now() - sentAt;
    console.log(`send_command_input to a command that does not read: answered after ${waitedMs} ms`);
    expect(waitedMs).toBeLessThan(8_000);
    expect([sent.isError, sent.text]).toEqual([
      true,
      `Command ${started.data.command_id} has not taken all of its input within 5 s (its input pipe is full): the rest waits there and reaches it as it reads; more input is refused until then. See what it is doing with get_command_output, or stop it with kill_command.`,
    ]);
    const more = await call(client, "send_command_input", { command_id: started.data.command_id, input: "more\n" });
    expect(more.text).toContain("has not read the input sent before yet, so nothing was sent");
    const killed = await call(client, "kill_command", { command_id: started.data.command_id });
    expect(killed.data).toMatchObject({ state: "killed" });
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
  });

  test("input that waited in the pipe reaches the command once it reads", async () => {
    await using client = await connectClient(stack.relay, "sse");
    const started = await call(client, "run_shell_command", { command: `sleep 6; head -c ${BYTES} | wc -c`, background: true });
    const sent = await call(client, "send_command_input", { command_id: started.data.command_id, input: "x".repeat(BYTES) }, { timeout: 15_000 });
    expect(sent.text).toContain("has not taken all of its input within 5 s");
    const { output, last } = await follow(client, started.data.command_id);
    expect(output.trim()).toBe(String(BYTES));
    expect(last).toMatchObject({ state: "exited", exit_code: 0 });
  });
});

/** A Streamable HTTP session made by hand, so a test can drop one request's connection. */
async function rawSession(): Promise<string> {
  const response = await rawPost(null, {
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } },
  });
  const session = response.headers.get("mcp-session-id")!;
  await response.text();
  await (await rawPost(session, { jsonrpc: "2.0", method: "notifications/initialized" })).text();
  return session;
}

function rawPost(session: string | null, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(new URL("/mcp", stack.relay.url), {
    method: "POST",
    signal,
    headers: {
      Authorization: `Bearer ${stack.relay.token}`,
      "Content-Type": "application/json",
      Accept: "application/json, text/event-stream",
      "MCP-Protocol-Version": "2025-11-25",
      ...(session ? { "Mcp-Session-Id": session } : {}),
    },
    body: JSON.stringify(body),
  });
}

describe("what a command runs with", () => {
  test("argv passes an argument with quotes, $() and newlines unchanged, without a shell", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const tricky = `it's "quoted" $(echo no) \`no\` $HOME\nsecond line; rm -rf /nope`;
    const r = await call(client, "run_shell_command", { argv: ["printf", "%s", tricky] });
    expect(r.data.stdout).toBe(tricky);
  });

  test("env values reach the command; the agent's token does not", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const r = await call(client, "run_shell_command", { command: 'echo "$GREETING"; env', env: { GREETING: "hello there" } });
    expect(r.data.stdout.split("\n")[0]).toBe("hello there");
    expect(r.data.stdout).not.toContain(stack.relay.token);
  });

  test("stdin is fed then closed; without it stdin is empty", async () => {
    await using client = await connectClient(stack.relay, "sse");
    expect((await call(client, "run_shell_command", { command: "cat; echo done", stdin: "fed\n" })).data.stdout).toBe("fed\ndone\n");
    expect((await call(client, "run_shell_command", { command: "cat; echo done" })).data.stdout).toBe("done\n");
  });

  test("shell picks another shell; a missing program ends like in a shell (exit 127)", async () => {
    await using client = await connectClient(stack.relay, "sse");
    const bash = await call(client, "run_shell_command", { command: 'echo "${BASH_VERSION:+bash}"', shell: "/bin/bash" });
    expect(bash.data.stdout).toBe("bash\n");
    const missing = await call(client, "run_shell_command", { argv: ["no-such-program-here"] });
    expect(missing.data).toMatchObject({ state: "exited", exit_code: 127 });
    expect(missing.data.stderr).toContain("cannot run 'no-such-program-here': ENOENT");
  });

  test("without working_dir a command runs in home when home is an allowed root", async () => {
    await using homely = await startAgent(stack.relay, { machine: "homely", roots: [process.env.HOME!, "/tmp"] });
    await using client = await connectClient(stack.relay, "sse");
    const r = await call(client, "run_shell_command", { command: "pwd", machine: "homely" });
    expect(r.data.stdout).toBe(`${homely.roots[0]}\n`);
  });

  test("command and argv together, or shell with argv, are refused with a clear error", async () => {
    await using client = await connectClient(stack.relay, "sse");
    const both = await call(client, "run_shell_command", { command: "ls", argv: ["ls"] });
    expect(both.text).toContain("either command");
    const neither = await call(client, "run_shell_command", {});
    expect(neither.isError).toBe(true);
    const shellArgv = await call(client, "run_shell_command", { argv: ["ls"], shell: "/bin/bash" });
    expect(shellArgv.text).toContain("argv runs without a shell");
  });
});

describe("an agent restart", () => {
  test("stopping the agent kills its background commands; after a restart get_command_output says so", async () => {
    using state = tempDir("cr-state-");
    const tag = marker();
    const first = await startAgent(stack.relay, { machine: "restarting", stateDir: state.path });
    let commandId: string;
    {
      await using client = await connectClient(stack.relay, "streamable-http");
      commandId = (await call(client, "run_shell_command", { command: `echo before; sleep ${tag}`, background: true, machine: "restarting" })).data.command_id;
      await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 3_000, "started");
    }
    await first.stop();
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
    await using second = await startAgent(stack.relay, { machine: "restarting", stateDir: state.path });
    await using client = await connectClient(stack.relay, "streamable-http");
    const r = await call(client, "get_command_output", { command_id: commandId });
    expect(r.data).toMatchObject({ state: "killed", output: "before\n" });
    expect(second.stderr.text).not.toContain("left running by a previous agent");
  });

  test("after a crash (SIGKILL) the next agent kills the orphaned process group and reports the command killed", async () => {
    using state = tempDir("cr-state-");
    const tag = marker();
    const first = await startAgent(stack.relay, { machine: "crashing", stateDir: state.path });
    let commandId: string;
    {
      await using client = await connectClient(stack.relay, "streamable-http");
      commandId = (await call(client, "run_shell_command", { command: `sleep ${tag} & sleep ${tag}`, background: true, machine: "crashing" })).data.command_id;
      await eventually(() => pidsMatching(`sleep ${tag}`).length >= 2, 3_000, "started");
    }
    await first.kill();
    expect(pidsMatching(`sleep ${tag}`).length).toBeGreaterThanOrEqual(2); // orphans, for now
    await using second = await startAgent(stack.relay, { machine: "crashing", stateDir: state.path });
    await second.stderr.waitFor(/commands left running by a previous agent were killed commands=1/);
    await eventually(() => pidsMatching(`sleep ${tag}`).length === 0, 3_000, "orphans reaped");
    await using client = await connectClient(stack.relay, "streamable-http");
    expect((await call(client, "get_command_output", { command_id: commandId })).data.state).toBe("killed");
  });

  test("a second agent with the same name and state on one machine refuses to start", async () => {
    using state = tempDir("cr-state-");
    await using first = await startAgent(stack.relay, { machine: "single", stateDir: state.path });
    const second = await startAgent(stack.relay, { machine: "single", stateDir: state.path, waitConnected: false });
    expect(await second.proc.exited).toBe(2);
    expect(second.stderr.text).toContain(`Another agent (pid ${first.proc.pid}) is already running as 'single'`);
  });
});
