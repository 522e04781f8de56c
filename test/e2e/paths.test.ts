// The path policy over the wire: every escape of the core issue (and research/security.md §1, §4.5) is refused by
// the real agent with a clear error and no side effect. The pure policy has its own property tests in test/unit.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";
import { expectRefusedLeavingTreeUnchanged } from "../helpers/snapshot.ts";

const tree = tempDir("cr-paths-");
const base = tree.path;
const root = path.join(base, "root");
const outside = path.join(base, "outside");

beforeAll(() => {
  fs.mkdirSync(path.join(root, "a"), { recursive: true });
  fs.mkdirSync(outside);
  fs.mkdirSync(path.join(base, "rootx"));
  fs.writeFileSync(path.join(outside, "secret"), "outside secret\n");
  fs.writeFileSync(path.join(base, "rootx", "secret"), "sibling secret\n");
  fs.symlinkSync(path.join(outside, "secret"), path.join(root, "link-to-secret"));
  fs.symlinkSync(outside, path.join(root, "link-to-outside-dir"));
  fs.symlinkSync(path.join(outside, "not-yet"), path.join(root, "dangling"));
  fs.symlinkSync(path.join(root, "a", "not-yet"), path.join(root, "dangling-inside"));
  fs.symlinkSync("loop-b", path.join(root, "loop-a"));
  fs.symlinkSync("loop-a", path.join(root, "loop-b"));
  fs.symlinkSync("/dev/zero", path.join(root, "zero"));
  Bun.spawnSync(["mkfifo", path.join(root, "fifo")]);
});

const stack = useStack({ agent: { machine: "jail", roots: [root] }, client: "streamable-http" });

afterAll(() => {
  tree[Symbol.dispose]();
});


const expectDenied = (tool: string, args: Record<string, unknown>, message: RegExp) => expectRefusedLeavingTreeUnchanged(stack.client, base, tool, args, message);

const DENIED = /Access denied: .* is outside the allowed roots/;

describe("reads that must be refused", () => {
  test("a ../ escape", () => expectDenied("read_file", { path: `${root}/a/../../outside/secret` }, DENIED));
  test("a sibling that shares the root's prefix", () => expectDenied("read_file", { path: `${base}/rootx/secret` }, DENIED));
  test("a symlink inside the root that points outside", () => expectDenied("read_file", { path: `${root}/link-to-secret` }, DENIED));
  test("a file under a symlinked directory that points outside", () =>
    expectDenied("read_file", { path: `${root}/link-to-outside-dir/secret` }, DENIED));
  test("listing a symlinked directory that points outside", () => expectDenied("list_directory", { path: `${root}/link-to-outside-dir` }, DENIED));
  test("a missing file outside is denied, not reported missing", () => expectDenied("read_file", { path: `${outside}/nothing` }, DENIED));
  test("a symlink loop", () => expectDenied("read_file", { path: `${root}/loop-a` }, /symlink loop/));
  test("a FIFO, without blocking", () => expectDenied("read_file", { path: `${root}/fifo` }, /not a regular file/));
  test("a symlink to a device is outside the roots", () => expectDenied("read_file", { path: `${root}/zero` }, DENIED));
  test("a relative path", () => expectDenied("read_file", { path: "a/b" }, /relative: give an absolute path/));
  test("an empty path", () => expectDenied("read_file", { path: "" }, /path/));
  test("a NUL byte", () => expectDenied("read_file", { path: `${root}/a\0b` }, /NUL/));
  test("~otheruser", () => expectDenied("read_file", { path: "~root/.bashrc" }, /only ~/));
  test("a directory where a file is expected", () => expectDenied("read_file", { path: `${root}/a` }, /is a directory: use list_directory/));
});

