// The audit log as a user reads it (`bun run server.ts audit`, `audit verify`, GET /audit) against a real relay:
// calls recorded when they start and when they end, secrets redacted, a hash chain that catches any change,
// deletion or reordering, pruning that keeps the chain verifiable, and a relay killed with -9 mid-burst.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { auditCli, callsOf, eventsOf } from "../helpers/audit.ts";
import { ageEvents } from "../helpers/audit-db.ts";
import { connectClient, eventually, startAgent, startRelay, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";

const stack = useStack({ agent: { machine: "audited" } });

describe("reading the audit", () => {
  test("a call is listed as unfinished while it runs and with its outcome when it ends", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const pending = call(client, "run_shell_command", { command: "sleep 1; exit 4", timeout: 30 });
    const mine = () => callsOf(stack.relay.databasePath, "--tool", "run_shell_command").find((c) => c.arguments.command === "sleep 1; exit 4");
    await eventually(() => mine() !== undefined, 3_000, "call recorded");
    expect(mine()).toMatchObject({ outcome: "unfinished", finished_at: null, client: "owner" });
    await pending;
    const done = mine();
    expect(done).toMatchObject({ machine: "audited", outcome: "ok", exit_code: 4 });
    expect(done.duration_ms).toBeGreaterThanOrEqual(900);
    expect(done.output_bytes).toBeGreaterThan(0);
  });

  test("the table is readable and filters by machine, tool, time and count", async () => {
    await using client = await connectClient(stack.relay, "sse");
    await call(client, "list_directory", { path: stack.agent.roots[0] });
    const { code, stdout } = auditCli(stack.relay.databasePath, "--tool", "list_directory", "--since", "10m", "--limit", "1");
    expect(code).toBe(0);
    const lines = stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^TIME \(UTC\)\s+MACHINE\s+TOOL\s+OUTCOME\s+EXIT\s+MS\s+CLIENT\s+ARGUMENTS$/);
    expect(lines.length).toBe(2);
    expect(lines[1]).toContain("audited");
    expect(lines[1]).toContain("list_directory");
    expect(auditCli(stack.relay.databasePath, "--machine", "nowhere").stdout.trim()).toBe("No tool calls match.");
    expect(auditCli(stack.relay.databasePath, "--since", "yesterday-ish").stderr).toContain("since must be a duration");
  });

  test("write_file content is stored as its size and SHA-256, and env values by name only", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    const content = `secret-content-${Date.now()}`;
    await call(client, "write_file", { path: `${stack.agent.roots[0]}/audited.txt`, content });
    await call(client, "run_shell_command", { command: "true", env: { API_KEY: "sk-do-not-store" }, stdin: "typed-password" });
    const [write] = callsOf(stack.relay.databasePath, "--tool", "write_file");
    expect(write.arguments).toEqual({
      path: `${stack.agent.roots[0]}/audited.txt`,
      content_bytes: content.length,
      content_sha256: createHash("sha256").update(content).digest("hex"),
    });
    const [shell] = callsOf(stack.relay.databasePath, "--tool", "run_shell_command");
    expect(shell.arguments.env).toEqual(["API_KEY"]);
    const raw = Buffer.concat([stack.relay.databasePath, `${stack.relay.databasePath}-wal`].filter(fs.existsSync).map((f) => fs.readFileSync(f)));
    for (const secret of [content, "sk-do-not-store", "typed-password"]) expect(raw.includes(secret)).toBe(false);
  });

  test("failed calls, path denials and calls to a missing machine are recorded", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    await call(client, "read_file", { path: "/etc/hostname" });
    await call(client, "list_directory", { path: "/tmp", machine: "ghost" });
    const failed = callsOf(stack.relay.databasePath).filter((c) => c.outcome === "error");
    expect(failed.find((c) => c.tool === "read_file")).toMatchObject({ machine: "audited" });
    expect(failed.find((c) => c.tool === "list_directory")).toMatchObject({ machine: "ghost" });
    const denial = eventsOf(stack.relay.databasePath).find((e) => e.kind === "path_denied");
    expect(denial).toMatchObject({ machine: "audited" });
    expect(denial.detail.detail).toContain("read_file: Access denied");
  });

  test("timed-out commands are recorded as timed_out", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    await call(client, "run_shell_command", { command: "sleep 30", timeout: 1 });
    expect(callsOf(stack.relay.databasePath, "--tool", "run_shell_command").find((c) => c.arguments.command === "sleep 30").outcome).toBe("timed_out");
  });

  test("agent connects and disconnects are recorded", async () => {
    await using extra = await startAgent(stack.relay, { machine: "visitor" });
    await extra.stop();
    await eventually(() => eventsOf(stack.relay.databasePath, "--machine", "visitor").some((e) => e.kind === "agent_disconnected"), 3_000, "disconnect recorded");
    expect(eventsOf(stack.relay.databasePath, "--machine", "visitor").map((e) => e.kind).reverse()).toEqual(["machine_key_pinned", "agent_connected", "agent_disconnected"]);
  });

  test("GET /audit answers the owner with the same records, and refuses others", async () => {
    const url = new URL("/audit?tool=write_file&limit=1", stack.relay.url);
    const response = await fetch(url, { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(response.status).toBe(200);
    const body = (await response.json()) as any;
    expect(body.calls.length).toBe(1);
    expect(body.calls[0].tool).toBe("write_file");
    expect((await fetch(url)).status).toBe(401);
    expect((await fetch(new URL("/audit?since=bogus", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } })).status).toBe(400);
  });

  test("a since longer ago than 1970 means the whole log, on the route and in the command", async () => {
    const response = await fetch(new URL("/audit?since=999999999999d&tool=write_file", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(response.status).toBe(200);
    expect(((await response.json()) as any).calls.length).toBeGreaterThan(0);
    const cli = auditCli(stack.relay.databasePath, "--since", "99999999999999999999999d", "--json");
    expect(cli.code).toBe(0);
    expect(JSON.parse(cli.stdout).calls.length).toBeGreaterThan(0);
  });

  test("the database is in WAL mode", () => {
    const db = new Database(stack.relay.databasePath, { readonly: true });
    expect((db.query("PRAGMA journal_mode").get() as any).journal_mode).toBe("wal");
    db.close();
  });
});

describe("audit verify", () => {
  /** A stopped relay's database with some history, copied so each test can damage its own. */
  let pristine: string;
  const work = tempDir("cr-audit-");

  beforeAll(async () => {
    await using r = await startRelay();
    await using a = await startAgent(r, { machine: "chain" });
    await using client = await connectClient(r, "streamable-http");
    for (let i = 0; i < 5; i++) await call(client, "run_shell_command", { command: `echo ${i}` });
    await r.stop(); // closes the database: the WAL is checkpointed into the file
    pristine = r.databasePath;
    expect(a.machine).toBe("chain");
  });
  afterAll(() => work[Symbol.dispose]());

  /** A copy of the pristine database with `damage` done to it in SQL; returns its path. */
  function damaged(name: string, damage: string): string {
    const copy = path.join(work.path, `${name}.db`);
    fs.copyFileSync(pristine, copy);
    const db = new Database(copy);
    for (const statement of damage.split(";")) db.run(statement);
    db.close();
    return copy;
  }

  test("an untouched chain verifies and names its head", () => {
    const result = auditCli(pristine, "verify");
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^audit chain intact: \d+ events; head: event \d+, hash [0-9a-f]{64}$/m);
  });

  test("a changed event is found", () => {
    const result = auditCli(damaged("changed", "UPDATE audit_events SET data = replace(data, 'echo 2', 'echo 9') WHERE data LIKE '%echo 2%'"), "verify");
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/BROKEN at event \d+: event \d+ was changed after it was written/);
  });

  test("a deleted event is found", () => {
    const result = auditCli(damaged("deleted", "DELETE FROM audit_events WHERE seq = 3"), "verify");
    expect(result.stderr).toContain("BROKEN at event 3: event 3 is missing (the next one stored is 4)");
  });

  test("two events swapped are found", () => {
    const swap = "UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = -3";
    const result = auditCli(damaged("swapped", swap), "verify");
    expect(result.stderr).toContain("BROKEN at event 3: event 3 does not follow event 2");
  });

  test("a changed event whose hash was recomputed breaks the link to the next one", () => {
    const copy = damaged("rehashed", "UPDATE audit_events SET client = 'someone-else' WHERE seq = 3");
    const db = new Database(copy);
    const row = db.query("SELECT * FROM audit_events WHERE seq = 3").get() as any;
    const fields = [row.seq, row.at, row.kind, row.machine, row.client, row.call_id, row.data, row.prev_hash];
    const hash = createHash("sha256").update(JSON.stringify(fields)).digest("hex");
    db.query("UPDATE audit_events SET hash = ? WHERE seq = 3").run(hash);
    db.close();
    expect(auditCli(copy, "verify").stderr).toContain("BROKEN at event 4: event 4 does not follow event 3");
  });
});

