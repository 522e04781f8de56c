// edit_file, search_files, file_info, and the deeper list_directory and tail read, against a real agent.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { auditedCalls } from "../helpers/audit-db.ts";
import { call, resultSize } from "../helpers/tools.ts";

const workspace = tempDir("cr-edit-");
const root = workspace.path;
const at = (...parts: string[]) => path.join(root, ...parts);

const stack = useStack({ agent: { machine: "editor", roots: [root] }, client: "streamable-http" });

afterAll(() => {
  workspace[Symbol.dispose]();
});

describe("edit_file", () => {
  test("keeps CRLF line endings when old_text and new_text use LF, and returns a unified diff", async () => {
    fs.writeFileSync(at("crlf.txt"), "alpha\r\nbeta\r\ngamma\r\n");
    const r = await call(stack.client, "edit_file", { path: at("crlf.txt"), edits: [{ old_text: "alpha\nbeta", new_text: "one\ntwo\nthree" }] });
    expect(r.isError).toBe(false);
    expect(fs.readFileSync(at("crlf.txt"), "utf8")).toBe("one\r\ntwo\r\nthree\r\ngamma\r\n");
    expect(r.data).toMatchObject({ replacements: 1, line_endings: "crlf", dry_run: false });
    expect(r.data.diff).toContain("@@ -1,3 +1,4 @@\n-alpha\r\n-beta\r\n+one\r\n+two\r\n+three\r\n gamma\r");
  });

  test("keeps LF files LF even when the model sends CRLF", async () => {
    fs.writeFileSync(at("lf.txt"), "a\nb\n");
    await call(stack.client, "edit_file", { path: at("lf.txt"), edits: [{ old_text: "a\r\nb", new_text: "x\r\ny" }] });
    expect(fs.readFileSync(at("lf.txt"), "utf8")).toBe("x\ny\n");
  });

  test("an old_text that occurs twice is refused with the lines, and nothing changes", async () => {
    fs.writeFileSync(at("twice.txt"), "x = 1\ny = 2\nx = 1\n");
    const r = await call(stack.client, "edit_file", { path: at("twice.txt"), edits: [{ old_text: "x = 1", new_text: "x = 3" }] });
    expect(r.isError).toBe(true);
    expect(r.text).toContain("occurs 2 times (lines 1, 3)");
    expect(fs.readFileSync(at("twice.txt"), "utf8")).toBe("x = 1\ny = 2\nx = 1\n");
    const all = await call(stack.client, "edit_file", { path: at("twice.txt"), edits: [{ old_text: "x = 1", new_text: "x = 3", replace_all: true }] });
    expect(all.data.replacements).toBe(2);
    expect(fs.readFileSync(at("twice.txt"), "utf8")).toBe("x = 3\ny = 2\nx = 3\n");
  });

  test("an old_text that does not occur shows the closest lines, and a whitespace-only difference is named", async () => {
    fs.writeFileSync(at("code.ts"), "function greet(name) {\n\treturn `hello ${name}`;\n}\n");
    const near = await call(stack.client, "edit_file", { path: at("code.ts"), edits: [{ old_text: "function greet(nam) {", new_text: "x" }] });
    expect(near.isError).toBe(true);
    expect(near.text).toContain('line 1: "function greet(name) {"');
    const spaces = await call(stack.client, "edit_file", { path: at("code.ts"), edits: [{ old_text: "{\n    return `hello ${name}`;", new_text: "x" }] });
    expect(spaces.text).toContain("matches at line 1 if whitespace is ignored");
    expect(fs.readFileSync(at("code.ts"), "utf8")).toBe("function greet(name) {\n\treturn `hello ${name}`;\n}\n");
  });

  test("the closest lines reach the model but never the audit log or the relay's output", async () => {
    const secret = "DB_PASSWORD=hunter2-very-secret-value";
    fs.writeFileSync(at(".env"), `${secret}\nPORT=80\n`);
    const near = await call(stack.client, "edit_file", { path: at(".env"), edits: [{ old_text: "DB_PASSWORD=hunter3", new_text: "x" }] });
    expect(near.isError).toBe(true);
    expect(near.text).toContain(secret); // the model needs it to correct its edit
    const finished = auditedCalls(stack.relay.databasePath).findLast((c) => c.tool === "edit_file")!;
    expect(finished.outcome).toBe("error");
    expect(finished.error).toBe("old_text was not found; nothing was changed.");
    const database = Buffer.concat([stack.relay.databasePath, `${stack.relay.databasePath}-wal`].filter(fs.existsSync).map((f) => fs.readFileSync(f)));
    expect(database.includes("hunter2")).toBe(false);
    expect(stack.relay.stderr.text + stack.agent.stderr.text).not.toContain("hunter2");
  });

  test("a replace_all over 400,000 lines is written once and answered with a diff (found by review: the diff overflowed the stack after the write)", async () => {
    fs.writeFileSync(at("big.log"), "level=debug\n".repeat(400_000));
    const r = await call(stack.client, "edit_file", { path: at("big.log"), edits: [{ old_text: "debug", new_text: "info", replace_all: true }] });
    expect(r.isError).toBe(false);
    expect(r.data.replacements).toBe(400_000);
    expect(r.data.diff).toContain("+level=info");
    expect(fs.readFileSync(at("big.log"), "utf8")).toBe("level=info\n".repeat(400_000));
  });

  test("a miss in a file of millions of short lines, with a 100,000-character old_text, is answered at once (found by review: hours)", async () => {
    fs.writeFileSync(at("short-lines.txt"), "ab\n".repeat(2_700_000));
    const started = Date.now();
    const r = await call(stack.client, "edit_file", { path: at("short-lines.txt"), edits: [{ old_text: "xy".repeat(50_000), new_text: "z" }] });
    expect(r.isError).toBe(true);
    expect(r.text).toStartWith("old_text was not found; nothing was changed.");
    expect(Date.now() - started).toBeLessThan(20_000); // before: the relay dropped the agent after 25 s of silence
    expect((await call(stack.client, "read_file", { path: at("code.ts") })).isError).toBe(false);
  });

  test("edits that would grow the file past 8 MiB are refused before anything is built (found by review: 400 MB written)", async () => {
    fs.writeFileSync(at("tiny.txt"), "ab");
    const edits = [{ old_text: "a", new_text: "y".repeat(1_000_000) }, { old_text: "y", new_text: "z".repeat(100), replace_all: true }];
    const r = await call(stack.client, "edit_file", { path: at("tiny.txt"), edits });
    expect(r.isError).toBe(true);
    expect(r.text).toContain("edit 2: the file would grow to");
    expect(fs.readFileSync(at("tiny.txt"), "utf8")).toBe("ab");
  });

  test("an error echoing a 4,000-character path reaches the client, and the agent stays connected", async () => {
    const r = await call(stack.client, "read_file", { path: `/nowhere/${"a".repeat(4_000)}` });
    expect(r.isError).toBe(true);
    expect(r.text.length).toBeLessThan(2_100);
    expect(stack.relay.stderr.text).not.toContain("closing agent socket");
    expect((await call(stack.client, "read_file", { path: at("code.ts") })).isError).toBe(false);
  });

  test("edits are all or nothing: a failing second edit leaves the file as it was", async () => {
    fs.writeFileSync(at("atomic.txt"), "one\ntwo\n");
    const r = await call(stack.client, "edit_file", { path: at("atomic.txt"), edits: [{ old_text: "one", new_text: "1" }, { old_text: "three", new_text: "3" }] });
    expect(r.isError).toBe(true);
    expect(r.text).toStartWith("edit 2: old_text was not found");
    expect(fs.readFileSync(at("atomic.txt"), "utf8")).toBe("one\ntwo\n");
  });

  test("a dry run returns the diff and changes nothing", async () => {
    fs.writeFileSync(at("dry.txt"), "keep\n");
    const before = fs.statSync(at("dry.txt")).mtimeMs;
    const r = await call(stack.client, "edit_file", { path: at("dry.txt"), edits: [{ old_text: "keep", new_text: "changed" }], dry_run: true });
    expect(r.data).toMatchObject({ dry_run: true, replacements: 1 });
    expect(r.data.diff).toContain("-keep\n+changed");
    expect(fs.readFileSync(at("dry.txt"), "utf8")).toBe("keep\n");
    expect(fs.statSync(at("dry.txt")).mtimeMs).toBe(before);
  });

  test("a binary file is refused, and a path outside the roots is denied", async () => {
    fs.writeFileSync(at("blob.bin"), Buffer.from([0, 1, 2, 0xff, 0xfe]));
    expect((await call(stack.client, "edit_file", { path: at("blob.bin"), edits: [{ old_text: "a", new_text: "b" }] })).text).toContain("not UTF-8 text");
    expect((await call(stack.client, "edit_file", { path: "/etc/hostname", edits: [{ old_text: "a", new_text: "b" }] })).text).toContain("Access denied");
  });
});

