// `bun run dev`: the relay on loopback with a generated token and a local agent as its child process, so one
// command gives a working setup to try with Claude Code or the MCP Inspector. The agent is started as a process
// (agent.ts beside server.ts), never imported: the relay's code and the agent's stay apart. It connects with a
// per-machine token dev makes for it, and dev says it is ready only once that agent has registered; if the agent
// exits (another agent already holds its machine name, say), dev says why and stops with a failure status.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MachineName, VERSION } from "../protocol.ts";
import { ConfigError } from "./config.ts";

/** The URL to reach a relay listening on every address (0.0.0.0 or ::) from this machine. */
export function loopbackUrl(url: URL): URL {
  const local = new URL(url);
  if (local.hostname === "0.0.0.0" || local.hostname === "[::]") local.hostname = "127.0.0.1";
  return local;
}

/** The dev token: AUTH_TOKEN if it is set, else one kept in ./data/dev-token (made on first run, mode 0600). */
export function devToken(env: Record<string, string | undefined>, dataDir: string): { token: string; source: string } {
  if (env.AUTH_TOKEN) return { token: env.AUTH_TOKEN, source: "from AUTH_TOKEN" };
  const file = path.join(dataDir, "dev-token");
  if (fs.existsSync(file)) return { token: fs.readFileSync(file, "utf8").trim(), source: `kept in ${file}` };
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const token = randomBytes(32).toString("hex");
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { token, source: `new, kept in ${file}` };
}

export function devBanner(url: URL, token: string, source: string, machine: string): string {
  const mcp = new URL("/mcp", url).toString();
  const header = `"Authorization: Bearer ${token}"`;
  return `
Code Remote ${VERSION} (dev): a relay and a local agent, data in ./data/. Ctrl-C stops both.

  MCP URL      ${mcp}   (legacy SSE: ${new URL("/sse", url)})
  Token        ${token}   (${source})
  Machine      ${machine}   (this machine's agent, connected with its own token)

  Claude Code:
    claude mcp add --transport http code-remote ${mcp} --header ${header}
  MCP Inspector:
    npx -y @modelcontextprotocol/inspector@2.12.0 --cli ${mcp} --header ${header} --method tools/list

  From Claude.ai or a phone: put it behind HTTPS (e.g. ngrok http ${url.port}) and set PUBLIC_URL; see README.
`;
}

// --- the local agent ---

/** Where dev keeps its agent's own per-machine token (handoff.ts), beside the dev token, so a restart reuses it. */
export const devAgentTokenFile = (dataDir: string) => path.join(dataDir, "dev-agent-token");

/** How long dev waits for its agent to register before saying what went wrong; on loopback it takes under a second. */
const AGENT_READY_MS = 15_000;
/** Lines of the agent's output kept to say why it stopped. */
const KEPT_LINES = 8;

/** The relay's own secrets, kept out of its agent's environment: the commands the agent runs can read that. */
const RELAY_SECRETS = ["AUTH_TOKEN", "AGENT_TOKEN", "OWNER_PASSWORD", "TAILSCALE_AUTHKEY"];

/** What a tool call hears under dev when no machine is connected: there, the only agent is dev's own. */
export const DEV_NO_MACHINE_MESSAGE =
  "No machine is connected: this relay is `bun run dev`, and its own agent is not connected right now. The terminal " +
  "running bun run dev shows why (the agent's log lines); fix that and start bun run dev again.";

/** The machine name of dev's agent: MACHINE_NAME, else this host's name made valid. */
export function devMachineName(env: Record<string, string | undefined>): string {
  const name = env.MACHINE_NAME || os.hostname().split(".")[0]!.replace(/[^A-Za-z0-9._-]/g, "-");
  if (!MachineName.safeParse(name).success) throw new ConfigError(`MACHINE_NAME '${name}' is not valid: use 1-64 letters, digits, '.', '_' or '-'.`);
  return name;
}

/** dev's agent as a child process. Its stderr passes through to dev's, and its last lines are kept: when it stops,
 *  they say why (another agent holds the machine's name, the relay refused it), and dev repeats them plainly. */
export class LocalAgent {
  readonly proc;
  readonly #lines: string[] = [];
  readonly #drained: Promise<void>;
  #stopping = false;

  constructor(
    url: URL,
    token: string,
    readonly machine: string,
  ) {
    this.proc = Bun.spawn([process.execPath, "run", path.join(import.meta.dir, "..", "agent.ts")], {
      env: {
        ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !RELAY_SECRETS.includes(name))),
        RELAY_URL: new URL("/ws/agent", url).toString().replace(/^http/, "ws"),
        AGENT_TOKEN: token,
        MACHINE_NAME: machine,
        CODE_REMOTE_PARENT_PID: String(process.pid), // the agent stops if this process dies without stopping it
      },
      stdio: ["ignore", "inherit", "pipe"],
    });
    this.#drained = this.#passThrough(this.proc.stderr);
  }

  /** Stops it (Ctrl-C): its exit is then expected, not a failure. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.proc.kill("SIGTERM");
    await this.proc.exited;
  }

  /** Runs `onReady` once the agent has registered (`registered` says so), then waits; resolves with what to tell the
   *  user when dev cannot go on: the agent exited, before or after registering, or did not register in time. Resolves
   *  with undefined when the agent was stopped on purpose. */
  async failure(registered: () => boolean, onReady: () => void): Promise<string | undefined> {
    const deadline = Date.now() + AGENT_READY_MS;
    while (!registered()) {
      if (this.#stopping) return undefined;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.#gone("did not start");
      if (Date.now() > deadline) {
        this.proc.kill("SIGTERM");
        return this.#explain(`did not connect to the relay within ${AGENT_READY_MS / 1000} s`);
      }
      await Promise.race([this.proc.exited, Bun.sleep(50)]);
    }
    onReady();
    await this.proc.exited;
    return this.#stopping ? undefined : this.#gone("stopped");
  }

  async #gone(what: string): Promise<string> {
    await Promise.race([this.#drained, Bun.sleep(1_000)]); // its last words may still be in the pipe
    const how = this.proc.signalCode ? `was killed (${this.proc.signalCode})` : `exited with code ${this.proc.exitCode}`;
    return this.#explain(`${what}: it ${how}`);
  }

  #explain(what: string): string {
    const said = this.#lines.length ? `Its last lines:\n${this.#lines.map((l) => `    ${l}`).join("\n")}\n` : "It printed nothing.\n";
    return (
      `\ncode-remote dev: the local agent (machine '${this.machine}') ${what}. ${said}` +
      `Without it nothing can run commands, so dev is stopping. Fix what it says and run bun run dev again; to give ` +
      `dev's agent another name: MACHINE_NAME=${this.machine}-dev bun run dev\n`
    );
  }

  async #passThrough(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let partial = "";
    for await (const chunk of stream) {
      process.stderr.write(chunk);
      const pieces = (partial + decoder.decode(chunk, { stream: true })).split("\n");
      partial = pieces.pop() ?? "";
      this.#lines.push(...pieces.filter((line) => line.trim()));
      this.#lines.splice(0, Math.max(0, this.#lines.length - KEPT_LINES));
    }
    if (partial.trim()) this.#lines.push(partial);
  }
}
