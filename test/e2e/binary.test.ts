// The compiled agent, built the way `bun run build` builds it (the same function), run as a user runs it: one
// executable with nothing else installed. It answers --help and --version, ignores a .env in its working
// directory, connects to a real relay and serves a tool call end to end, and the same source builds to the
// same bytes. Only a linux-x64 binary can run here, so other machines skip with the reason.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildAgent, type BuiltBinary } from "../../scripts/build.ts";
import { VERSION } from "../../protocol.ts";
import { runBinary, startBinaryAgent } from "../helpers/binary.ts";
import { connectClient, startRelay, tempDir } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

const canRun = process.platform === "linux" && process.arch === "x64";
if (!canRun) console.warn(`binary.test.ts: skipped, the linux-x64 agent cannot run on ${process.platform}-${process.arch}`);

/** A compile takes a second or two when Bun's runtime is cached; fetching it first can take longer. */
const BUILD_TIMEOUT_MS = 120_000;

let outDir: string;
let built: BuiltBinary;

beforeAll(async () => {
  if (!canRun) return;
  outDir = fs.mkdtempSync(path.join(os.tmpdir(), "cr-build-"));
  built = await buildAgent("linux-x64", outDir);
}, BUILD_TIMEOUT_MS);

afterAll(() => {
  if (outDir) fs.rmSync(outDir, { recursive: true, force: true });
});

describe.skipIf(!canRun)("the compiled linux-x64 agent", () => {
  test("is one executable named for its target, with nothing beside it", () => {
    expect(path.basename(built.path)).toBe("code-remote-agent-linux-x64");
    expect(fs.statSync(built.path).mode & 0o111).not.toBe(0);
    expect(fs.readdirSync(outDir)).toEqual(["code-remote-agent-linux-x64"]);
  });

  test("--help lists every setting and states the security boundary", () => {
    const r = runBinary(built.path, ["--help"]);
    expect(r.code).toBe(0);
    for (const name of ["RELAY_URL", "AGENT_TOKEN", "MACHINE_NAME", "ALLOWED_ROOTS", "MAX_CONCURRENT_COMMANDS", "SHELL"]) {
      expect(r.stdout).toContain(name);
    }
    expect(r.stdout).toContain("run_shell_command runs anything this user can run");
  });

  test("--version prints the version", () => {
    const r = runBinary(built.path, ["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
  });

  test("ignores a .env and a bunfig.toml in its working directory (its settings come from its environment)", () => {
    using dir = tempDir("cr-dotenv-");
    fs.writeFileSync(path.join(dir.path, ".env"), "RELAY_URL=ws://127.0.0.1:9/ws/agent\nAGENT_TOKEN=from-dotenv\n");
    fs.writeFileSync(path.join(dir.path, "bunfig.toml"), 'preload = ["./missing-preload.ts"]\n');
    const r = runBinary(built.path, [], {}, dir.path);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("RELAY_URL is not set");
  });

  test("connects to a real relay and runs a tool call end to end", async () => {
    await using relay = await startRelay();
    await using agent = await startBinaryAgent(built.path, relay, "compiled");
    await using client = await connectClient(relay, "streamable-http");

    const status = await call(client, "check_agent_status", { machine: "compiled" });
    expect(status.isError).toBe(false);
    expect(status.data.machines[0]).toMatchObject({ machine: "compiled", agent_version: VERSION, allowed_roots: [agent.root] });

    const shell = await call(client, "run_shell_command", { machine: "compiled", command: "printf '%s' \"$CODE_REMOTE\"; pwd", working_dir: agent.root });
    expect(shell.isError).toBe(false);
    expect(shell.data).toMatchObject({ machine: "compiled", exit_code: 0, stdout: `1${agent.root}\n` });

    fs.writeFileSync(path.join(agent.root, "note.txt"), "written on disk\n");
    const read = await call(client, "read_file", { machine: "compiled", path: path.join(agent.root, "note.txt") });
    expect(read.data.content).toBe("written on disk\n");
  });

  test("the same source builds to the same bytes", async () => {
    using again = tempDir("cr-rebuild-");
    const second = await buildAgent("linux-x64", again.path);
    expect(second.sha256).toBe(built.sha256);
  }, BUILD_TIMEOUT_MS);
});
