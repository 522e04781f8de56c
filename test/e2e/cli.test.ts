// The entry points as a user meets them: --help and --version, refusals to start with a clear reason, and
// `bun run dev` (server plus local agent, one Ctrl-C) checked with the real MCP Inspector CLI.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { connectClient, eventually, NEUTRAL_CWD, newToken, OutputLog, ROOT, spawnProgram, tempDir } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

/** The process ids whose parent is `pid`. */
const childrenOf = (pid: number) =>
  Bun.spawnSync(["ps", "-o", "pid=", "--ppid", String(pid)]).stdout.toString().split("\n").filter(Boolean).map(Number);

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Runs an entry point to completion with a minimal environment. */
function run(file: string, args: string[], env: Record<string, string> = {}, cwd = NEUTRAL_CWD) {
  const result = Bun.spawnSync([process.execPath, "run", path.join(ROOT, file), ...args], {
    cwd,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...env },
  });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

describe("server.ts", () => {
  test("--help lists the commands and every setting", () => {
    const r = run("server.ts", ["--help"]);
    expect(r.code).toBe(0);
    for (const word of ["dev", "AUTH_TOKEN", "AGENT_TOKEN", "PORT", "HOST", "DATABASE_PATH", "PUBLIC_URL"]) expect(r.stdout).toContain(word);
  });

  test("--help after a subcommand prints the usage instead of acting", () => {
    for (const args of [["audit", "--help"], ["agent-token", "revoke", "--help"], ["dev", "-h"]]) {
      const r = run("server.ts", args);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("bun run server.ts audit verify");
    }
  });

  test("audit and agent-token refuse a database that does not exist, instead of creating an empty one", () => {
    using dir = tempDir();
    const missing = path.join(dir.path, "nothing-here", "code-remote.db");
    for (const args of [["audit"], ["audit", "verify"], ["agent-token", "create", "laptop"], ["agent-token", "list"]]) {
      const r = run("server.ts", args, { DATABASE_PATH: missing });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`There is no relay database at ${missing}`);
      expect(r.stderr).toContain("docker compose exec server");
    }
    expect(fs.existsSync(path.dirname(missing))).toBe(false);
  });

  test("--version prints the version", () => {
    expect(run("server.ts", ["--version"]).stdout.trim()).toBe("0.1.0");
  });

  test("refuses to start without AUTH_TOKEN and says how to make one", () => {
    const r = run("server.ts", []);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("AUTH_TOKEN is not set. Make one with: openssl rand -hex 32");
  });

  test("refuses a short or repetitive AUTH_TOKEN", () => {
    expect(run("server.ts", [], { AUTH_TOKEN: "too-short" }).stderr).toContain("at least 32 characters");
    expect(run("server.ts", [], { AUTH_TOKEN: "a".repeat(40) }).stderr).toContain("too repetitive");
  });

  test("refuses an unknown command", () => {
    const r = run("server.ts", ["serve-please"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown command");
  });

  test.each([["bun run server.ts", []], ["bun run dev", ["dev"]]])("%s on a port another process holds names the port and what to do, without a stack trace", (_, args) => {
    using cwd = tempDir("cr-port-");
    const holder = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("taken") });
    try {
      const port = holder.port!;
      const r = run("server.ts", args, { AUTH_TOKEN: newToken(), PORT: String(port), DATABASE_PATH: path.join(cwd.path, "relay.db") }, cwd.path);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`port ${port} on 127.0.0.1 is already in use by another process`);
      expect(r.stderr).toContain(`lsof -i :${port}`);
      expect(r.stderr).toContain(`PORT=${port + 1}`);
      expect(r.stderr).not.toContain("Failed to start server"); // Bun's own words, with its stack trace
      expect(r.stdout).not.toContain("MCP URL");
    } finally {
      holder.stop(true);
    }
  });
});

describe("agent.ts", () => {
  test("--help explains the settings and the security boundary", () => {
    const r = run("agent.ts", ["--help"]);
    expect(r.code).toBe(0);
    for (const word of ["RELAY_URL", "AGENT_TOKEN", "MACHINE_NAME", "ALLOWED_ROOTS", "MAX_CONCURRENT_COMMANDS"]) expect(r.stdout).toContain(word);
    expect(r.stdout).toContain("run_shell_command runs anything this user can run");
  });

  test("--version prints the version", () => {
    expect(run("agent.ts", ["--version"]).stdout.trim()).toBe("0.1.0");
  });

  test("refuses to start without RELAY_URL, saying what to set", () => {
    const r = run("agent.ts", [], { AGENT_TOKEN: "x" });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("RELAY_URL is not set");
  });

  test("refuses a RELAY_URL that carries a token in its query", () => {
    const r = run("agent.ts", [], { RELAY_URL: "wss://relay.example/ws/agent?token=abc", AGENT_TOKEN: "x" });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("must not carry a query");
    expect(r.stderr).not.toContain("abc");
  });

  test("refuses an invalid MACHINE_NAME", () => {
    const r = run("agent.ts", [], { RELAY_URL: "ws://127.0.0.1:1/ws/agent", AGENT_TOKEN: "x", MACHINE_NAME: "bad name!" });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("MACHINE_NAME 'bad name!' is not valid");
  });
});

