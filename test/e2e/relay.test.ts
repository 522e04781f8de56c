// The relay under failure: agents that die, servers that restart, several machines, a second agent that wants a
// machine's name, and the database's own files. Every test starts its own processes.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { connectClient, eventually, freePort, pidsMatching, startAgent, startRelay, tempDir } from "../helpers/processes.ts";
import { eventsOf } from "../helpers/audit.ts";
import { call } from "../helpers/tools.ts";

const marker = () => String(2_000_000 + Math.floor(Math.random() * 7_000_000));

describe("an agent that goes away", () => {
  test("killing the agent mid-call fails the call within 2 s with an error naming the machine", async () => {
    await using relay = await startRelay();
    await using agent = await startAgent(relay, { machine: "doomed" });
    await using client = await connectClient(relay, "streamable-http");
    const tag = marker();
    const pending = call(client, "run_shell_command", { command: `sleep ${tag}`, timeout: 600 });
    await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 3_000, "command started");
    const killedAt = Date.now();
    await agent.kill();
    const r = await pending;
    expect(Date.now() - killedAt).toBeLessThan(2_000);
    expect(r.isError).toBe(true);
    expect(r.text).toContain("Machine 'doomed' disconnected");
    for (const pid of pidsMatching(`sleep ${tag}`)) process.kill(pid, "SIGKILL"); // SIGKILL left it orphaned
  });

  test("stopping the agent (SIGTERM) kills its running commands instead of orphaning them", async () => {
    await using relay = await startRelay();
    await using agent = await startAgent(relay, { machine: "leaving" });
    await using client = await connectClient(relay, "sse");
    const tag = marker();
    // The shell, a background sleep and a foreground sleep all carry the tag.
    const pending = call(client, "run_shell_command", { command: `sleep ${tag} & sleep ${tag}`, timeout: 600 });
    await eventually(() => pidsMatching(`sleep ${tag}`).length === 3, 3_000, "commands started");
    expect(await agent.stop()).toBe(0);
    expect(pidsMatching(`sleep ${tag}`)).toEqual([]);
    expect((await pending).isError).toBe(true);
    await agent.stderr.waitFor(/stopping signal="SIGTERM" running_commands=1/);
  });

  test("with no machine connected, check_agent_status says how to start one (a status, not an error)", async () => {
    await using relay = await startRelay();
    await using client = await connectClient(relay, "streamable-http");
    const r = await call(client, "check_agent_status");
    expect(r.isError).toBe(false);
    expect(r.data).toEqual({ machines: [], connected: 0 });
    expect(r.text).toContain("No machine is connected. Start an agent");
    const tool = await call(client, "list_directory", { path: "/tmp" });
    expect(tool.isError).toBe(true);
    expect(tool.text).toContain("No machine is connected");
  });
});

describe("a server restart", () => {
  test("the agent reconnects by itself and calls work again; the old session gets 404", async () => {
    const port = freePort();
    const first = await startRelay({ port });
    await using agent = await startAgent(first, { machine: "survivor" });
    const client = await connectClient(first, "streamable-http");
    expect((await call(client, "run_shell_command", { command: "echo before" })).data.stdout).toBe("before\n");
    await first.stop();
    await using second = await startRelay({ port, token: first.token, databasePath: first.databasePath });
    await agent.stderr.waitFor(/disconnected/);
    const connects = () => agent.stderr.lines.filter((l) => l.includes("agent info connected")).length;
    await eventually(() => connects() === 2, 10_000, "agent reconnected");
    await using fresh = await connectClient(second, "streamable-http");
    expect((await call(fresh, "run_shell_command", { command: "echo after" })).data.stdout).toBe("after\n");
    const stale = await fetch(new URL("/mcp", second.url), {
      method: "POST",
      headers: {
        Authorization: `Bearer ${second.token}`,
        "Content-Type": "application/json",
        Accept: "application/json, text/event-stream",
        "Mcp-Session-Id": client.transport!.sessionId ?? "none",
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/list" }),
    });
    expect(stale.status).toBe(404);
  });
});

describe("several machines", () => {
  test("two agents with different names are both reachable, and `machine` is then required", async () => {
    await using relay = await startRelay();
    await using laptop = await startAgent(relay, { machine: "laptop" });
    await using ci = await startAgent(relay, { machine: "ci" });
    await using client = await connectClient(relay, "streamable-http");
    const a = await call(client, "run_shell_command", { command: "echo $PPID", machine: "laptop" });
    const b = await call(client, "check_agent_status", { machine: "ci" });
    expect(a.data.machine).toBe("laptop");
    expect(b.data.machines.map((m: any) => [m.machine, m.pid])).toEqual([["ci", ci.proc.pid]]);
    const status = await call(client, "check_agent_status");
    expect(status.data.machines.map((m: any) => m.machine).sort()).toEqual(["ci", "laptop"]);
    const ambiguous = await call(client, "read_file", { path: `${laptop.roots[0]}/x` });
    expect(ambiguous.isError).toBe(true);
    expect(ambiguous.text).toBe('Several machines are connected; say which one with "machine". Connected: ci, laptop.');
  });

  test("a second agent with the same name (another key) is refused while the first keeps the name; neither flaps", async () => {
    await using relay = await startRelay();
    await using first = await startAgent(relay, { machine: "twin" });
    await using second = await startAgent(relay, { machine: "twin", waitConnected: false });
    await second.stderr.waitFor(/could not register with the relay: the relay refused this machine's identity/);
    await using client = await connectClient(relay, "sse");
    const check = async () => (await call(client, "check_agent_status", { machine: "twin" })).data.machines[0].pid;
    expect(await check()).toBe(first.proc.pid);
    await Bun.sleep(3_000); // the second keeps retrying meanwhile, and is refused each time
    expect(await check()).toBe(first.proc.pid);
    // The log and the audit say what happened: one connection, one refusal, no replacement and no disconnect.
    expect(relay.stderr.lines.filter((l) => l.includes("agent replaced") || l.includes("agent disconnected"))).toEqual([]);
    expect(first.stderr.text).not.toContain("waiting before trying again");
    const kinds = eventsOf(relay.databasePath, "--machine", "twin").map((e) => e.kind);
    expect(kinds.filter((k) => k.startsWith("agent_") || k === "auth_refused").sort()).toEqual(["agent_connected", "auth_refused"]);
  });
});

describe("the relay's database", () => {
  test("its file, WAL and SHM are 0600 under a permissive umask, in a directory anyone may read", async () => {
    using dir = tempDir();
    fs.chmodSync(dir.path, 0o777);
    const databasePath = path.join(dir.path, "relay.db");
    const umask = process.umask(0); // inherited by the relay, which is spawned before startRelay first waits
    const starting = startRelay({ databasePath });
    process.umask(umask);
    await using relay = await starting;
    await using _agent = await startAgent(relay, { machine: "private" }); // audit events: the WAL is written
    const modes = ["", "-wal", "-shm"].map((suffix) => [suffix, (fs.statSync(databasePath + suffix).mode & 0o777).toString(8)]);
    expect(modes).toEqual([["", "600"], ["-wal", "600"], ["-shm", "600"]]);
  });
});
