// The audit log in SQLite: one row per tool call, written at the start and completed at the end, with file
// contents redacted, plus agent connects and disconnects.

import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { Database } from "bun:sqlite";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { connectClient, eventually, startAgent, startRelay, type Agent, type Relay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

// Real processes on a busy machine take longer than bun's default 5 s per test (the setting is per file).
setDefaultTimeout(30_000);

let relay: Relay;
let agent: Agent;

beforeAll(async () => {
  relay = await startRelay();
  agent = await startAgent(relay, { machine: "audited" });
});

afterAll(async () => {
  await agent[Symbol.asyncDispose]();
  await relay[Symbol.asyncDispose]();
});

function query<T>(sql: string, ...params: (string | number)[]): T[] {
  const db = new Database(relay.databasePath, { readonly: true });
  try {
    return db.query(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

interface CallRow {
  tool: string;
  machine: string | null;
  arguments: string;
  outcome: string;
  exit_code: number | null;
  duration_ms: number | null;
  client: string;
  finished_at: string | null;
}

test("the database is in WAL mode", () => {
  const db = new Database(relay.databasePath, { readonly: true });
  expect((db.query("PRAGMA journal_mode").get() as any).journal_mode).toBe("wal");
  db.close();
});

test("a call's row exists as unfinished while it runs and is completed when it ends", async () => {
  await using client = await connectClient(relay, "streamable-http");
  const pending = call(client, "run_shell_command", { command: "sleep 1; exit 4", timeout: 30 });
  await eventually(() => query<CallRow>("SELECT * FROM tool_calls WHERE arguments LIKE '%sleep 1; exit 4%'").length === 1, 3_000);
  const [running] = query<CallRow>("SELECT * FROM tool_calls WHERE arguments LIKE '%sleep 1; exit 4%'");
  expect(running).toMatchObject({ tool: "run_shell_command", outcome: "unfinished", finished_at: null, client: "owner" });
  await pending;
  const [done] = query<CallRow>("SELECT * FROM tool_calls WHERE arguments LIKE '%sleep 1; exit 4%'");
  expect(done).toMatchObject({ machine: "audited", outcome: "ok", exit_code: 4 });
  expect(done!.duration_ms).toBeGreaterThanOrEqual(900);
});

test("write_file content is stored as its size and SHA-256, never in full", async () => {
  await using client = await connectClient(relay, "sse");
  const content = `secret-content-${Date.now()}`;
  const file = `${agent.roots[0]}/audited.txt`;
  await call(client, "write_file", { path: file, content });
  const [row] = query<CallRow>("SELECT * FROM tool_calls WHERE tool = 'write_file' ORDER BY id DESC LIMIT 1");
  expect(JSON.parse(row!.arguments)).toEqual({
    path: file,
    content_bytes: content.length,
    content_sha256: createHash("sha256").update(content).digest("hex"),
  });
  const raw = Buffer.concat([fs.readFileSync(relay.databasePath), fs.readFileSync(`${relay.databasePath}-wal`)]);
  expect(raw.includes(content)).toBe(false);
});

test("failed calls are recorded with their error, including calls to a machine that is not there", async () => {
  await using client = await connectClient(relay, "streamable-http");
  await call(client, "read_file", { path: "/etc/hostname" });
  await call(client, "list_directory", { path: "/tmp", machine: "ghost" });
  const rows = query<CallRow & { error: string }>("SELECT * FROM tool_calls WHERE outcome = 'error' ORDER BY id");
  expect(rows.map((r) => [r.tool, r.machine])).toEqual([
    ["read_file", "audited"],
    ["list_directory", "ghost"],
  ]);
  expect(rows[0]!.error).toContain("Access denied");
});

test("timed-out commands are recorded as timed_out", async () => {
  await using client = await connectClient(relay, "streamable-http");
  await call(client, "run_shell_command", { command: "sleep 30", timeout: 1 });
  const [row] = query<CallRow>("SELECT * FROM tool_calls WHERE arguments LIKE '%sleep 30%'");
  expect(row!.outcome).toBe("timed_out");
});

test("agent connects and disconnects are recorded", async () => {
  await using extra = await startAgent(relay, { machine: "visitor" });
  await extra.stop();
  await eventually(() => query("SELECT * FROM events WHERE kind = 'agent_disconnected' AND machine = 'visitor'").length === 1);
  const kinds = query<{ kind: string }>("SELECT kind FROM events WHERE machine = 'visitor' ORDER BY id").map((r) => r.kind);
  expect(kinds).toEqual(["agent_connected", "agent_disconnected"]);
});