describe("search_files", () => {
  const tree = () => at("tree");

  beforeAll(() => {
    for (let d = 0; d < 100; d++) {
      fs.mkdirSync(path.join(tree(), `dir${d}`), { recursive: true });
      for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(tree(), `dir${d}`, `file${f}.txt`), f === 7 ? "has a needle here\n" : "hay\n");
    }
    fs.writeFileSync(path.join(tree(), "binary.dat"), Buffer.concat([Buffer.from("needle"), Buffer.from([0, 0, 0])]));
    fs.mkdirSync(path.join(tree(), "loop"));
    fs.symlinkSync("..", path.join(tree(), "loop", "up")); // a symlink loop: never followed
    fs.mkdirSync(path.join(tree(), "node_modules", "pkg"), { recursive: true });
    fs.writeFileSync(path.join(tree(), "node_modules", "pkg", "index.js"), "needle\n");
    fs.mkdirSync(path.join(tree(), ".hidden"));
    fs.writeFileSync(path.join(tree(), ".hidden", "secret.txt"), "needle\n");
  });

  test("finds content in a 10,000-file tree within its bounds, skipping binary files, links, node_modules and hidden files", async () => {
    const r = await call(stack.client, "search_files", { path: tree(), content: "needle", max_results: 1000 });
    expect(r.data.matches.length).toBe(100);
    expect(r.data.matches[0]).toEqual({ file: "dir0/file7.txt", line: 1, text: "has a needle here" });
    expect(r.data).toMatchObject({ files_visited: 10_001, skipped_binary: 1, truncated: false, truncated_reason: null });
    expect(r.data.matches.some((m: any) => m.file.includes("node_modules") || m.file.includes(".hidden") || m.file.startsWith("loop"))).toBe(false);
    expect(resultSize(r)).toBeLessThan(100_000);
  });

  test("stops at max_results and says so", async () => {
    const r = await call(stack.client, "search_files", { path: tree(), content: "needle", max_results: 5 });
    expect(r.data).toMatchObject({ truncated: true, truncated_reason: "max_results" });
    expect(r.data.matches.length).toBe(5);
  });

  test("matches names by glob, and can include hidden files", async () => {
    const byName = await call(stack.client, "search_files", { path: tree(), pattern: "dir1/file1?.txt" });
    expect(byName.data.matches.map((m: any) => m.file)).toEqual(Array.from({ length: 10 }, (_, i) => `dir1/file1${i}.txt`));
    const hidden = await call(stack.client, "search_files", { path: tree(), pattern: "**/secret.txt", include_hidden: true });
    expect(hidden.data.matches.map((m: any) => m.file)).toEqual([".hidden/secret.txt"]);
  });

  test("an invalid regular expression, or neither pattern nor content, is a clear error", async () => {
    expect((await call(stack.client, "search_files", { path: tree(), content: "(unclosed" })).text).toContain("not a valid regular expression");
    expect((await call(stack.client, "search_files", { path: tree() })).text).toContain("Give pattern");
  });

  test("invalid regular expressions leave no descriptor open on the agent (found by review: one leaked per call)", async () => {
    const openFds = () => fs.readdirSync(`/proc/${stack.agent.proc.pid}/fd`).length;
    const before = openFds();
    for (let i = 0; i < 50; i++) expect((await call(stack.client, "search_files", { path: root, content: "(unclosed" })).isError).toBe(true);
    expect(openFds()).toBeLessThan(before + 10); // a few may come and go with the socket; 50 would be the leak
  });

  test("a catastrophic regular expression is stopped by the time limit while the agent stays responsive", async () => {
    // JSC gives up on one line after ~0.5 s of backtracking, so it takes many such lines to run for minutes.
    fs.writeFileSync(at("redos.txt"), `${"a".repeat(64)}!\n`.repeat(60));
    const searching = call(stack.client, "search_files", { path: root, pattern: "redos.txt", content: "^(a+)+$" });
    await Bun.sleep(500);
    const status = await call(stack.client, "check_agent_status");
    expect(status.data.machines[0].round_trip_ms).toBeLessThan(1_000);
    const r = await searching;
    expect(r.data).toMatchObject({ truncated: true, truncated_reason: "time" });
    expect(r.data.elapsed_ms).toBeLessThan(12_000);
  }, 20_000);
});

