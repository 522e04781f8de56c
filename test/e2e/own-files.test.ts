// The agent's own files are out of every file tool's reach, whatever the roots say. An agent runs with the default
// roots (its home, /tmp, /var/tmp) and a home of its own holding what a real installation has there: the settings
// file with the token, the state directory with other commands' output logs and the identity key, a systemd unit,
// and a log file with its rotations. With those roots, read_file used to return the token, and edit_file could widen
// the agent's own roots.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { eventually, startAgent, tempDir, type Agent } from "../helpers/processes.ts";
import { snapshot } from "../helpers/snapshot.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";

const MACHINE = "own-files";
const home = tempDir("cr-own-home-");
const shared = tempDir("cr-own-tmp-"); // under /tmp, one of the default roots
const config = path.join(home.path, ".config");
const settingsFile = path.join(config, "code-remote", "agent.env");
const stateDir = path.join(home.path, ".local", "state", "code-remote", MACHINE);
const unitDir = path.join(config, "systemd", "user");
const logFile = path.join(shared.path, "agent.log");
const OWN = /^Access denied: '.*' is one of the agent's own files .*, which no file tool touches, whatever the allowed roots\.$/;

const stack = useStack({ agent: false, client: "streamable-http" });
let agent: Agent;

beforeAll(async () => {
  fs.mkdirSync(path.dirname(settingsFile), { recursive: true, mode: 0o700 });
  fs.writeFileSync(settingsFile, `AGENT_TOKEN=${stack.relay.token}\n`, { mode: 0o600 });
  fs.mkdirSync(unitDir, { recursive: true });
  fs.writeFileSync(path.join(unitDir, "code-remote-agent.service"), "[Service]\nExecStart=/usr/local/bin/code-remote-agent\n");
  fs.writeFileSync(path.join(unitDir, "other.service"), "[Service]\nExecStart=/bin/true\n");
  fs.writeFileSync(`${logFile}.1`, "an older log\n");
  fs.writeFileSync(path.join(shared.path, "agent.log.txt"), "not the agent's\n");
  agent = await startAgent(stack.relay, {
    machine: MACHINE,
    waitConnected: false, // it logs to LOG_FILE, not stderr
    env: {
      HOME: home.path,
      ALLOWED_ROOTS: "", // the defaults: home, /tmp, /var/tmp
      AGENT_STATE_DIR: "", // the default, under ~/.local/state
      AGENT_TOKEN: "", // from the settings file
      XDG_CONFIG_HOME: config,
      LOG_FILE: logFile,
      LOG_FILES: "3",
      BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0",
    },
  });
  await eventually(() => fs.existsSync(logFile) && fs.readFileSync(logFile, "utf8").includes("agent info connected"), 10_000, "the agent connected");
});

afterAll(async () => {
  await agent?.stop();
  home[Symbol.dispose]();
  shared[Symbol.dispose]();
});

/** Expects `tool` to be refused as touching the agent's own files, with nothing of them in the answer, and nothing
 *  under ~/.config changed. */
async function refusedAsOwn(tool: string, args: Record<string, unknown>) {
  const before = snapshot(config);
  const r = await call(stack.client, tool, { ...args, machine: MACHINE });
  expect([r.isError, r.text]).toEqual([true, expect.stringMatching(OWN)]);
  expect(r.text).not.toContain(stack.relay.token);
  expect(snapshot(config)).toBe(before);
}

