// Chaos on the agent's disk (security.md §4.4, "disk full / read-only home"): a small tmpfs that fills up, under the
// allowed root and under the agent's state directory (command records and output logs), and an allowed root that
// is a read-only bind mount. Writes must fail with an error that says why, change nothing (no partial file, no
// stray temp file, the old content intact), and the agent must go on serving. Mounting needs root: without it the
// tests are skipped, saying so.

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { callsWith } from "../helpers/audit-db.ts";
import { canMount, smallTmpfs } from "../helpers/chaos.ts";
import { connectClient, startAgent, startRelay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

setDefaultTimeout(30_000);

if (!canMount) console.warn("test/chaos/disk.test.ts: skipped: mounting a tmpfs or a read-only bind mount needs root (CAP_SYS_ADMIN)");

const MB = 1_000_000;

describe.skipIf(!canMount)("a full disk under the allowed root", () => {
  test("write_file that does not fit fails with 'the disk is full', leaves no partial or temp file, and keeps the old content", async () => {
    using disk = smallTmpfs(1024 * 1024);
    await using relay = await startRelay();
    await using _agent = await startAgent(relay, { machine: "full", roots: [disk.path] });
    await using client = await connectClient(relay, "streamable-http");
    const keep = `${disk.path}/keep.txt`;
    expect((await call(client, "write_file", { path: keep, content: "old content\n" })).isError).toBe(false);

    const over = await call(client, "write_file", { path: keep, content: "x".repeat(2 * MB) });
    expect(over.isError).toBe(true);
    expect(over.text).toBe(`Cannot write '${keep}': the disk is full. Nothing was changed.`);
    const fresh = await call(client, "write_file", { path: `${disk.path}/new.bin`, content: "y".repeat(2 * MB) });
    expect(fresh.text).toBe(`Cannot write '${disk.path}/new.bin': the disk is full. Nothing was changed.`);
    const appended = await call(client, "write_file", { path: keep, content: "z".repeat(2 * MB), append: true });
    expect(appended.text).toBe(`Cannot write '${keep}': the disk is full. Nothing was changed.`);
    const edited = await call(client, "edit_file", { path: keep, edits: [{ old_text: "old", new_text: "o".repeat(2 * MB) }] });
    expect(edited.text).toBe(`Cannot write '${keep}': the disk is full. Nothing was changed.`);
    expect(fs.readdirSync(disk.path)).toEqual(["keep.txt"]);
    expect(fs.readFileSync(keep, "utf8")).toBe("old content\n");

    // What fits still works, and the audit records each refusal as an error.
    const small = await call(client, "write_file", { path: `${disk.path}/small.txt`, content: "fits" });
    expect(small.data).toMatchObject({ bytes_written: 4, created: true });
    expect(callsWith(relay.databasePath, disk.path).map((c) => c.outcome)).toEqual(["ok", "error", "error", "error", "error", "ok"]);
  });

  test("write_file into new directories that then does not fit leaves no new directory behind", async () => {
    using disk = smallTmpfs(1024 * 1024);
    await using relay = await startRelay();
    await using _agent = await startAgent(relay, { machine: "full-dirs", roots: [disk.path] });
    await using client = await connectClient(relay, "streamable-http");
    const r = await call(client, "write_file", { path: `${disk.path}/a/b/c.bin`, content: "x".repeat(2 * MB) });
    expect(r.text).toBe(`Cannot write '${disk.path}/a/b/c.bin': the disk is full. Nothing was changed.`);
    expect(fs.readdirSync(disk.path)).toEqual([]);
  });
});