describe("writes that must be refused, leaving nothing behind", () => {
  test("a ../ escape", () => expectDenied("write_file", { path: `${root}/../outside/new`, content: "x" }, DENIED));
  test("a sibling that shares the root's prefix", () => expectDenied("write_file", { path: `${base}/rootx/new`, content: "x" }, DENIED));
  test("through a symlink that points outside", () => expectDenied("write_file", { path: `${root}/link-to-secret`, content: "pwned" }, DENIED));
  test("into a symlinked parent directory that points outside", () =>
    expectDenied("write_file", { path: `${root}/link-to-outside-dir/new`, content: "x" }, DENIED));
  test("a new directory chain under a symlinked parent that points outside", () =>
    expectDenied("write_file", { path: `${root}/link-to-outside-dir/d1/d2/new`, content: "x" }, DENIED));
  test("through a dangling symlink pointing outside (denied as if its target existed)", () =>
    expectDenied("write_file", { path: `${root}/dangling`, content: "x" }, DENIED));
  test("through a dangling symlink pointing inside", () =>
    expectDenied("write_file", { path: `${root}/dangling-inside`, content: "x" }, /does not exist; refusing to follow/));
  test("onto a FIFO", () => expectDenied("write_file", { path: `${root}/fifo`, content: "x" }, /not a regular file/));
  test("invalid base64", () => expectDenied("write_file", { path: `${root}/b64`, content: "not base64!", encoding: "base64" }, /not valid base64/));
});

describe("what stays allowed", () => {
  test("a symlink inside the root to a file inside the root is followed, and the link kept", async () => {
    fs.writeFileSync(path.join(root, "a", "real.txt"), "v1");
    fs.symlinkSync("a/real.txt", path.join(root, "inner-link"));
    const w = await call(stack.client, "write_file", { path: `${root}/inner-link`, content: "v2" });
    expect(w.data.path).toBe(path.join(root, "a", "real.txt"));
    expect(fs.lstatSync(path.join(root, "inner-link")).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(path.join(root, "a", "real.txt"), "utf8")).toBe("v2");
  });

  test("a replaced file never shows half-written content and leaves no temp file", async () => {
    const file = path.join(root, "atomic.txt");
    const big = "z".repeat(2_000_000);
    fs.writeFileSync(file, "old");
    let sawPartial = false;
    const watcher = setInterval(() => {
      const now = fs.readFileSync(file, "utf8");
      if (now !== "old" && now !== big) sawPartial = true;
    }, 1);
    await call(stack.client, "write_file", { path: file, content: big });
    clearInterval(watcher);
    expect(sawPartial).toBe(false);
    expect(fs.readdirSync(root).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  // Found by review: append copied the file and renamed the copy over it, so another program's later appends (to the
  // file it had open) were lost, and a hard link was split into two files.
  test("append writes in place: another writer's later appends are kept, and a hard link stays one file", async () => {
    const file = path.join(root, "shared.log");
    fs.writeFileSync(file, "first\n", { mode: 0o640 });
    fs.linkSync(file, path.join(root, "shared-link.log"));
    const inode = fs.statSync(file).ino;
    const writer = fs.openSync(file, "a"); // another program, keeping its log open
    try {
      const r = await call(stack.client, "write_file", { path: file, content: "from the tool\n", append: true });
      expect(r.data).toMatchObject({ bytes_written: 14, size: 20, created: false });
      fs.writeSync(writer, "later\n");
    } finally {
      fs.closeSync(writer);
    }
    expect(fs.readFileSync(file, "utf8")).toBe("first\nfrom the tool\nlater\n");
    expect(fs.readFileSync(path.join(root, "shared-link.log"), "utf8")).toBe("first\nfrom the tool\nlater\n");
    expect(fs.statSync(file)).toMatchObject({ ino: inode, nlink: 2, mode: expect.any(Number) });
    expect(fs.statSync(file).mode & 0o777).toBe(0o640);
    expect(fs.readdirSync(root).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  test("append to a file that does not exist yet creates it", async () => {
    const r = await call(stack.client, "write_file", { path: `${root}/a/new-by-append.txt`, content: "one\n", append: true });
    expect(r.data).toMatchObject({ bytes_written: 4, size: 4, created: true });
    expect(fs.readFileSync(path.join(root, "a", "new-by-append.txt"), "utf8")).toBe("one\n");
  });

  test("content over the per-call limit is refused with how to proceed", async () => {
    const r = await call(stack.client, "write_file", { path: `${root}/huge`, content: "x".repeat(3 * 1024 * 1024 + 1) });
    expect(r.isError).toBe(true);
    expect(r.text).toMatch(/append/);
    expect(fs.existsSync(path.join(root, "huge"))).toBe(false);
  });
});
