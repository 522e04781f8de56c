// The entry points as a user meets them: --help and --version, refusals to start with a clear reason, and
// `bun run dev` (server plus local agent, one Ctrl-C) checked with the real MCP Inspector CLI.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { eventually, NEUTRAL_CWD, OutputLog, ROOT, tempDir } from "../helpers/processes.ts";

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
function run(file: string, args: string[], env: Record<string, string> = {}) {
  const result = Bun.spawnSync([process.execPath, "run", path.join(ROOT, file), ...args], {
    cwd: NEUTRAL_CWD,
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

/** `bun run server.ts dev` in a fresh directory, on a free port; its stderr is read (so a full pipe never blocks
 *  it) and shown if a wait fails. */
function startDev(cwd: string, machine: string) {
  const dev = Bun.spawn([process.execPath, "run", path.join(ROOT, "server.ts"), "dev"], {
    cwd,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME!, PORT: "0", MACHINE_NAME: machine },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { dev, logs: new OutputLog(dev.stderr) };
}

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
    const { dev, logs } = startDev(cwd.path, "devbox");
    try {
      const reader = dev.stdout.getReader();
      let banner = "";
      while (!banner.includes("--method tools/list")) banner += new TextDecoder().decode((await reader.read()).value);
      const url = /MCP URL\s+(\S+)/.exec(banner)![1]!;
      const token = /Token\s+([0-9a-f]{64})/.exec(banner)![1]!;
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
    } finally {
      dev.kill("SIGKILL");
    }
  }, 120_000);

  test("if the dev server is killed outright, its agent stops too instead of holding the machine's name", async () => {
    using cwd = tempDir("cr-dev-");
    const { dev, logs } = startDev(cwd.path, "devbox-orphan");
    try {
      await logs.waitFor(/agent info connected/, 10_000);
      const [agentPid] = childrenOf(dev.pid);
      dev.kill("SIGKILL");
      await eventually(() => !isAlive(agentPid!), 5_000, "orphaned agent stopped");
    } finally {
      dev.kill("SIGKILL");
    }
  }, 120_000);
});