describe("file_info, list_directory depth, read_file tail", () => {
  test("file_info reports type, size, mode, owner, times and line count; a symlink says where it leads", async () => {
    fs.writeFileSync(at("info.txt"), "1\n2\n3");
    fs.chmodSync(at("info.txt"), 0o640);
    fs.symlinkSync("info.txt", at("info-link"));
    const r = await call(stack.client, "file_info", { path: at("info.txt") });
    expect(r.data).toMatchObject({ type: "file", size: 5, mode: "0640", permissions: "-rw-r-----", line_count: 3, binary: false, symlink_target: null });
    expect(r.data.owner).toBeTruthy();
    const link = await call(stack.client, "file_info", { path: at("info-link") });
    expect(link.data).toMatchObject({ type: "symlink", symlink_target: "info.txt", resolved_path: at("info.txt") });
    const dir = await call(stack.client, "file_info", { path: root });
    expect(dir.data).toMatchObject({ type: "dir", line_count: null, binary: null });
  });

  test("list_directory descends to the depth asked and hides dot entries unless asked", async () => {
    fs.mkdirSync(at("deep", "a", "b"), { recursive: true });
    fs.writeFileSync(at("deep", "a", "b", "c.txt"), "");
    fs.writeFileSync(at("deep", ".env"), "");
    const one = await call(stack.client, "list_directory", { path: at("deep") });
    expect(one.data.entries.map((e: any) => e.name)).toEqual(["a"]);
    expect(one.data.hidden_skipped).toBe(1);
    const three = await call(stack.client, "list_directory", { path: at("deep"), depth: 3, include_hidden: true });
    expect(three.data.entries.map((e: any) => e.name)).toEqual([".env", "a", "a/b", "a/b/c.txt"]);
  });

  test("read_file with tail returns the last lines, numbered", async () => {
    fs.writeFileSync(at("log.txt"), Array.from({ length: 1000 }, (_, i) => `entry ${i + 1}\n`).join(""));
    const r = await call(stack.client, "read_file", { path: at("log.txt"), tail: 3 });
    expect(r.data).toMatchObject({ content: "entry 998\nentry 999\nentry 1000\n", offset: 998, returned: 3, total_lines: 1000 });
    const both = await call(stack.client, "read_file", { path: at("log.txt"), tail: 3, offset: 2 });
    expect(both.text).toContain("offset or tail, not both");
  });
});
