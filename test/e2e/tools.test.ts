// The five tools end to end, the same suite over Streamable HTTP and legacy SSE: a real relay, a real agent,
// the SDK's Client.

import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { TOOLS } from "../../protocol.ts";
import { connectClient, tempDir, TRANSPORTS } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call, resultSize } from "../helpers/tools.ts";

const workspace = tempDir("cr-tools-");
const root = workspace.path;

const stack = useStack({ agent: { machine: "desk", roots: [root] } });

afterAll(() => {
  workspace[Symbol.dispose]();
});

describe.each(TRANSPORTS)("over %s", (transport) => {
  test("tools/list has the five tools with titles, annotations, strict input and output schemas", async () => {
    await using client = await connectClient(stack.relay, transport);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toEqual(Object.keys(TOOLS));
    for (const tool of tools) {
      expect(tool.title).toBeTruthy();
      expect(typeof tool.annotations?.readOnlyHint).toBe("boolean");
      expect(typeof tool.annotations?.destructiveHint).toBe("boolean");
      expect(tool.inputSchema.additionalProperties).toBe(false);
      expect(tool.inputSchema.properties).toHaveProperty("machine");
      expect(tool.outputSchema?.type).toBe("object");
    }
  });

  test("run_shell_command returns exit code, stdout and stderr, in the first allowed root when home is not one", async () => {
    await using client = await connectClient(stack.relay, transport);
    const r = await call(client, "run_shell_command", { command: "echo out; echo err >&2; pwd; exit 3" });
    expect(r.isError).toBe(false);
    expect(r.data).toMatchObject({ machine: "desk", exit_code: 3, signal: null, stderr: "err\n", timed_out: false, truncated: false });
    expect(r.data.stdout).toBe(`out\n${root}\n`);
    expect(r.text).toContain("exit code 3");
    expect(r.text).toContain("[stderr]\nerr");
  });

  test("run_shell_command runs in working_dir and gives the command an empty stdin", async () => {
    await using client = await connectClient(stack.relay, transport);
    const r = await call(client, "run_shell_command", { command: "pwd; cat; echo done", working_dir: root });
    expect(r.data.stdout).toBe(`${root}\ndone\n`);
  });

  test("run_shell_command refuses a working_dir outside the allowed roots", async () => {
    await using client = await connectClient(stack.relay, transport);
    const r = await call(client, "run_shell_command", { command: "true", working_dir: "/etc" });
    expect(r.isError).toBe(true);
    expect(r.text).toContain("Access denied");
  });

  test("unknown fields and wrong types are refused by the input schema", async () => {
    await using client = await connectClient(stack.relay, transport);
    const extra = await call(client, "read_file", { path: `${root}/x`, surprise: 1 });
    expect(extra.isError).toBe(true);
    const wrong = await call(client, "run_shell_command", { command: "true", timeout: 0 });
    expect(wrong.isError).toBe(true);
    const big = await call(client, "run_shell_command", { command: "true", timeout: 3601 });
    expect(big.isError).toBe(true);
  });

  test("write_file then read_file round-trips text, creating parent directories", async () => {
    await using client = await connectClient(stack.relay, transport);
    const file = path.join(root, transport, "deep/dir/notes.txt");
    const content = "first line\nsecond – ünïcode ✓\nthird\n";
    const w = await call(client, "write_file", { path: file, content });
    expect(w.data).toMatchObject({ path: file, bytes_written: Buffer.byteLength(content), created: true });
    const r = await call(client, "read_file", { path: file });
    expect(r.data).toMatchObject({ encoding: "utf8", content, total_lines: 3, truncated: false, next_offset: null });
    expect(fs.readFileSync(file, "utf8")).toBe(content);
  });

  test("read_file returns a line range and says where to continue", async () => {
    await using client = await connectClient(stack.relay, transport);
    const file = path.join(root, `${transport}-lines.txt`);
    fs.writeFileSync(file, Array.from({ length: 100 }, (_, i) => `line ${i + 1}\n`).join(""));
    const r = await call(client, "read_file", { path: file, offset: 10, limit: 3 });
    expect(r.data).toMatchObject({ content: "line 10\nline 11\nline 12\n", offset: 10, returned: 3, total_lines: 100, truncated: true, next_offset: 13 });
    const end = await call(client, "read_file", { path: file, offset: 99 });
    expect(end.data).toMatchObject({ content: "line 99\nline 100\n", truncated: false, next_offset: null });
  });

  test("write_file with append adds to the end and keeps the file's mode", async () => {
    await using client = await connectClient(stack.relay, transport);
    const file = path.join(root, `${transport}-script.sh`);
    fs.writeFileSync(file, "#!/bin/sh\n");
    fs.chmodSync(file, 0o750);
    const w = await call(client, "write_file", { path: file, content: "echo hi\n", append: true });
    expect(w.data).toMatchObject({ bytes_written: 8, size: 18, created: false });
    expect(fs.readFileSync(file, "utf8")).toBe("#!/bin/sh\necho hi\n");
    expect(fs.statSync(file).mode & 0o777).toBe(0o750);
  });

  test("binary content round-trips byte for byte through write_file and read_file", async () => {
    await using client = await connectClient(stack.relay, transport);
    const bytes = new Uint8Array(20_000).map((_, i) => (i * 7919 + 13) % 256);
    const file = path.join(root, `${transport}-blob.bin`);
    const w = await call(client, "write_file", { path: file, content: Buffer.from(bytes).toString("base64"), encoding: "base64" });
    expect(w.data.bytes_written).toBe(bytes.length);
    const r = await call(client, "read_file", { path: file });
    expect(r.data.encoding).toBe("base64");
    expect(Buffer.from(r.data.content, "base64").equals(Buffer.from(bytes))).toBe(true);
    expect(fs.readFileSync(file).equals(Buffer.from(bytes))).toBe(true);
  });

  test("binary reads come in 32 KiB parts by default; an explicit limit takes up to 1 MiB at once", async () => {
    await using client = await connectClient(stack.relay, transport);
    const bytes = Buffer.from(new Uint8Array(300_000).map((_, i) => (i * 31 + 7) % 256));
    const file = path.join(root, `${transport}-bulk.bin`);
    fs.writeFileSync(file, bytes);
    const first = await call(client, "read_file", { path: file });
    expect(first.data).toMatchObject({ encoding: "base64", offset: 0, returned: 32 * 1024, truncated: true, next_offset: 32 * 1024 });
    const bulk = await call(client, "read_file", { path: file, offset: 32 * 1024, limit: 2_000_000 });
    expect(bulk.data).toMatchObject({ returned: 300_000 - 32 * 1024, truncated: false, next_offset: null });
    const joined = Buffer.concat([Buffer.from(first.data.content, "base64"), Buffer.from(bulk.data.content, "base64")]);
    expect(joined.equals(bytes)).toBe(true);
  });

  test("list_directory lists entries sorted with type, size and time", async () => {
    await using client = await connectClient(stack.relay, transport);
    const dir = path.join(root, `${transport}-list`);
    fs.mkdirSync(path.join(dir, "sub"), { recursive: true });
    fs.writeFileSync(path.join(dir, "b.txt"), "12345");
    fs.symlinkSync("b.txt", path.join(dir, "a-link"));
    const r = await call(client, "list_directory", { path: dir });
    expect(r.data.entries.map((e: any) => [e.name, e.type])).toEqual([
      ["a-link", "symlink"],
      ["b.txt", "file"],
      ["sub", "dir"],
    ]);
    expect(r.data.entries[1].size).toBe(5);
    expect(r.data).toMatchObject({ total: 3, truncated: false });
    expect(r.text).toContain("b.txt");
  });

  test("check_agent_status makes a live round trip and reports the agent", async () => {
    await using client = await connectClient(stack.relay, transport);
    const r = await call(client, "check_agent_status");
    expect(r.isError).toBe(false);
    expect(r.data.connected).toBe(1);
    const [desk] = r.data.machines;
    expect(desk).toMatchObject({ machine: "desk", agent_version: "0.1.0", shell: "/bin/sh", allowed_roots: [root], running_commands: 0 });
    expect(desk.round_trip_ms).toBeGreaterThan(0);
    expect(r.text).toContain("desk");
  });

  test("a tool naming an unknown machine fails with the list of connected machines", async () => {
    await using client = await connectClient(stack.relay, transport);
    const r = await call(client, "read_file", { path: `${root}/x`, machine: "nope" });
    expect(r.isError).toBe(true);
    expect(r.text).toBe("Machine 'nope' is not connected. Connected: desk.");
  });

  test("every result stays under 100,000 characters", async () => {
    await using client = await connectClient(stack.relay, transport);
    const file = path.join(root, `${transport}-big.txt`);
    fs.writeFileSync(file, "x".repeat(300) + "\n".repeat(1) + "y\n".repeat(200_000));
    const r = await call(client, "read_file", { path: file });
    expect(r.data.truncated).toBe(true);
    expect(resultSize(r)).toBeLessThan(100_000);
  });
});
