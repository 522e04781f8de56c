// Chaos on the agent's disk (security.md §4.4, "disk full / read-only home"): a small tmpfs that fills up, under the
// allowed root and under the agent's state directory (command records and output logs), and an allowed root that
// is a read-only bind mount. Writes must fail with an error that says why, change nothing (no partial file, no
// stray temp file, the old content intact), and the agent must go on serving. Mounting needs root: without it the
// tests are skipped, saying so.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { callsWith } from "../helpers/audit-db.ts";
import { canMount, followCommand, readOnlyView, smallTmpfs } from "../helpers/chaos.ts";
import { connectClient, startAgent, startRelay, tempDir } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

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

describe.skipIf(!canMount)("a full disk under the agent's state directory", () => {
  test("a command whose output fills it still runs to its end, its result keeps head and tail, and get_command_output returns what was kept", async () => {
    using state = smallTmpfs(256 * 1024);
    await using relay = await startRelay();
    await using agent = await startAgent(relay, { machine: "full-state", stateDir: state.path });
    await using client = await connectClient(relay, "streamable-http");
    const r = await call(client, "run_shell_command", { command: "echo FIRST; head -c 2000000 /dev/zero | tr '\\0' a; echo; echo LAST", timeout: 20 });
    expect(r.isError).toBe(false);
    expect(r.data).toMatchObject({ state: "exited", exit_code: 0, stdout_bytes: 6 + 2 * MB + 1 + 5, truncated: true });
    expect(r.data.stdout.startsWith("FIRST\naaa")).toBe(true);
    expect(r.data.stdout.endsWith("aaa\nLAST\n")).toBe(true);
    expect(r.data.duration_ms).toBeLessThan(10_000); // not stuck on a pipe nobody reads

    const { output, last } = await followCommand(client, r.data.command_id);
    expect(last).toMatchObject({ state: "exited", exit_code: 0 });
    expect(output.startsWith("FIRST\naaa")).toBe(true);
    expect(last.total_bytes).toBeLessThan(256 * 1024); // what fitted on disk; the rest was not kept
    expect(output.length).toBe(last.total_bytes);
    await agent.stderr.waitFor(/agent warn .*output log.*the disk is full/);
    expect(fs.readdirSync(state.path).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  test("while it is full, a new command is refused with a clear error and nothing runs; once there is room, commands run again", async () => {
    using state = smallTmpfs(256 * 1024);
    using marker = tempDir("cr-ran-");
    await using relay = await startRelay();
    await using _agent = await startAgent(relay, { machine: "full-state2", stateDir: state.path });
    await using client = await connectClient(relay, "streamable-http");
    fs.writeFileSync(`${state.path}/filler`, Buffer.alloc(0));
    const filler = fs.openSync(`${state.path}/filler`, "w");
    for (let i = 0; i < 1024; i++) {
      try {
        fs.writeSync(filler, Buffer.alloc(4096, 1));
      } catch {
        break; // full
      }
    }
    fs.closeSync(filler);

    const before = fs.readdirSync(state.path).sort();
    const refused = await call(client, "run_shell_command", { command: `touch ${marker.path}/ran` });
    expect(refused.isError).toBe(true);
    expect(refused.text).toBe(`The agent cannot record the command: its state directory (${state.path}) is full. Free some space there and try again.`);
    expect(fs.existsSync(`${marker.path}/ran`)).toBe(false);
    expect(fs.readdirSync(state.path).sort()).toEqual(before); // no half-written record or temp file left

    fs.rmSync(`${state.path}/filler`);
    const ran = await call(client, "run_shell_command", { command: `touch ${marker.path}/ran && echo ok` });
    expect(ran.data).toMatchObject({ state: "exited", stdout: "ok\n" });
  });
});

describe.skipIf(!canMount)("a read-only allowed root (a read-only bind mount)", () => {
  test("reads work; write_file, edit_file and new directories fail with 'read-only' and change nothing; a shell write fails in the shell", async () => {
    using source = tempDir("cr-home-");
    fs.mkdirSync(`${source.path}/project`);
    fs.writeFileSync(`${source.path}/project/notes.txt`, "hello\n");
    using home = readOnlyView(source.path);
    await using relay = await startRelay();
    await using _agent = await startAgent(relay, { machine: "readonly", roots: [home.path] });
    await using client = await connectClient(relay, "sse");
    const notes = `${home.path}/project/notes.txt`;

    expect((await call(client, "read_file", { path: notes })).data.content).toBe("hello\n");
    expect((await call(client, "list_directory", { path: `${home.path}/project` })).data.entries.map((e: { name: string }) => e.name)).toEqual(["notes.txt"]);
    expect((await call(client, "search_files", { path: home.path, content: "hello" })).data.matches).toHaveLength(1);

    const readOnly = (p: string) => `Cannot write '${p}': the file system is read-only. Nothing was changed.`;
    expect((await call(client, "write_file", { path: notes, content: "changed" })).text).toBe(readOnly(notes));
    expect((await call(client, "write_file", { path: `${home.path}/new.txt`, content: "new" })).text).toBe(readOnly(`${home.path}/new.txt`));
    expect((await call(client, "write_file", { path: `${home.path}/sub/dir/new.txt`, content: "new" })).text).toBe(readOnly(`${home.path}/sub/dir/new.txt`));
    expect((await call(client, "edit_file", { path: notes, edits: [{ old_text: "hello", new_text: "bye" }] })).text).toBe(readOnly(notes));

    const shell = await call(client, "run_shell_command", { command: "echo changed > notes.txt", working_dir: `${home.path}/project` });
    expect(shell.data.exit_code).not.toBe(0);
    expect(shell.data.stderr).toContain("Read-only file system");

    expect(fs.readdirSync(source.path)).toEqual(["project"]);
    expect(fs.readdirSync(`${source.path}/project`)).toEqual(["notes.txt"]);
    expect(fs.readFileSync(`${source.path}/project/notes.txt`, "utf8")).toBe("hello\n");
  });
});
