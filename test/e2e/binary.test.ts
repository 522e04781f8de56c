// The compiled agent, built the way `bun run build` builds it (the same function), run as a user runs it: one
// executable with nothing else installed. It answers --help and --version, ignores a .env in its working
// directory, connects to a real relay and serves a tool call end to end, and the same source builds to the
// same bytes. Then a user's first day with it: `setup` with flags into an empty home, checked against a real
// relay; the binary started with only that home, as its service would start it, serving a call;
// `install-service` writing a systemd user unit (systemd does not run here, so it must say what to run);
// `status` before and after. Only a linux-x64 binary can run here, so other machines skip with the reason.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildAgent, type BuiltBinary } from "../../scripts/build.ts";
import { VERSION } from "../../protocol.ts";
import { parseSettings } from "../../agent/config-file.ts";
import { OwnerKeys } from "../../agent/owner-keys.ts";
import { verifyEnrolment } from "../../agent/passkeys.ts";
import { runBinary, spawnBinary, startBinaryAgent } from "../helpers/binary.ts";
import { connectClient, eventually, freePort, startRelay, tempDir, type Relay } from "../helpers/processes.ts";
import { approvalFor, approveAsOwner } from "../helpers/approvals.ts";
import { b64url, challengeOf, SoftAuthenticator } from "../helpers/soft-authenticator.ts";
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
    const r = runBinary(built.path, [], { HOME: dir.path }, dir.path);
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

  test("verifies the owner's passkey: a signed approval runs the call, the owner's token alone does not", async () => {
    const port = freePort();
    await using relay = await startRelay({ port });
    using home = tempDir("cr-passkey-home-");
    const config = path.join(home.path, ".config");
    fs.mkdirSync(path.join(config, "code-remote"), { recursive: true });
    fs.writeFileSync(path.join(config, "code-remote", "policy.toml"), 'preset = "ask-to-change"\napprovals = "passkey"\n');
    const site = { origin: `http://localhost:${port}`, rpId: "localhost" };
    const phone = await SoftAuthenticator.make("EdDSA", site);
    const challenge = b64url(crypto.getRandomValues(new Uint8Array(32)));
    new OwnerKeys(path.join(config, "code-remote", "owner-keys.json")).add(await verifyEnrolment(phone.register(challenge), { challenge, ...site }, "phone"));
    await using agent = spawnBinary(built.path, [], {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: home.path,
      XDG_CONFIG_HOME: config,
      RELAY_URL: `ws://localhost:${port}/ws/agent`,
      AGENT_TOKEN: relay.token,
      MACHINE_NAME: "compiled-passkey",
      ALLOWED_ROOTS: home.path,
      SHELL: "/bin/sh",
    });
    await agent.stderr.waitFor(/agent info connected/);
    await using client = await connectClient(relay, "streamable-http");

    for (const [name, sign] of [["unsigned", false], ["signed", true]] as const) {
      const command = `touch ${path.join(home.path, name)}`;
      const waiting = client.callTool({ name: "run_shell_command", arguments: { command, working_dir: home.path } });
      const approval = await approvalFor(relay, { command });
      await approveAsOwner(relay, approval.id, sign ? { assertion: await phone.assert(challengeOf(approval.passkey!.statements.once)) } : {});
      expect(((await waiting) as { isError?: boolean }).isError ?? false).toBe(!sign);
      expect(fs.existsSync(path.join(home.path, name))).toBe(sign);
    }
  });

  test("every subcommand answers --help, and the main --help lists them", () => {
    using home = tempDir("cr-home-");
    const main = runBinary(built.path, ["--help"], { HOME: home.path });
    for (const sub of ["setup", "install-service", "uninstall-service", "status"]) {
      expect(main.stdout).toContain(`code-remote-agent ${sub} `);
      const r = runBinary(built.path, [sub, "--help"], { HOME: home.path });
      expect(r.code).toBe(0);
      expect(r.stdout).toStartWith(`Usage: code-remote-agent ${sub}`);
    }
    expect(runBinary(built.path, ["setup", "--token-stdin", "--help"], { HOME: home.path }).stdout).toContain("--token-file FILE");
    expect(fs.readdirSync(home.path)).toEqual([]); // --help writes nothing
  });

  test("the same source builds to the same bytes", async () => {
    using again = tempDir("cr-rebuild-");
    const second = await buildAgent("linux-x64", again.path);
    expect(second.sha256).toBe(built.sha256);
  }, BUILD_TIMEOUT_MS);
});

/** A fresh user's first day with the binary, one step per test, in order: setup, status, install-service, the
 *  agent as its service runs it, status again, stop, uninstall. */