/** `bun run server.ts dev` in a fresh directory, on a free port; its stderr is read (so a full pipe never blocks it)
 *  and shown if a wait fails. `env` may set HOME, where its agent keeps its state by default. Disposing kills it. */
function startDev(cwd: string, machine: string, env: Record<string, string> = {}) {
  const dev = Bun.spawn([process.execPath, "run", path.join(ROOT, "server.ts"), "dev"], {
    cwd,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME!, PORT: "0", MACHINE_NAME: machine, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { dev, logs: new OutputLog(dev.stderr), [Symbol.dispose]: () => dev.kill("SIGKILL") };
}

/** Waits for dev's banner on its stdout and returns it with the MCP URL and token it names. */
async function devBanner(dev: Bun.Subprocess<"ignore", "pipe", "pipe">) {
  const reader = dev.stdout.getReader();
  let banner = "";
  while (!banner.includes("--method tools/list")) banner += new TextDecoder().decode((await reader.read()).value);
  reader.releaseLock();
  return { banner, url: /MCP URL\s+(\S+)/.exec(banner)![1]!, token: /Token\s+([0-9a-f]{64})/.exec(banner)![1]! };
}

/** Resolves with the exit status, or with "still running" after `ms`. */
const exitWithin = (proc: Bun.Subprocess, ms: number) => Promise.race([proc.exited, Bun.sleep(ms).then(() => "still running" as const)]);

describe("the developer's entry points", () => {
  test.each([
    ["scripts/build.ts", "Usage: bun run build"],
    ["bench/run.ts", "Usage: bun run bench"],
    ["test/load/run.ts", "Usage: bun run test:load"],
  ])("%s --help prints its usage and exits 0; an unknown option is named, with exit 2", (file, usage) => {
    const help = run(file, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(usage);
    const wrong = run(file, ["--no-such-option"]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain("'--no-such-option'");
  });
});

describe("bun run dev", () => {
  test("starts a server and a local agent, prints ready-to-paste lines, works with the MCP Inspector, and stops on one Ctrl-C", async () => {
    using cwd = tempDir("cr-dev-");
    using started = startDev(cwd.path, "devbox");
    const { dev, logs } = started;
    const { banner, url, token } = await devBanner(dev);
    expect(banner).toContain(`claude mcp add --transport http code-remote ${url} --header "Authorization: Bearer ${token}"`);
    expect(fs.readFileSync(path.join(cwd.path, "data/dev-token"), "utf8").trim()).toBe(token);
    expect(fs.statSync(path.join(cwd.path, "data/dev-token")).mode & 0o777).toBe(0o600);
    expect(fs.existsSync(path.join(cwd.path, "data/code-remote.db"))).toBe(true);

    const inspector = async (...args: string[]) => {
      const proc = Bun.spawn(["npx", "-y", "@modelcontextprotocol/inspector@2.12.0", "--cli", url, "--header", `Authorization: Bearer ${token}`, ...args], {
        stdout: "pipe",
        stderr: "ignore",
      });
      const out = await new Response(proc.stdout).text();
      expect(await proc.exited).toBe(0);
      return JSON.parse(out);
    };
    await logs.waitFor(/agent info connected/, 10_000);
    const listed = await inspector("--method", "tools/list");
    expect(listed.tools.map((t: { name: string }) => t.name)).toContain("run_shell_command");
    const called = await inspector("--method", "tools/call", "--tool-name", "run_shell_command", "--tool-arg", "command=echo via-inspector");
    expect(called.structuredContent).toMatchObject({ stdout: "via-inspector\n", exit_code: 0, machine: "devbox" });

    const [agentPid] = childrenOf(dev.pid);
    expect(agentPid).toBeDefined();
    dev.kill("SIGINT");
    expect(await dev.exited).toBe(0);
    await eventually(() => !isAlive(agentPid!), 3_000, "agent stopped");
  }, 120_000);

  test("if the dev server is killed outright, its agent stops too instead of holding the machine's name", async () => {
    using cwd = tempDir("cr-dev-");
    using started = startDev(cwd.path, "devbox-orphan");
    const { dev, logs } = started;
    await logs.waitFor(/agent info connected/, 10_000);
    const [agentPid] = childrenOf(dev.pid);
    dev.kill("SIGKILL");
    await eventually(() => !isAlive(agentPid!), 5_000, "orphaned agent stopped");
  }, 120_000);

  test("its agent connects with a per-machine token dev made for it (kept private in ./data), and never holds AUTH_TOKEN", async () => {
    using cwd = tempDir("cr-dev-");
    const authToken = newToken();
    using started = startDev(cwd.path, "devbox-own", { AUTH_TOKEN: authToken });
    const { dev, logs } = started;
    await devBanner(dev);
    expect(await logs.waitFor(/agent connected machine="devbox-own"/)).toContain('credential="machine token"');
    const file = path.join(cwd.path, "data/dev-agent-token");
    const agentToken = fs.readFileSync(file, "utf8").trim();
    expect(agentToken).toStartWith("crm_");
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    // The commands it runs can read its environment: only its own token is there.
    const [agentPid] = childrenOf(dev.pid);
    const environment = fs.readFileSync(`/proc/${agentPid}/environ`, "utf8").split("\0");
    expect(environment).toContain(`AGENT_TOKEN=${agentToken}`);
    expect(environment.filter((entry) => entry.includes(authToken))).toEqual([]);

    // A restart keeps the token (an agent beside a restarted relay, like the compose sandbox, still holds a valid one).
    dev.kill("SIGINT");
    expect(await dev.exited).toBe(0);
    using again = startDev(cwd.path, "devbox-own", { AUTH_TOKEN: authToken });
    await devBanner(again.dev);
    expect(fs.readFileSync(file, "utf8").trim()).toBe(agentToken);
  });

  test("when its agent cannot start (another agent holds the machine's name), dev says so and why, prints no banner, and exits 1", async () => {
    using cwd = tempDir("cr-dev-");
    using home = tempDir("cr-home-");
    // An agent already running as 'devbox-busy' with the same HOME, so the same state directory (as an installed
    // service would be); it dials a port where nothing listens and keeps retrying.
    await using _blocker = spawnProgram([process.execPath, "run", path.join(ROOT, "agent.ts")], {
      env: { HOME: home.path, MACHINE_NAME: "devbox-busy", RELAY_URL: "ws://127.0.0.1:1/ws/agent", AGENT_TOKEN: newToken(), CODE_REMOTE_PARENT_PID: String(process.pid) },
    });
    const lock = path.join(home.path, ".local/state/code-remote/devbox-busy/agent.pid");
    await eventually(() => fs.existsSync(lock), 10_000, "the first agent holds its state directory");
    using started = startDev(cwd.path, "devbox-busy", { HOME: home.path });
    const { dev, logs } = started;
    const stdout = new Response(dev.stdout).text();
    expect(await exitWithin(dev, 20_000)).toBe(1);
    await logs.waitFor(/did not start/);
    expect(logs.text).toContain("code-remote dev: the local agent (machine 'devbox-busy') did not start: it exited with code 2");
    expect(logs.text).toMatch(/Its last lines:\n\s+code-remote-agent: Another agent \(pid \d+\) is already running as 'devbox-busy'/);
    expect(logs.text).toContain("MACHINE_NAME=devbox-busy-dev bun run dev");
    expect(await stdout).not.toContain("MCP URL");
  });

  test("when its agent stops later, dev says so and exits 1 instead of serving with no machine", async () => {
    using cwd = tempDir("cr-dev-");
    using started = startDev(cwd.path, "devbox-dies");
    const { dev, logs } = started;
    await devBanner(dev);
    await logs.waitFor(/agent info connected/);
    const [agentPid] = childrenOf(dev.pid);
    process.kill(agentPid!, "SIGKILL");
    expect(await exitWithin(dev, 10_000)).toBe(1);
    await logs.waitFor(/stopped: it was killed \(SIGKILL\)/);
    expect(logs.text).toContain("dev is stopping");
  });

  test("a call while its agent is cut off says to look at dev's output, not to install an agent", async () => {
    using cwd = tempDir("cr-dev-");
    using started = startDev(cwd.path, "devbox-cut");
    const { dev, logs } = started;
    const { url, token } = await devBanner(dev);
    await logs.waitFor(/agent info connected/);
    // Revoking its token cuts the agent off within a second; it stays alive, retrying, so dev goes on.
    const revoked = run("server.ts", ["agent-token", "revoke", "devbox-cut"], { DATABASE_PATH: path.join(cwd.path, "data/code-remote.db") });
    expect(revoked.code).toBe(0);
    await logs.waitFor(/agent disconnected machine="devbox-cut"/);
    await using client = await connectClient({ url: new URL(url), token }, "streamable-http");
    const status = await call(client, "check_agent_status", {});
    expect(status.text).toContain("this relay is `bun run dev`, and its own agent is not connected right now");
    expect(status.text).toContain("The terminal running bun run dev shows why");
    expect(status.text).not.toContain("code-remote-agent");
    const shell = await call(client, "run_shell_command", { command: "true" });
    expect(shell.isError).toBe(true);
    expect(shell.text).toContain("this relay is `bun run dev`");
  });
});
