// The agent's own setup and configuration, run from source as real processes against a real relay: setup's
// check refuses a wrong token or an unreachable relay and saves nothing; a saved file is read by the daemon,
// environment variables win over it, and a file other users can read stops the agent with the fix; a log file
// rotates by size while the agent runs. Every output is searched for the token, which must never appear.
// The compiled binary runs the same flows in binary.test.ts (setup, a tool call, install-service, status).

import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { NEUTRAL_CWD, OutputLog, ROOT, connectClient, eventually, freePort, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { openTerminal, SCRIPT } from "../helpers/terminal.ts";
import { call } from "../helpers/tools.ts";

const AGENT = path.join(ROOT, "agent.ts");

const stack = useStack({ agent: false });
/** Everything any agent process printed in this file, searched for the token at the end. */
const printed: string[] = [];

afterAll(() => {
  expect(printed.join("\n")).not.toContain(stack.relay.token);
});

/** The environment of a fresh user: a PATH and a HOME, nothing else (no config in the environment). */
const userEnv = (home: string, extra: Record<string, string> = {}) => ({ PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, ...extra });

/** Runs `agent.ts args` to completion, with `stdin` piped in (never a terminal, so setup never asks). */
async function cli(args: string[], env: Record<string, string>, stdin = "") {
  const proc = Bun.spawn([process.execPath, "run", AGENT, ...args], { cwd: NEUTRAL_CWD, env, stdin: new Blob([stdin]), stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  printed.push(stdout, stderr);
  return { code, stdout, stderr };
}

/** Starts the daemon (no subcommand) with exactly `env`. */
function daemon(env: Record<string, string>, args: string[] = []) {
  const proc = Bun.spawn([process.execPath, "run", AGENT, ...args], { cwd: NEUTRAL_CWD, env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const stderr = new OutputLog(proc.stderr);
  void new OutputLog(proc.stdout);
  return {
    proc,
    stderr,
    async [Symbol.asyncDispose]() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      await proc.exited;
      printed.push(stderr.text);
    },
  };
}

const relayUrl = () => `ws://127.0.0.1:${stack.relay.port}/ws/agent`;
const configFile = (home: string) => path.join(home, ".config", "code-remote", "agent.env");

/** A home with the token in a file, as a user would keep it for `setup --token-file`. */
function homeWithToken(token = stack.relay.token) {
  const home = tempDir("cr-home-");
  fs.writeFileSync(path.join(home.path, "token"), `${token}\n`, { mode: 0o600 });
  return home;
}

describe("setup", () => {
  test("saves nothing when the relay refuses the token, and says to use the relay's AGENT_TOKEN", async () => {
    using home = homeWithToken("not-the-relay-token");
    const r = await cli(["setup", "--relay-url", relayUrl(), "--token-file", path.join(home.path, "token"), "--machine", "refused"], userEnv(home.path));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("The relay refused the token (HTTP 401)");
    expect(r.stderr).toContain("Use the agent token the relay's owner gave you");
    expect(r.stderr).toContain("Nothing was saved");
    expect(fs.existsSync(configFile(home.path))).toBe(false);
    expect(r.stdout + r.stderr).not.toContain("not-the-relay-token");
  });

  test("saves nothing when the relay cannot be reached, and says how to check it", async () => {
    using home = homeWithToken();
    const port = freePort();
    const r = await cli(["setup", "--relay-url", `ws://127.0.0.1:${port}/ws/agent`, "--token-file", path.join(home.path, "token")], userEnv(home.path));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`Could not reach the relay at ws://127.0.0.1:${port}/ws/agent`);
    expect(r.stderr).toContain(`curl http://127.0.0.1:${port}/health`);
    expect(fs.existsSync(configFile(home.path))).toBe(false);
  });

  test("--no-check saves without connecting; the token can come from stdin", async () => {
    using home = tempDir("cr-home-");
    const r = await cli(["setup", "--relay-url", "https://relay.example.com", "--token-stdin", "--machine", "offline", "--no-check"], userEnv(home.path), `${stack.relay.token}\n`);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain("Checking");
    // https:// and a bare host are turned into the WebSocket URL the agent dials.
    expect(fs.readFileSync(configFile(home.path), "utf8")).toContain("RELAY_URL=wss://relay.example.com/ws/agent\n");
  });

  test("has no flag for the token itself: argv is visible to every user in ps", async () => {
    using home = tempDir("cr-home-");
    const r = await cli(["setup", `--token=${stack.relay.token}`, "--relay-url", relayUrl()], userEnv(home.path));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("There is no --token");
    expect(r.stderr).toContain("--token-file FILE or --token-stdin");
    expect(fs.existsSync(configFile(home.path))).toBe(false);
  });

  test("refuses to replace a saved file without --force; with it, keeps the settings not given", async () => {
    using home = homeWithToken();
    const token = path.join(home.path, "token");
    const first = await cli(["setup", "--relay-url", relayUrl(), "--token-file", token, "--machine", "keep-me", "--allowed-roots", home.path], userEnv(home.path));
    expect(first.code).toBe(0);
    const saved = fs.readFileSync(configFile(home.path), "utf8");

    const again = await cli(["setup", "--relay-url", relayUrl(), "--token-file", token, "--machine", "other"], userEnv(home.path));
    expect(again.code).toBe(2);
    expect(again.stderr).toContain("already exists. Pass --force to replace it");
    expect(fs.readFileSync(configFile(home.path), "utf8")).toBe(saved);

    const forced = await cli(["setup", "--force", "--machine", "renamed", "--no-check"], userEnv(home.path));
    expect(forced.code).toBe(0);
    const text = fs.readFileSync(configFile(home.path), "utf8");
    expect(text).toContain("MACHINE_NAME=renamed\n");
    expect(text).toContain(`AGENT_TOKEN=${stack.relay.token}\n`);
    expect(text).toContain(`ALLOWED_ROOTS=${home.path}\n`);
    expect((fs.statSync(configFile(home.path)).mode & 0o777).toString(8)).toBe("600");
  });

  test("without a terminal, says which flag is missing instead of asking", async () => {
    using home = tempDir("cr-home-");
    const r = await cli(["setup", "--relay-url", relayUrl()], userEnv(home.path));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("No token: pass --token-file FILE or --token-stdin");
  });
});

describe("setup in a terminal", () => {
  test.skipIf(process.platform !== "linux" || !SCRIPT)("asks only for what the flags leave out, and never echoes the token", async () => {
    using home = tempDir("cr-home-");
    const terminal = openTerminal([process.execPath, "run", AGENT, "setup", "--machine", "tty-box"], userEnv(home.path));
    await terminal.answer("Relay URL (wss://host/ws/agent): ", relayUrl());
    await terminal.answer("typing is hidden): ", stack.relay.token);
    await terminal.answer("Policy [ask-to-change]: ", "read-only");
    const screen = await terminal.finish((shown) => shown.includes("Saved "));
    printed.push(screen);

    expect(screen).toContain(relayUrl()); // what is typed in the open is shown
    expect(screen).not.toContain(stack.relay.token); // the token is not
    expect(screen).not.toContain("Machine name"); // given as a flag, so not asked
    expect(screen).toContain("Connected as 'tty-box'");
    expect(fs.readFileSync(configFile(home.path), "utf8")).toContain(`AGENT_TOKEN=${stack.relay.token}\n`);
    expect(fs.readFileSync(path.join(path.dirname(configFile(home.path)), "policy.toml"), "utf8")).toContain('preset = "read-only"');
  });
});

describe("the daemon and its configuration file", () => {
  /** A home where setup (without its check) saved a configuration for `machine`, with the home as the only root. */
  async function configuredHome(machine: string) {
    const home = homeWithToken();
    const r = await cli(["setup", "--relay-url", relayUrl(), "--token-file", path.join(home.path, "token"), "--machine", machine, "--allowed-roots", home.path, "--no-check"], userEnv(home.path));
    expect(r.code).toBe(0);
    return home;
  }

  test("reads the saved file, and a variable set in the environment wins over it", async () => {
    using home = await configuredHome("from-file");
    await using agent = daemon(userEnv(home.path, { MACHINE_NAME: "from-env" }));
    await agent.stderr.waitFor(/agent info connected .*machine="from-env"/);
    await using client = await connectClient(stack.relay, "streamable-http");
    const status = await call(client, "check_agent_status", { machine: "from-env" });
    expect(status.data.machines[0].allowed_roots).toEqual([home.path]);
  });

  test("refuses a file other users can read, saying how to make it private", async () => {
    using home = await configuredHome("loose");
    fs.chmodSync(configFile(home.path), 0o644);
    await using agent = daemon(userEnv(home.path));
    expect(await agent.proc.exited).toBe(2);
    await agent.stderr.waitFor(new RegExp(`can be read or changed by other users \\(mode 644\\).*chmod 600 ${configFile(home.path)}`));
  });

  test("stops at a line it cannot read, naming the file and the line", async () => {
    using home = await configuredHome("typo");
    fs.appendFileSync(configFile(home.path), "MAX_CONCURENT_COMMANDS=4\n");
    await using agent = daemon(userEnv(home.path));
    expect(await agent.proc.exited).toBe(2);
    await agent.stderr.waitFor(/agent\.env, line \d+: unknown setting 'MAX_CONCURENT_COMMANDS'/);
  });
});

describe("the log file", () => {
  test("rotates by size while the agent runs: several files, none over the limit, the oldest dropped", async () => {
    using home = tempDir("cr-home-");
    const log = path.join(home.path, "logs", "agent.log");
    const maxBytes = 1024;
    await using agent = daemon(
      userEnv(home.path, { RELAY_URL: relayUrl(), AGENT_TOKEN: stack.relay.token, MACHINE_NAME: "rotating", ALLOWED_ROOTS: home.path, LOG_MAX_BYTES: String(maxBytes), LOG_FILES: "3" }),
      ["--log-file", log],
    );
    await eventually(() => fs.existsSync(log) && fs.readFileSync(log, "utf8").includes("agent info connected"), 10_000, "connected in the log file");
    // Nothing else goes to stderr once the file is open: a service's stderr is for crashes.
    await agent.stderr.waitFor(/logging to /);
    expect(agent.stderr.lines.filter(Boolean)).toEqual([`code-remote-agent: logging to ${log}`]);

    await using client = await connectClient(stack.relay, "streamable-http");
    for (let i = 0; i < 40; i++) {
      const r = await call(client, "file_info", { machine: "rotating", path: home.path });
      expect(r.isError).toBe(false);
    }
    // Each call is one log line of about 100 bytes: 40 of them fill three 1 KiB files and push older lines out.
    await eventually(() => fs.existsSync(`${log}.2`), 5_000, "a second rotation");
    const files = fs.readdirSync(path.dirname(log)).sort();
    expect(files).toEqual(["agent.log", "agent.log.1", "agent.log.2"]);
    for (const file of files) {
      const text = fs.readFileSync(path.join(path.dirname(log), file), "utf8");
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(maxBytes);
      expect(text.endsWith("\n")).toBe(true);
      for (const line of text.trimEnd().split("\n")) expect(line).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z agent (info|warn|error) /);
    }
    expect(fs.readFileSync(`${log}.2`, "utf8")).not.toContain("agent info starting"); // the oldest lines are gone
    expect(agent.proc.exitCode).toBeNull(); // rotated while running, not at a restart
    expect((fs.statSync(log).mode & 0o777).toString(8)).toBe("600");
  });
});
