// Path tricks against the file tools (research/security.md §4.5, "Paths"), on a real agent whose only root is a
// fresh directory with an `outside` directory and prefix-sharing siblings next to it. Every trick gets a clear error
// and changes nothing outside, or (for the ones that stay inside) does exactly what the path says. The
// symlink-swap race is in race.test.ts.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NEUTRAL_CWD, OutputLog, ROOT, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";
import { expectRefusedLeavingTreeUnchanged, snapshot } from "../helpers/snapshot.ts";

const SECRET = "outside secret\n";
const tree = tempDir("cr-hpaths-");
const base = tree.path;
const root = path.join(base, "root");
const outside = path.join(base, "outside");
const SIBLINGS = ["root2", "rootx", "root ", "root'", "root.bak", "root\t"];
const isRoot = process.getuid?.() === 0;

beforeAll(() => {
  fs.mkdirSync(path.join(root, "dir"), { recursive: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(root, "in.txt"), "inside\n");
  fs.writeFileSync(path.join(outside, "secret"), SECRET);
  for (const sibling of SIBLINGS) {
    fs.mkdirSync(path.join(base, sibling));
    fs.writeFileSync(path.join(base, sibling, "secret"), SECRET);
  }
  const link = (target: string, name: string) => fs.symlinkSync(target, path.join(root, name));
  link("/etc/shadow", "shadow");
  link(path.join(root, "shadow"), "link-to-shadow-link");
  link(path.join(root, "in.txt"), "in-link");
  link(path.join(root, "in-link"), "in-link-link");
  link(outside, "outside-dir");
  link(path.join(outside, "not-yet"), "dangling-out");
  link(path.join(root, "dir", "not-yet"), "dangling-in");
  link("loop-b", "loop-a");
  link("loop-a", "loop-b");
  link("self", "self");
  link("/proc/self/environ", "environ");
  link("/proc/self/fd/0", "fd0");
  link("/dev/zero", "zero");
  link("/dev/urandom", "urandom");
  link("/dev/tty", "tty");
  fs.linkSync(path.join(outside, "secret"), path.join(root, "hardlink-to-secret"));
  Bun.spawnSync(["mkfifo", path.join(root, "fifo")]);
});

const stack = useStack({ agent: { machine: "paths", roots: [root] }, client: "streamable-http" });

beforeAll(() => {
  fs.symlinkSync(`/proc/${stack.agent.proc.pid}/mem`, path.join(root, "agent-mem"));
});

afterAll(() => {
  tree[Symbol.dispose]();
});


/** Expects a tool error matching `message` that leaks nothing from outside, and that nothing in the whole tree changed. */
async function refused(tool: string, args: Record<string, unknown>, message: RegExp) {
  const text = await expectRefusedLeavingTreeUnchanged(stack.client, base, tool, args, message);
  expect(text).not.toContain("outside secret");
}

const DENIED = /^Access denied: '.*' is outside the allowed roots \(/;

describe("escapes by name", () => {
  test("../ out of the root", () => refused("read_file", { path: `${root}/dir/../../outside/secret` }, DENIED));
  test("../ out of the root, writing", () => refused("write_file", { path: `${root}/../outside/new`, content: "x" }, DENIED));
  for (const sibling of SIBLINGS) {
    test(`a sibling sharing the root's prefix: ${JSON.stringify(sibling)}`, async () => {
      await refused("read_file", { path: `${base}/${sibling}/secret` }, DENIED);
      await refused("write_file", { path: `${base}/${sibling}/new`, content: "x" }, DENIED);
      await refused("list_directory", { path: `${base}/${sibling}` }, DENIED);
    });
  }
  test("~ (home is not an allowed root here)", () => refused("read_file", { path: "~/.bashrc" }, DENIED));
  test("~otheruser", () => refused("read_file", { path: "~root/.bashrc" }, /only ~ \(this user's home\) is supported/));
  test("a relative path", () => refused("read_file", { path: "in.txt" }, /is relative: give an absolute path/));
  test("an empty path", () => refused("read_file", { path: "" }, /Invalid arguments.*path/));
  test("a NUL byte", () => refused("write_file", { path: `${root}/a\u0000/../../outside/secret`, content: "x" }, /NUL byte/));
  test("a path over 4096 characters", () => refused("read_file", { path: `${root}/${"a/".repeat(2100)}` }, /Invalid arguments.*Too big/));
  test("a name over 255 bytes", async () => {
    await refused("write_file", { path: `${root}/${"n".repeat(256)}`, content: "x" }, /ENAMETOOLONG|too long/);
    await refused("read_file", { path: `${root}/${"é".repeat(128)}` }, /ENAMETOOLONG|too long/);
  });
  test("/proc/self/environ by its own name", () => refused("read_file", { path: "/proc/self/environ" }, DENIED));
  test("/proc/self/cwd leads to the agent's working directory, outside", () => refused("read_file", { path: "/proc/self/cwd/x" }, DENIED));
});

describe("names that stay inside and mean what they say", () => {
  test("//root/in.txt is the same file (a leading double slash is one slash)", async () => {
    const r = await call(stack.client, "read_file", { path: `/${root}/in.txt` });
    expect(r.data).toMatchObject({ path: path.join(root, "in.txt"), content: "inside\n" });
  });

  test("a trailing /. and /./ are normalized away", async () => {
    expect((await call(stack.client, "list_directory", { path: `${root}/dir/.` })).data.path).toBe(path.join(root, "dir"));
    expect((await call(stack.client, "read_file", { path: `${root}/./in.txt` })).data.content).toBe("inside\n");
  });

  test("%2e%2e%2f stays literal: a file of that name inside the root, nothing outside", async () => {
    const before = snapshot(outside);
    const w = await call(stack.client, "write_file", { path: `${root}/%2e%2e%2f%2e%2e%2foutside%2fsecret`, content: "literal" });
    expect(w.data.path).toBe(path.join(root, "%2e%2e%2f%2e%2e%2foutside%2fsecret"));
    expect(fs.readFileSync(path.join(root, "%2e%2e%2f%2e%2e%2foutside%2fsecret"), "utf8")).toBe("literal");
    expect(snapshot(outside)).toBe(before);
  });

  test("NFC and NFD spellings of a name are two different files: nothing is normalized", async () => {
    const nfc = "caf\u00e9.txt";
    const nfd = "cafe\u0301.txt";
    await call(stack.client, "write_file", { path: `${root}/${nfc}`, content: "nfc" });
    const missing = await call(stack.client, "read_file", { path: `${root}/${nfd}` });
    expect(missing.isError).toBe(true);
    expect(missing.text).toContain("does not exist");
    await call(stack.client, "write_file", { path: `${root}/${nfd}`, content: "nfd" });
    expect(fs.readFileSync(path.join(root, nfc), "utf8")).toBe("nfc");
    expect(fs.readFileSync(path.join(root, nfd), "utf8")).toBe("nfd");
  });

  test("RTL-override and zero-width characters in a name are kept and listed byte for byte", async () => {
    const names = ["invoice\u202Efdp.exe", "zero\u200Bwidth", "joiner\u200D\uFEFF"];
    for (const name of names) expect((await call(stack.client, "write_file", { path: `${root}/dir/${name}`, content: name })).isError).toBe(false);
    const listing = await call(stack.client, "list_directory", { path: `${root}/dir` });
    expect(listing.data.entries.map((e: { name: string }) => e.name).sort()).toEqual([...names].sort());
    for (const name of names) expect(fs.readFileSync(path.join(root, "dir", name), "utf8")).toBe(name);
  });
});

describe("symlinks", () => {
  test("to /etc/shadow", () => refused("read_file", { path: `${root}/shadow` }, DENIED));
  test("to a symlink to /etc/shadow", () => refused("read_file", { path: `${root}/link-to-shadow-link` }, DENIED));
  test("a chain of two links inside the root is followed", async () => {
    expect((await call(stack.client, "read_file", { path: `${root}/in-link-link` })).data).toMatchObject({ path: path.join(root, "in.txt"), content: "inside\n" });
  });
  test("a loop of two links", () => refused("read_file", { path: `${root}/loop-a` }, /symlink loop/));
  test("a link to itself", () => refused("write_file", { path: `${root}/self`, content: "x" }, /symlink loop/));
  test("a dangling link to outside, on write", () => refused("write_file", { path: `${root}/dangling-out`, content: "x" }, DENIED));
  test("a dangling link inside, on write (never creates the target)", () =>
    refused("write_file", { path: `${root}/dangling-in`, content: "x" }, /does not exist; refusing to follow it/));
  test("a symlinked parent directory to outside: read, write, list, search, info", async () => {
    await refused("read_file", { path: `${root}/outside-dir/secret` }, DENIED);
    await refused("write_file", { path: `${root}/outside-dir/new`, content: "x" }, DENIED);
    await refused("write_file", { path: `${root}/outside-dir/deep/er/new`, content: "x" }, DENIED);
    await refused("list_directory", { path: `${root}/outside-dir` }, DENIED);
    await refused("search_files", { path: `${root}/outside-dir`, content: "secret" }, DENIED);
    await refused("file_info", { path: `${root}/outside-dir/secret` }, DENIED);
    await refused("edit_file", { path: `${root}/outside-dir/secret`, edits: [{ old_text: "outside", new_text: "pwned" }] }, DENIED);
  });
  test("a search from the root never follows the link out", async () => {
    const r = await call(stack.client, "search_files", { path: root, content: "outside secret", include_hidden: true });
    expect(r.data.matches.map((m: { file: string }) => m.file)).toEqual(["hardlink-to-secret"]); // see the hard link below
  });
  test("/proc/self/environ through a link in the root", () => refused("read_file", { path: `${root}/environ` }, DENIED));
  test("/proc/self/fd/0 through a link in the root", () => refused("read_file", { path: `${root}/fd0` }, DENIED));
  test("/proc/<agent>/mem through a link in the root", () => refused("read_file", { path: `${root}/agent-mem` }, DENIED));
  test("/dev/zero, /dev/urandom and /dev/tty through links in the root", async () => {
    for (const name of ["zero", "urandom", "tty"]) await refused("read_file", { path: `${root}/${name}` }, DENIED);
  });
  test("writing onto a link that points outside replaces nothing, the link included", async () => {
    await refused("write_file", { path: `${root}/shadow`, content: "x" }, DENIED);
    expect(fs.readlinkSync(path.join(root, "shadow"))).toBe("/etc/shadow");
  });
});

describe("special and odd files", () => {
  test("a FIFO is refused without blocking, to read and to write", async () => {
    await refused("read_file", { path: `${root}/fifo` }, /not a regular file/);
    await refused("write_file", { path: `${root}/fifo`, content: "x" }, /not a regular file/);
  });

  test.skipIf(!isRoot)("a device node inside the root is refused (skipped unless root: mknod needs it)", async () => {
    Bun.spawnSync(["mknod", path.join(root, "null-device"), "c", "1", "3"]);
    await refused("read_file", { path: `${root}/null-device` }, /not a regular file/);
    await refused("write_file", { path: `${root}/null-device`, content: "x" }, /not a regular file/);
    fs.rmSync(path.join(root, "null-device"));
  });

  test("a directory where a file is expected, and a file where a directory is", async () => {
    await refused("read_file", { path: `${root}/dir` }, /is a directory: use list_directory/);
    await refused("write_file", { path: `${root}/dir`, content: "x" }, /exists and is not a regular file/);
    await refused("list_directory", { path: `${root}/in.txt` }, /is not a directory: use read_file/);
    await refused("write_file", { path: `${root}/in.txt/child`, content: "x" }, /not a directory|ENOTDIR|Cannot/);
  });

  test("a sparse 8 GiB file answers at once with its first bytes as base64, and its size", async () => {
    const file = path.join(root, "sparse");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 8 * 1024 ** 3);
    const r = await call(stack.client, "read_file", { path: file });
    expect(r.data).toMatchObject({ encoding: "base64", size: 8 * 1024 ** 3, offset: 0, returned: 32 * 1024, truncated: true, next_offset: 32 * 1024 });
    expect(Buffer.from(r.data.content, "base64").equals(Buffer.alloc(32 * 1024))).toBe(true);
    fs.rmSync(file);
  });

  test("the tail of an 8 GiB sparse log is its last lines, read from the end", async () => {
    const file = path.join(root, "huge.log");
    const fd = fs.openSync(file, "w");
    fs.writeSync(fd, "first line\n", 0);
    fs.writeSync(fd, "\nline before last\nlast line\n", 8 * 1024 ** 3 - 28);
    fs.closeSync(fd);
    const r = await call(stack.client, "read_file", { path: file, tail: 2, encoding: "utf8" });
    expect(r.data).toMatchObject({ encoding: "utf8", content: "line before last\nlast line\n", returned: 2, total_lines: null });
    fs.rmSync(file);
  });

  // Found by review: with an offset past the end, the whole file was read in one blocking call (an 8 GiB file held
  // the agent for longer than the relay's 25 s heartbeat limit, so the machine was dropped).
  test("an offset past the end of an 8 GiB file: other calls are answered meanwhile, and the read stops at its 10 s bound saying what to do", async () => {
    const file = path.join(root, "huge.txt");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 8 * 1024 ** 3);
    try {
      const started = Date.now();
      const far = call(stack.client, "read_file", { path: file, offset: 1_000_000_000, encoding: "utf8" });
      await Bun.sleep(1_000);
      const askedAt = Date.now();
      const meanwhile = await call(stack.client, "read_file", { path: `${root}/in.txt` });
      const meanwhileMs = Date.now() - askedAt;
      const r = await far;
      const farMs = Date.now() - started;
      console.log(`read_file far past the end of 8 GiB: answered after ${farMs} ms; a read meanwhile took ${meanwhileMs} ms`);
      expect(meanwhile.data.content).toBe("inside\n");
      expect(meanwhileMs).toBeLessThan(1_000);
      expect([r.isError, r.text]).toEqual([true, expect.stringMatching(/^'.*huge\.txt' is too big to reach line 1000000000 by counting: 0 lines were read \(\d+ of 8589934592 bytes\) in 10 s\. Read its end with tail/)]);
      expect(farMs).toBeLessThan(15_000);
    } finally {
      fs.rmSync(file);
    }
  });

  // Found by review: the tail of a file whose last line was over the result's budget (~44k characters) was empty.
  test("the tail of a file whose last line is longer than an answer is the end of that line, and says so", async () => {
    const file = path.join(root, "long-line.log");
    fs.writeFileSync(file, `first\n${"a".repeat(50_000)}${"z".repeat(10)}\n`);
    const r = await call(stack.client, "read_file", { path: file, tail: 1 });
    expect(r.data).toMatchObject({ returned: 1, offset: 2, total_lines: 2, truncated: true, next_offset: null });
    expect(r.data.content).toMatch(/^a{20000,}z{10}\n$/);
    expect(r.text).toContain("[the line is too long for one answer: only its end is shown");
    // Longer than the 4 MiB a tail looks back, in two-byte characters: the window starts inside one, which is skipped.
    fs.writeFileSync(file, `first!\n${"é".repeat(3_000_000)}`);
    const wide = await call(stack.client, "read_file", { path: file, tail: 1 });
    expect(wide.data).toMatchObject({ returned: 1, truncated: true });
    expect(wide.data.content).toMatch(/^é{20000,}$/);
    fs.rmSync(file);
  });

  test("binary and invalid UTF-8 come back as base64, byte for byte", async () => {
    const bytes = Buffer.from([0x66, 0x6f, 0xff, 0xfe, 0x00, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
    fs.writeFileSync(path.join(root, "bin"), bytes);
    const r = await call(stack.client, "read_file", { path: `${root}/bin` });
    expect(r.data.encoding).toBe("base64");
    expect(Buffer.from(r.data.content, "base64").equals(bytes)).toBe(true);
    const forced = await call(stack.client, "read_file", { path: `${root}/bin`, encoding: "utf8" });
    expect(forced.isError).toBe(true);
    expect(forced.text).toContain('read it with encoding "base64"');
  });

  test("a hard link to a file outside is read like any file inside: realpath cannot tell (a documented limit)", async () => {
    const r = await call(stack.client, "read_file", { path: `${root}/hardlink-to-secret` });
    expect(r.data.content).toBe(SECRET);
  });

  test("32 concurrent writes to one file: it ends as exactly one of them, and no temp file is left", async () => {
    const file = path.join(root, "contended");
    const contents = Array.from({ length: 32 }, (_, i) => `writer ${i} `.repeat(1000 + i));
    const results = await Promise.all(contents.map((content) => call(stack.client, "write_file", { path: file, content })));
    expect(results.filter((r) => r.isError)).toEqual([]);
    expect(contents).toContain(fs.readFileSync(file, "utf8"));
    expect(fs.readdirSync(root).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });
});

describe("symlinks another user plants in a shared sticky directory (/tmp), followed only by the kernel's protected_symlinks rule", () => {
  // Root only: making a symlink owned by another user (nobody) needs lchown. The agent runs as root, which is where
  // the kernel's rule matters most. Where the kernel's protection is on, it is turned off for these tests (and back
  // on after), so they show the agent refusing on its own.
  const NOBODY = 65534;
  const sysctl = "/proc/sys/fs/protected_symlinks";
  let kernelSetting: string | undefined;
  const shared = path.join(root, "shared");
  const victim = path.join(root, "victim");

  beforeAll(() => {
    if (!isRoot) return;
    kernelSetting = fs.existsSync(sysctl) ? fs.readFileSync(sysctl, "utf8").trim() : undefined;
    if (kernelSetting === "1") fs.writeFileSync(sysctl, "0");
    fs.mkdirSync(shared);
    fs.chmodSync(shared, 0o1777);
    fs.mkdirSync(victim);
    fs.writeFileSync(path.join(victim, "profile"), "the agent user's own file\n");
    const plant = (target: string, name: string, owner: number) => {
      fs.symlinkSync(target, path.join(shared, name));
      fs.lchownSync(path.join(shared, name), owner, owner);
    };
    plant(path.join(victim, "profile"), "planted", NOBODY);
    plant(victim, "planted-dir", NOBODY);
    plant(path.join(victim, "profile"), "mine", 0);
  });

  afterAll(() => {
    if (kernelSetting === "1") fs.writeFileSync(sysctl, "1");
  });

  test.skipIf(!isRoot)("write_file, edit_file and read_file through nobody's link are refused, and the file it points to is unchanged", async () => {
    // The kernel itself follows it now (its protection is off), so only the agent's own rule stands in the way.
    expect(fs.readFileSync(path.join(shared, "planted"), "utf8")).toBe("the agent user's own file\n");
    const FOREIGN = /^Access denied: '.*' goes through .*\/shared\/planted(-dir)?, a symlink another user \(uid 65534\) owns in the shared directory .*\/shared; such links are not followed\.$/;
    await refused("write_file", { path: `${shared}/planted`, content: "pwned\n" }, FOREIGN);
    await refused("write_file", { path: `${shared}/planted`, content: "pwned\n", append: true }, FOREIGN);
    await refused("edit_file", { path: `${shared}/planted`, edits: [{ old_text: "own", new_text: "pwned" }] }, FOREIGN);
    await refused("read_file", { path: `${shared}/planted` }, FOREIGN);
    await refused("write_file", { path: `${shared}/planted-dir/new`, content: "x" }, FOREIGN);
    expect(fs.readdirSync(victim)).toEqual(["profile"]);
  });

  test.skipIf(!isRoot)("the links the kernel's rule allows are followed: the agent user's own, and any link in a directory that is not sticky", async () => {
    const own = await call(stack.client, "read_file", { path: `${shared}/mine` });
    expect(own.data).toMatchObject({ path: path.join(victim, "profile"), content: "the agent user's own file\n" });
    const plain = path.join(root, "dir", "nobodys-link");
    fs.symlinkSync(path.join(victim, "profile"), plain);
    fs.lchownSync(plain, NOBODY, NOBODY);
    expect((await call(stack.client, "read_file", { path: plain })).data.content).toBe("the agent user's own file\n");
    fs.rmSync(plain);
  });

  test.skipIf(!isRoot)("a link owned by the sticky directory's owner is followed", async () => {
    const dir = path.join(root, "nobodys-shared");
    fs.mkdirSync(dir);
    fs.chmodSync(dir, 0o1777);
    fs.chownSync(dir, NOBODY, NOBODY);
    fs.symlinkSync(path.join(victim, "profile"), path.join(dir, "link"));
    fs.lchownSync(path.join(dir, "link"), NOBODY, NOBODY);
    expect((await call(stack.client, "read_file", { path: `${dir}/link` })).data.content).toBe("the agent user's own file\n");
  });
});

describe("files this agent's user cannot read", () => {
  /** An agent that is not root (root reads anything): as root, it runs as nobody through setpriv. */
  async function unprivilegedAgent(ownRoot: string) {
    const uid = isRoot ? 65534 : process.getuid!();
    if (isRoot) fs.chownSync(ownRoot, uid, uid);
    const state = fs.mkdtempSync(path.join(os.tmpdir(), "cr-state-"));
    if (isRoot) fs.chownSync(state, uid, uid);
    const wrapper = isRoot ? ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups"] : [];
    const proc = Bun.spawn([...wrapper, process.execPath, "run", path.join(ROOT, "agent.ts")], {
      cwd: isRoot ? ownRoot : NEUTRAL_CWD,
      env: {
        PATH: process.env.PATH!,
        HOME: ownRoot,
        BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0",
        RELAY_URL: `ws://127.0.0.1:${stack.relay.port}/ws/agent`,
        AGENT_TOKEN: stack.relay.token,
        MACHINE_NAME: "unprivileged",
        ALLOWED_ROOTS: ownRoot,
        AGENT_STATE_DIR: state,
        XDG_CONFIG_HOME: path.join(ownRoot, "no-config"),
      },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const stderr = new OutputLog(proc.stderr);
    await stderr.waitFor(/agent info connected/);
    return { uid, [Symbol.asyncDispose]: async () => (proc.kill("SIGTERM"), await proc.exited, fs.rmSync(state, { recursive: true, force: true })) };
  }

  test.skipIf(isRoot && !Bun.which("setpriv"))("a mode 000 file and directory get 'Permission denied' (file_info still describes them), and nothing changes (skipped as root without setpriv)", async () => {
    using own = tempDir("cr-unpriv-");
    await using unprivileged = await unprivilegedAgent(own.path);
    const file = path.join(own.path, "locked");
    const dir = path.join(own.path, "locked-dir");
    fs.writeFileSync(file, "locked content");
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, "inner"), "x");
    for (const p of [file, dir, path.join(dir, "inner")]) fs.chownSync(p, unprivileged.uid, unprivileged.uid);
    fs.chmodSync(file, 0o000);
    fs.chmodSync(dir, 0o000);
    const read = await call(stack.client, "read_file", { path: file, machine: "unprivileged" });
    expect([read.isError, read.text]).toEqual([true, `Permission denied: '${file}'.`]);
    const append = await call(stack.client, "write_file", { path: file, content: "more", append: true, machine: "unprivileged" });
    expect(append.isError).toBe(true);
    expect(append.text).toContain("permission denied");
    const list = await call(stack.client, "list_directory", { path: dir, machine: "unprivileged" });
    expect(list.isError).toBe(true);
    expect(list.text).toMatch(/Permission denied|EACCES/);
    // Describing a file needs no permission on it (stat), so file_info still works, and says what it is.
    const info = await call(stack.client, "file_info", { path: file, machine: "unprivileged" });
    expect(info.data).toMatchObject({ type: "file", mode: "0000", size: 14, uid: unprivileged.uid });
    fs.chmodSync(file, 0o600);
    expect(fs.readFileSync(file, "utf8")).toBe("locked content");
    fs.chmodSync(dir, 0o700);
  });
});