describe("the settings file, which holds the token", () => {
  test("read_file, file_info and search_files never show it, by name or through ~", async () => {
    await refusedAsOwn("read_file", { path: settingsFile });
    await refusedAsOwn("read_file", { path: "~/.config/code-remote/agent.env" });
    await refusedAsOwn("file_info", { path: settingsFile });
    await refusedAsOwn("search_files", { path: path.dirname(settingsFile), content: "TOKEN" });
    const search = await call(stack.client, "search_files", { path: home.path, content: stack.relay.token, include_hidden: true, machine: MACHINE });
    expect(search.data).toMatchObject({ matches: [], truncated: false });
  });

  test("a symlink to it from /tmp is refused too: the exclusion is judged where the path really leads", async () => {
    const link = path.join(shared.path, "innocent.txt");
    fs.symlinkSync(settingsFile, link);
    await refusedAsOwn("read_file", { path: link });
    await refusedAsOwn("write_file", { path: link, content: "AGENT_TOKEN=x\n" });
    fs.symlinkSync(path.dirname(settingsFile), path.join(shared.path, "config-dir"));
    await refusedAsOwn("list_directory", { path: path.join(shared.path, "config-dir") });
  });

  test("write_file and edit_file cannot change it, widen the roots, or add a file beside it", async () => {
    await refusedAsOwn("write_file", { path: settingsFile, content: "ALLOWED_ROOTS=/\n", append: true });
    await refusedAsOwn("edit_file", { path: settingsFile, edits: [{ old_text: "AGENT_TOKEN", new_text: "ALLOWED_ROOTS=/\nAGENT_TOKEN" }] });
    await refusedAsOwn("write_file", { path: path.join(path.dirname(settingsFile), "new.env"), content: "x" });
    expect(fs.readFileSync(settingsFile, "utf8")).toBe(`AGENT_TOKEN=${stack.relay.token}\n`);
  });

  test("listing ~/.config leaves out code-remote and keeps the rest", async () => {
    const r = await call(stack.client, "list_directory", { path: config, depth: 3, machine: MACHINE });
    expect(r.data.entries.map((e: { name: string }) => e.name)).toEqual(["systemd", "systemd/user", "systemd/user/other.service"]);
  });
});

describe("the state directory: other commands' output, records and the identity key", () => {
  test("a command's output log cannot be read, listed or searched, and commands cannot start there", async () => {
    const ran = await call(stack.client, "run_shell_command", { command: "echo secret-output-51423", machine: MACHINE });
    const log = path.join(stateDir, `${ran.data.command_id}.0.log`);
    expect(fs.readFileSync(log, "utf8")).toBe("secret-output-51423\n"); // it is there, on disk
    await refusedAsOwn("read_file", { path: log });
    await refusedAsOwn("read_file", { path: path.join(stateDir, "identity.key") });
    await refusedAsOwn("list_directory", { path: stateDir });
    await refusedAsOwn("run_shell_command", { command: "pwd", working_dir: stateDir });
    const search = await call(stack.client, "search_files", { path: home.path, content: "secret-output", include_hidden: true, machine: MACHINE });
    expect(search.data.matches).toEqual([]);
    const listing = await call(stack.client, "list_directory", { path: home.path, depth: 5, include_hidden: true, machine: MACHINE });
    const names: string[] = listing.data.entries.map((e: { name: string }) => e.name);
    expect(names).toContain(".local/state");
    expect(names.filter((name) => name.includes("code-remote"))).toEqual([]);
  });
});

describe("the service definition and the logs", () => {
  test("the systemd unit is refused; another unit beside it is not", async () => {
    await refusedAsOwn("read_file", { path: path.join(unitDir, "code-remote-agent.service") });
    await refusedAsOwn("write_file", { path: path.join(unitDir, "code-remote-agent.service"), content: "[Service]\nExecStart=/tmp/x\n" });
    expect((await call(stack.client, "read_file", { path: path.join(unitDir, "other.service"), machine: MACHINE })).data.content).toContain("/bin/true");
  });

  test("the log file and its rotations are refused, in /tmp too; a file that only shares the name's start is not", async () => {
    await refusedAsOwn("read_file", { path: logFile });
    await refusedAsOwn("read_file", { path: `${logFile}.1` });
    await refusedAsOwn("write_file", { path: `${logFile}.2`, content: "x" });
    expect((await call(stack.client, "read_file", { path: path.join(shared.path, "agent.log.txt"), machine: MACHINE })).data.content).toBe("not the agent's\n");
    const listing = await call(stack.client, "list_directory", { path: shared.path, machine: MACHINE });
    expect(listing.data.entries.map((e: { name: string }) => e.name)).not.toContain("agent.log");
  });
});

test("check_agent_status says which paths are excluded", async () => {
  const r = await call(stack.client, "check_agent_status", {});
  const own = [path.dirname(settingsFile), stateDir, path.dirname(stateDir), path.join(unitDir, "code-remote-agent.service"), logFile, `${logFile}.1`, `${logFile}.2`];
  expect(r.data.machines[0].excluded_paths).toEqual(own);
  expect(r.text).toContain(`except the agent's own files: ${own.join(", ")}`);
});
