// Chaos: SQLite under concurrent writers (security.md §4.4). The relay writes the audit log on every tool call
// while operators run `bun run server.ts agent-token create|list|revoke` against the same database from other
// processes, many at once. WAL allows one writer at a time; with a busy timeout the others must wait their turn:
// no SQLITE_BUSY ("database is locked") may reach a caller, and no row may be lost on either side.

import { expect, setDefaultTimeout, test } from "bun:test";
import * as path from "node:path";
import { auditedCalls, integrityCheck } from "../helpers/audit-db.ts";
import { connectClient, ROOT, spawnProgram, startAgent, startRelay, type Relay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

setDefaultTimeout(120_000);

/** CLI processes in all, how many run at once, and the clients calling tools meanwhile. */
const CLI_RUNS = 24;
const CLI_AT_ONCE = 8;
const CLIENTS = 6;
/** Each client's calls are bounded in count; the loop also stops once the CLI runs are done. */
const MAX_CALLS_PER_CLIENT = 1_000;

/** One `bun run server.ts …` against the relay's database, as an operator runs it. */
async function cli(relay: Relay, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawnProgram([process.execPath, "run", path.join(ROOT, "server.ts"), ...args], { env: { DATABASE_PATH: relay.databasePath } });
  const code = await child.proc.exited;
  await Bun.sleep(20); // let the output readers take the last lines
  return { code, stdout: child.stdout.text, stderr: child.stderr.text };
}

test("the relay's audit writes and agent-token CLIs in parallel processes: no SQLITE_BUSY reaches a caller, no row is lost", async () => {
  await using relay = await startRelay();
  await using agent = await startAgent(relay, { machine: "writer" });
  const done = { cli: false };
  const markers: string[] = [];
  const failures: string[] = [];

  const clientLoop = async (n: number) => {
    await using client = await connectClient(relay, n % 2 ? "sse" : "streamable-http");
    for (let i = 0; i < MAX_CALLS_PER_CLIENT && !done.cli; i++) {
      const marker = `c${n}-${i}-${Math.random().toString(36).slice(2, 8)}`;
      markers.push(marker);
      const r = await call(client, "write_file", { path: `${agent.roots[0]}/${marker}`, content: marker });
      if (r.isError) failures.push(r.text);
    }
  };
  const clients = Array.from({ length: CLIENTS }, (_, n) => clientLoop(n));

  const runs: { code: number; stdout: string; stderr: string; args: string[] }[] = [];
  for (let wave = 0; wave < CLI_RUNS / CLI_AT_ONCE; wave++) {
    const batch = Array.from({ length: CLI_AT_ONCE }, (_, i) => {
      const n = wave * CLI_AT_ONCE + i;
      // Mostly creates; in each wave one run lists, and from the second wave on one revokes a token of the wave before.
      const args =
        i === 3 ? ["agent-token", "list"] : i === 7 && wave > 0 ? ["agent-token", "revoke", `cli-${n - CLI_AT_ONCE - 7}`] : ["agent-token", "create", `cli-${n}`];
      return cli(relay, ...args).then((r) => runs.push({ ...r, args }));
    });
    await Promise.all(batch);
  }
  done.cli = true;
  await Promise.all(clients);

  // Every CLI run succeeded, and nothing anywhere said the database was locked or busy.
  expect(runs.filter((r) => r.code !== 0).map((r) => `${r.args.join(" ")}: ${r.stderr}`)).toEqual([]);
  const busy = /database is locked|SQLITE_BUSY|busy/i;
  expect(runs.filter((r) => busy.test(r.stderr))).toEqual([]);
  expect(relay.stderr.lines.filter((l) => busy.test(l))).toEqual([]);
  expect(failures).toEqual([]);

  // No token lost: every create is listed, except the ones revoked.
  const created = runs.filter((r) => r.args[1] === "create").map((r) => r.args[2]!);
  const revoked = runs.filter((r) => r.args[1] === "revoke").map((r) => r.args[2]!);
  const listed = (await cli(relay, "agent-token", "list")).stdout;
  for (const machine of created) expect(listed.includes(`${machine} `)).toBe(!revoked.includes(machine));

  // The relay sees what the CLI wrote: an agent connects with a token made during the storm.
  const survivor = runs.find((r) => r.args[1] === "create" && !revoked.includes(r.args[2]!))!;
  const token = /^\s+(\S{40,})$/m.exec(survivor.stdout)![1]!;
  await using cliAgent = await startAgent(relay, { machine: survivor.args[2]!, token });
  expect(cliAgent.stderr.text).toContain("agent info connected");

  // No audit row lost: one finished row per call made, and the database is sound.
  const rows = auditedCalls(relay.databasePath).filter((c) => c.tool === "write_file");
  expect(rows.length).toBe(markers.length);
  expect(rows.filter((r) => !r.finished || r.outcome !== "ok")).toEqual([]);
  expect(integrityCheck(relay.databasePath)).toBe("ok");
  console.log(`sqlite: ${runs.length} CLI runs (${CLI_AT_ONCE} at once) while ${markers.length} tool calls were audited; 0 busy, 0 lost`);
});
