// The symlink-swap race (research/security.md §1.3 and §4.5) against the real agent: a child process flips
// `root/flip` between a real directory inside the root and a symlink to a directory outside it, as fast as it can,
// while the file tools read, write, edit, list, search and describe through it for a few seconds. A check-then-use
// agent loses this race often (gstack PR #1420 measured 22% of reads); ours must lose it never: no outside content
// or name in any answer, and the outside directory byte for byte as it was.

import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call, type ToolCall } from "../helpers/tools.ts";
import { snapshot } from "../helpers/snapshot.ts";

// Real processes on a busy machine take longer than bun's default 5 s per test (the setting is per file).
setDefaultTimeout(60_000);

/** How long the flipper and the callers race. */
const RACE_MS = 4_000;
/** Tool calls kept in flight at once during the race. */
const CONCURRENCY = 8;

const SECRET = "OUTSIDE-SECRET-7f3a9c: must never reach a client";
const INSIDE = "INSIDE\n";
const tree = tempDir("cr-race-");
const root = path.join(tree.path, "root");
const outside = path.join(tree.path, "outside");
const flip = path.join(root, "flip");

beforeAll(() => {
  fs.mkdirSync(path.join(root, "real"), { recursive: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(root, "real", "file"), INSIDE);
  fs.writeFileSync(path.join(outside, "file"), SECRET);
  fs.writeFileSync(path.join(outside, "outside-only-entry"), SECRET);
  // A directory of the same name on both sides, told apart by its mode: file_info must never describe the outer one.
  fs.mkdirSync(path.join(root, "real", "sub"), { mode: 0o755 });
  fs.mkdirSync(path.join(outside, "sub"), { mode: 0o700 });
  fs.chmodSync(path.join(root, "real", "sub"), 0o755);
  fs.chmodSync(path.join(outside, "sub"), 0o700);
  fs.symlinkSync(outside, path.join(root, "link"));
});

const stack = useStack({
  relay: { env: { CLIENT_CALLS_PER_MINUTE: "0" } }, // thousands of calls a minute, on purpose
  agent: { machine: "racer", roots: [root] },
  client: "streamable-http",
});

afterAll(() => {
  tree[Symbol.dispose]();
});

/** A child process that renames `real` and `link` in and out of `flip` until the deadline: at every moment `flip`
 *  is a real directory inside the root, a symlink to the outside directory, or absent. A write that lands while a
 *  name is absent makes a new directory there (write_file creates parents): a write to `flip` while it is away, or
 *  to `real` when the path resolved while the directory was briefly under that name. Both are inside the root; the
 *  flipper removes such a stray directory and goes on. Returns the number of flips made. */
function startFlipper(ms: number): Promise<number> {
  const script = `
    const fs = require("node:fs");
    const [real, link, flip, ms] = process.argv.slice(1);
    const move = (from, to) => {
      for (let attempt = 0; ; attempt++) {
        try { return fs.renameSync(from, to); }
        catch (e) {
          if (attempt === 1000) throw e;
          try { fs.rmSync(to, { recursive: true, force: true }); } catch {} // the agent may be writing into it
        }
      }
    };
    const deadline = Date.now() + Number(ms);
    let flips = 0;
    while (Date.now() < deadline) {
      move(real, flip); move(flip, real);
      move(link, flip); move(flip, link);
      flips += 2;
    }
    console.log(flips);`;
  const proc = Bun.spawn([process.execPath, "-e", script, path.join(root, "real"), path.join(root, "link"), flip, String(ms)], { stdout: "pipe", stderr: "pipe" });
  return proc.exited.then(async (code) => {
    if (code !== 0) throw new Error(`the flipper failed with ${code}: ${await new Response(proc.stderr).text()}`);
    return Number(await new Response(proc.stdout).text());
  });
}

/** One kind of call through `flip`, and what in its answer would prove an escape. */
interface Probe {
  name: string;
  call: (i: number) => Promise<ToolCall>;
  escaped: (r: ToolCall) => boolean;
}

const leaks = (r: ToolCall) => JSON.stringify(r.result).includes("OUTSIDE-SECRET") || JSON.stringify(r.result).includes("outside-only-entry");
const PROBES: Probe[] = [
  { name: "read_file", call: () => call(stack.client, "read_file", { path: `${flip}/file` }), escaped: leaks },
  { name: "read_file (tail)", call: () => call(stack.client, "read_file", { path: `${flip}/file`, tail: 5 }), escaped: leaks },
  { name: "write_file (new file)", call: (i) => call(stack.client, "write_file", { path: `${flip}/new-${i}`, content: "written" }), escaped: leaks },
  { name: "write_file (replace)", call: () => call(stack.client, "write_file", { path: `${flip}/file`, content: INSIDE }), escaped: leaks },
  { name: "write_file (append)", call: () => call(stack.client, "write_file", { path: `${flip}/file`, content: "", append: true }), escaped: leaks },
  { name: "write_file (new directories)", call: (i) => call(stack.client, "write_file", { path: `${flip}/d-${i}/e/new`, content: "written" }), escaped: leaks },
  {
    // Toggles INSIDE and INS1DE, so edits succeed inside and each one writes; one that wrote outside would show
    // in the snapshot of the outside directory.
    name: "edit_file",
    call: (i) => call(stack.client, "edit_file", { path: `${flip}/file`, edits: [i % 2 ? { old_text: "INS1DE", new_text: "INSIDE" } : { old_text: "INSIDE", new_text: "INS1DE" }] }),
    escaped: leaks,
  },
  { name: "list_directory", call: () => call(stack.client, "list_directory", { path: flip }), escaped: leaks },
  { name: "list_directory (depth 3 from the root)", call: () => call(stack.client, "list_directory", { path: root, depth: 3 }), escaped: leaks },
  { name: "search_files", call: () => call(stack.client, "search_files", { path: root, content: "SECRET|INSIDE", include_hidden: true }), escaped: leaks },
  {
    name: "file_info",
    call: () => call(stack.client, "file_info", { path: `${flip}/file` }),
    escaped: (r) => leaks(r) || (!r.isError && r.data.size === SECRET.length),
  },
  {
    name: "file_info (directory)",
    call: () => call(stack.client, "file_info", { path: `${flip}/sub` }),
    escaped: (r) => leaks(r) || (!r.isError && r.data.mode === "0700"),
  },
];

interface Tally {
  tried: number;
  succeeded: number;
  escaped: number;
}

/** Runs `probes` round-robin, CONCURRENCY at a time, while the flipper flips for `ms`; returns what happened. */
async function race(probes: Probe[], ms: number) {
  const tally = new Map<string, Tally>(probes.map((p) => [p.name, { tried: 0, succeeded: 0, escaped: 0 }]));
  const escapes: string[] = [];
  const flipper = startFlipper(ms);
  const deadline = Date.now() + ms;
  let i = 0;
  const worker = async () => {
    while (Date.now() < deadline) {
      const n = i++;
      const probe = probes[n % probes.length]!;
      const r = await probe.call(n);
      const count = tally.get(probe.name)!;
      count.tried++;
      if (!r.isError) count.succeeded++;
      if (probe.escaped(r)) {
        count.escaped++;
        escapes.push(`${probe.name}: ${JSON.stringify(r.result).slice(0, 400)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const flips = await flipper;
  const tried = [...tally.values()].reduce((sum, t) => sum + t.tried, 0);
  console.log(`race: ${flips} flips, ${tried} calls, ${escapes.length} escapes`);
  for (const [name, t] of tally) console.log(`  ${name}: ${t.tried} tried, ${t.succeeded} succeeded, ${t.escaped} escaped`);
  return { flips, tally, escapes };
}

test(`${RACE_MS / 1000} s of a directory flipping between inside and a symlink to outside: zero escapes`, async () => {
  const before = snapshot(outside);
  const { flips, tally, escapes } = await race(PROBES, RACE_MS);
  expect(escapes).toEqual([]);
  expect(snapshot(outside)).toBe(before);
  expect(fs.readFileSync(path.join(root, "real", "file"), "utf8")).toMatch(/^INS[I1]DE\n$/);
  // The race was real: thousands of flips, every kind of call tried many times, and calls both got through
  // (the directory was real) and were refused (it was the link, or absent).
  expect(flips).toBeGreaterThan(1_000);
  for (const [name, t] of tally) expect({ name, tried: t.tried > 5 }).toEqual({ name, tried: true });
  const reads = tally.get("read_file")!;
  expect(reads.succeeded).toBeGreaterThan(0);
  expect(reads.succeeded).toBeLessThan(reads.tried);
});

test("list_directory with depth never enters a directory that was swapped for a symlink after it was listed", async () => {
  const { escapes, tally } = await race(PROBES.filter((p) => p.name.startsWith("list_directory (depth")), RACE_MS / 2);
  expect(escapes).toEqual([]);
  expect([...tally.values()][0]!.tried).toBeGreaterThan(20);
});

test("file_info never describes the directory a swapped-in symlink leads to", async () => {
  const { escapes, tally } = await race(PROBES.filter((p) => p.name === "file_info (directory)"), RACE_MS / 2);
  expect(escapes).toEqual([]);
  expect([...tally.values()][0]!.tried).toBeGreaterThan(20);
});

test("with the flipper stopped, the same calls through the real directory succeed and through the link are denied", async () => {
  fs.rmSync(flip, { recursive: true, force: true }); // made by a write that landed while it was absent
  fs.renameSync(path.join(root, "real"), flip);
  const read = await call(stack.client, "read_file", { path: `${flip}/file` });
  expect(read.data.content).toMatch(/^INS[I1]DE\n$/);
  fs.renameSync(flip, path.join(root, "real"));
  fs.renameSync(path.join(root, "link"), flip);
  const denied = await call(stack.client, "read_file", { path: `${flip}/file` });
  expect(denied.isError).toBe(true);
  expect(denied.text).toContain("Access denied");
  fs.renameSync(flip, path.join(root, "link"));
});