describe.skipIf(!canRun)("the compiled agent, set up and installed as a service in an empty home", () => {
  let relay: Relay;
  let home: string;
  let root: string;
  /** All the binary printed, searched for the token at the end. */
  const printed: string[] = [];
  /** The environment a service manager gives it: a PATH and a HOME, no settings (no XDG_RUNTIME_DIR either, so
   *  systemctl --user cannot reach a user manager on any machine this runs on). */
  const env = () => ({ PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home });
  const run = (args: string[]) => {
    const r = runBinary(built.path, args, env());
    printed.push(r.stdout, r.stderr);
    return r;
  };
  const configFile = () => path.join(home, ".config", "code-remote", "agent.env");
  const unitFile = () => path.join(home, ".config", "systemd", "user", "code-remote-agent.service");

  beforeAll(async () => {
    relay = await startRelay();
    home = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-home-")));
    root = path.join(home, "work");
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(home, "token"), `${relay.token}\n`, { mode: 0o600 });
  });

  afterAll(async () => {
    await relay?.[Symbol.asyncDispose]();
    if (home) fs.rmSync(home, { recursive: true, force: true });
    expect(printed.join("\n")).not.toContain(relay.token);
  });

  test("setup with flags checks the settings against the relay and saves them readable only by the user", () => {
    const r = run(["setup", "--relay-url", `http://127.0.0.1:${relay.port}`, "--token-file", path.join(home, "token"), "--machine", "first-day", "--allowed-roots", root]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Connected as 'first-day'");
    expect(r.stdout).toContain(`Saved ${configFile()}`);
    expect(r.stdout).toContain("install-service");
    expect((fs.statSync(configFile()).mode & 0o777).toString(8)).toBe("600");
    expect((fs.statSync(path.dirname(configFile())).mode & 0o777).toString(8)).toBe("700");
    expect(parseSettings(fs.readFileSync(configFile(), "utf8"), configFile())).toEqual({
      RELAY_URL: `ws://127.0.0.1:${relay.port}/ws/agent`,
      AGENT_TOKEN: relay.token,
      MACHINE_NAME: "first-day",
      ALLOWED_ROOTS: root,
    });
    expect(fs.readdirSync(path.dirname(configFile()))).toEqual(["agent.env"]); // no temp file left behind
  });

  test("status before install: settings found, no service, not running (exit 1)", () => {
    const r = run(["status"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^Settings +${configFile()}: machine 'first-day'`, "m"));
    expect(r.stdout).toMatch(/^Service +not installed \(.*install-service\)$/m);
    expect(r.stdout).toMatch(/^Agent +not running$/m);
    expect(r.stdout).toMatch(/^Connection +none$/m);
  });

  test("install-service writes a systemd user unit running this binary, and says what to run without systemd", () => {
    const r = run(["install-service"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Wrote ${unitFile()}`);
    expect(r.stdout).toContain("systemd is not running for this user here");
    expect(r.stdout).toContain("systemctl --user daemon-reload && systemctl --user enable --now code-remote-agent.service");
    const unit = fs.readFileSync(unitFile(), "utf8");
    const logFile = path.join(home, ".local", "state", "code-remote", "agent.log");
    expect(unit).toContain(`\nExecStart="${built.path}" "--log-file" "${logFile}"\n`);
    expect(unit).toMatch(/^Restart=always$/m);
    expect(unit).toMatch(/^RestartSec=\d+$/m);
    expect(unit).toMatch(/^WantedBy=default\.target$/m);
    expect(unit).not.toContain(relay.token);
  });

  test("the binary, started as the unit starts it (its ExecStart, only HOME), connects and serves a tool call; status says so", async () => {
    const unit = fs.readFileSync(unitFile(), "utf8");
    const execStart = [.../^ExecStart=(.*)$/m.exec(unit)![1]!.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!);
    expect(execStart[0]).toBe(built.path);
    const logFile = execStart[2]!;
    await using agent = spawnBinary(execStart[0]!, execStart.slice(1), env());
    await eventually(() => fs.existsSync(logFile) && fs.readFileSync(logFile, "utf8").includes("agent info connected"), 10_000, "connected");

    await using client = await connectClient(relay, "streamable-http");
    fs.writeFileSync(path.join(root, "note.txt"), "from the first day\n");
    const read = await call(client, "read_file", { machine: "first-day", path: path.join(root, "note.txt") });
    expect(read.isError).toBe(false);
    expect(read.data.content).toBe("from the first day\n");
    const outside = await call(client, "read_file", { machine: "first-day", path: path.join(home, "token") });
    expect(outside.isError).toBe(true); // the saved ALLOWED_ROOTS apply

    const r = run(["status"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Service +installed: ${unitFile()} \\(systemd: not reachable\\)$`, "m"));
    expect(r.stdout).toMatch(new RegExp(`^Agent +running \\(pid ${agent.proc.pid}\\)$`, "m"));
    expect(r.stdout).toMatch(new RegExp(`^Connection +connected as 'first-day' to ws://127\\.0\\.0\\.1:${relay.port}/ws/agent, at `, "m"));
    expect(r.stdout).toMatch(new RegExp(`^Log +${logFile}$`, "m"));
    printed.push(agent.stderr.text, fs.readFileSync(logFile, "utf8"));
  });

  test("after the agent stops, status says when; uninstall-service removes the unit and keeps the settings", () => {
    const r = run(["status"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^Agent +not running$/m);
    expect(r.stdout).toMatch(/^Connection +none: the agent stopped at /m);

    const removed = run(["uninstall-service"]);
    expect(removed.code).toBe(0);
    expect(removed.stdout).toContain(`Removed ${unitFile()}`);
    expect(fs.existsSync(unitFile())).toBe(false);
    expect(fs.existsSync(configFile())).toBe(true);
    expect(run(["status"]).stdout).toMatch(/^Service +not installed/m);
  });
});