describe("retention", () => {
  test("old events are pruned at start and the chain still verifies from the anchor", async () => {
    await using first = await startRelay();
    {
      await using a = await startAgent(first, { machine: "aging" });
      await using client = await connectClient(first, "streamable-http");
      for (let i = 0; i < 3; i++) await call(client, "check_agent_status", { machine: a.machine });
    }
    await first.stop();
    // Make every event ten days old, then start a relay that keeps five days.
    const aged = ageEvents(first.databasePath, 10);
    expect(auditCli(first.databasePath, "verify").code).toBe(0);
    await using second = await startRelay({ databasePath: first.databasePath, env: { AUDIT_RETENTION_DAYS: "5" } });
    await second.stderr.waitFor(/audit events pruned deleted=\d+/);
    await second.stop();
    const verified = auditCli(first.databasePath, "verify");
    expect(verified.code).toBe(0);
    expect(verified.stdout).toContain(`continuing from pruned event ${aged}`);
    expect(eventsOf(first.databasePath).some((e) => e.kind === "audit_pruned")).toBe(true);
  });
});

test("kill -9 of the relay during a burst of 1,000 calls leaves a sound database where every answered call is finished", async () => {
  await using r = await startRelay();
  await using a = await startAgent(r, { machine: "burst" });
  const file = path.join(a.roots[0]!, "small.txt");
  fs.writeFileSync(file, "one line\n");
  const clients = await Promise.all(Array.from({ length: 16 }, () => connectClient(r, "streamable-http")));
  const answered = new Set<number>();
  let next = 0;
  const worker = async (client: (typeof clients)[number]) => {
    while (next < 1_000) {
      const n = next++;
      try {
        await call(client, "read_file", { path: file, offset: n + 1 }); // the offset marks the call in the audit
        answered.add(n + 1);
      } catch {
        return; // the relay is gone
      }
    }
  };
  const burst = Promise.all(clients.map(worker));
  await eventually(() => answered.size >= 300, 20_000, "300 calls answered");
  r.proc.kill("SIGKILL");
  await burst;
  await r.proc.exited;
  expect(answered.size).toBeLessThan(1_000);

  const db = new Database(r.databasePath, { readonly: true });
  expect((db.query("PRAGMA integrity_check").get() as any).integrity_check).toBe("ok");
  const finished = new Set(
    (db
      .query(`SELECT json_extract(s.data, '$.arguments.offset') AS offset FROM audit_events s
              JOIN audit_events f ON f.call_id = s.call_id AND f.kind = 'call_finished' WHERE s.kind = 'call_started'`)
      .all() as { offset: number }[]).map((row) => row.offset),
  );
  db.close();
  const missing = [...answered].filter((offset) => !finished.has(offset));
  expect(missing).toEqual([]);
  expect(auditCli(r.databasePath, "verify").code).toBe(0);
}, 60_000);
