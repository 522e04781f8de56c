// Real processes for end-to-end tests: the relay (server.ts) and agents (agent.ts) as child processes on
// loopback, and MCP clients from the SDKs over each transport. Everything returned is AsyncDisposable, so a
// test writes `await using relay = await startRelay()` and the processes die with the scope.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Client as ModernClient, StreamableHTTPClientTransport as ModernHTTPTransport, type FetchLike } from "@modelcontextprotocol/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

export const ROOT = path.resolve(import.meta.dir, "../..");
const BUN = process.execPath;

/** Output of a child process, line by line, with a way to wait for a line. */
export class OutputLog {
  readonly lines: string[] = [];
  #waiters: { pattern: RegExp; resolve: (line: string) => void; reject: (error: Error) => void }[] = [];
  #ended = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    void this.#read(stream);
  }

  get text() {
    return this.lines.join("\n");
  }

  /** Resolves with the first line (already seen or yet to come) that matches, or rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs = 10_000, from = 0): Promise<string> {
    const seen = this.lines.slice(from).find((l) => pattern.test(l));
    if (seen) return Promise.resolve(seen);
    if (this.#ended) return Promise.reject(new Error(`the process ended without a line matching ${pattern}; its output:\n${this.text}`));
    return new Promise((resolve, reject) => {
      const waiter = {
        pattern,
        resolve: (line: string) => (clearTimeout(timer), resolve(line)),
        reject: (error: Error) => (clearTimeout(timer), reject(error)),
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms; output so far:\n${this.text}`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  async #read(stream: ReadableStream<Uint8Array>) {
    let partial = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      const pieces = (partial + decoder.decode(chunk, { stream: true })).split("\n");
      partial = pieces.pop() ?? "";
      for (const line of pieces) this.#push(line);
    }
    if (partial) this.#push(partial);
    // The process is gone: nobody will print what the waiters wait for, so fail them now with what it did print.
    this.#ended = true;
    for (const waiter of this.#waiters.splice(0)) waiter.reject(new Error(`the process ended without a line matching ${waiter.pattern}; its output:\n${this.text}`));
  }

  #push(line: string) {
    this.lines.push(line);
    for (const waiter of this.#waiters.filter((w) => w.pattern.test(line))) {
      this.#waiters = this.#waiters.filter((w) => w !== waiter);
      waiter.resolve(line);
    }
  }
}

export interface ChildProcess extends AsyncDisposable {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  /** stdout and stderr together, in arrival order per stream. */
  stdout: OutputLog;
  stderr: OutputLog;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<number>;
  /** Sends SIGKILL and waits for the exit. */
  kill(): Promise<void>;
}

/** Children run from a neutral directory, so a developer's .env in the repository (Bun loads it from the working
 *  directory) never leaks into a test. */
export const NEUTRAL_CWD = os.tmpdir();

export interface ProgramOptions {
  /** Added to a minimal PATH and HOME; nothing else of this process's environment is passed on. */
  env?: Record<string, string>;
  /** Working directory (default: a neutral one, so no .env or bunfig.toml is picked up by accident). */
  cwd?: string;
}

/** A minimal PATH and HOME plus `extra`: nothing else of this process's environment (no token of the developer's)
 *  reaches a program a test starts. */
export const minimalEnv = (extra: Record<string, string> = {}) => ({ PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? os.homedir(), ...extra });

/** Any program as a child process with piped stdout and stderr (a compiled agent binary, a peer server on node, a
 *  load generator); dispose (or stop) sends SIGTERM and waits for the exit. */
export function spawnProgram(argv: string[], options: ProgramOptions = {}): ChildProcess {
  const proc = Bun.spawn(argv, {
    cwd: options.cwd ?? NEUTRAL_CWD,
    env: minimalEnv(options.env),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  const stop = async () => {
    if (alive()) proc.kill("SIGTERM");
    return proc.exited;
  };
  return {
    proc,
    stdout: new OutputLog(proc.stdout),
    stderr: new OutputLog(proc.stderr),
    stop,
    kill: async () => {
      if (alive()) proc.kill("SIGKILL");
      await proc.exited;
    },
    [Symbol.asyncDispose]: async () => {
      if (alive()) await stop();
    },
  };
}

/** `bun <argv>` (a script of this repository) as a child process. */
const spawnChild = (argv: string[], env: Record<string, string>) => spawnProgram([BUN, ...argv], { env });

/** A fresh strong token, as `openssl rand -hex 32` would make. */
export const newToken = () => randomBytes(32).toString("hex");

/** A port that was free a moment ago (for tests that restart a server on the same port). */
export function freePort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** A temporary directory (real path), removed on dispose. */
export function tempDir(prefix = "cr-test-"): { path: string } & Disposable {
  const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), prefix)));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export interface Relay extends ChildProcess {
  url: URL;
  port: number;
  token: string;
  databasePath: string;
  env: Record<string, string>;
}

export interface RelayOptions {
  token?: string;
  port?: number;
  databasePath?: string;
  env?: Record<string, string>;
}

/** Starts server.ts on loopback and waits until it listens. */
export async function startRelay(options: RelayOptions = {}): Promise<Relay> {
  const token = options.token ?? newToken();
  const databasePath = options.databasePath ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), "cr-db-")), "audit.db");
  const env = { AUTH_TOKEN: token, PORT: String(options.port ?? 0), HOST: "127.0.0.1", DATABASE_PATH: databasePath, ...options.env };
  const child = spawnChild(["run", path.join(ROOT, "server.ts")], env);
  const line = await child.stderr.waitFor(/listening url=/);
  const url = new URL(JSON.parse(/url=("[^"]+")/.exec(line)![1]!));
  return { ...child, url, port: Number(url.port), token, databasePath, env };
}

export interface Agent extends ChildProcess {
  machine: string;
  roots: string[];
}

export interface AgentOptions {
  machine?: string;
  /** ALLOWED_ROOTS entries (default: a fresh temp directory). */
  roots?: string[];
  token?: string;
  env?: Record<string, string>;
  /** Wait for the "connected" log line (default true). */
  waitConnected?: boolean;
  /** AGENT_STATE_DIR (default: a fresh temp directory, so agents in tests never share command state). */
  stateDir?: string;
  /** The relay's host in RELAY_URL (default 127.0.0.1; "localhost" for passkeys: an IP address cannot be an RP ID). */
  relayHost?: string;
}

/** A test agent's machine name, roots and settings, dialing `relayHost` (default: loopback) at the relay's port. */
export function agentSettings(relay: Pick<Relay, "port" | "token">, options: AgentOptions = {}, relayHost = options.relayHost ?? "127.0.0.1") {
  const machine = options.machine ?? `m-${randomBytes(3).toString("hex")}`;
  const roots = options.roots ?? [fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-root-")))];
  const env = {
    RELAY_URL: `ws://${relayHost}:${relay.port}/ws/agent`,
    AGENT_TOKEN: options.token ?? relay.token,
    MACHINE_NAME: machine,
    ALLOWED_ROOTS: roots.join(":"),
    SHELL: "/bin/sh",
    AGENT_STATE_DIR: options.stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "cr-state-")),
    // A directory that does not exist, so a developer's own ~/.config/code-remote/agent.env never reaches a test agent.
    XDG_CONFIG_HOME: path.join(os.tmpdir(), "cr-no-config", randomBytes(6).toString("hex")),
    // The agent stops if this test process dies without stopping it, so no agent outlives a killed test run.
    CODE_REMOTE_PARENT_PID: String(process.pid),
    ...options.env,
  };
  return { machine, roots, env };
}

/** Starts agent.ts against a relay and waits until it has registered. */
export async function startAgent(relay: Relay, options: AgentOptions = {}): Promise<Agent> {
  const { machine, roots, env } = agentSettings(relay, options);
  const child = spawnChild(["run", path.join(ROOT, "agent.ts")], env);
  if (options.waitConnected !== false) await child.stderr.waitFor(/agent info connected/);
  return { ...child, machine, roots };
}

/** How a test client reaches the relay: the v1 SDK client (1.32.2) in a 2025 session over Streamable HTTP or over the
 *  legacy SSE transport, or the v2 client negotiating by itself, which speaks 2026-07-28 (no session). */
export type TransportKind = "streamable-http" | "sse" | "modern";
export const TRANSPORTS: TransportKind[] = ["streamable-http", "sse", "modern"];

/** What tests use of an MCP client, whichever SDK made it, in the v1 client's shape (callTool takes a result
 *  schema before its options). */
export type McpClient = Pick<Client, "callTool" | "listTools" | "close"> & { transport?: { sessionId?: string } };

/** An MCP client from an SDK, connected to the relay over the given transport with the bearer token. */
export async function connectClient(relay: Pick<Relay, "url" | "token">, kind: "streamable-http" | "sse", token?: string): Promise<Client & AsyncDisposable>;
export async function connectClient(relay: Pick<Relay, "url" | "token">, kind: TransportKind, token?: string): Promise<McpClient & AsyncDisposable>;
export async function connectClient(relay: Pick<Relay, "url" | "token">, kind: TransportKind, token = relay.token): Promise<McpClient & AsyncDisposable> {
  const headers = { Authorization: `Bearer ${token}` };
  if (kind === "modern") return connectModernClient(relay, { headers });
  const transport =
    kind === "streamable-http"
      ? new StreamableHTTPClientTransport(new URL("/mcp", relay.url), { requestInit: { headers } })
      : new SSEClientTransport(new URL("/sse", relay.url), {
          requestInit: { headers },
          eventSourceInit: { fetch: (url, init) => fetch(url, { ...init, headers: { ...(init?.headers as Record<string, string>), ...headers } }) },
        });
  const client = new Client({ name: "code-remote-test", version: "1.0.0" });
  await client.connect(transport);
  return Object.assign(client, { [Symbol.asyncDispose]: () => client.close() });
}

export interface ModernClientOptions {
  headers: Record<string, string>;
  /** "auto" (default) probes with server/discover and speaks 2026-07-28; "legacy" opens a 2025 session. */
  mode?: "auto" | "legacy";
  /** Sees every HTTP request the client makes (to count round trips). */
  fetch?: FetchLike;
}

/** The v2 SDK's client (2.4.0) on /mcp, as an McpClient; `sdk` is the client itself. */
export async function connectModernClient(
  relay: Pick<Relay, "url">,
  options: ModernClientOptions,
): Promise<McpClient & AsyncDisposable & { sdk: ModernClient }> {
  const client = new ModernClient({ name: "code-remote-test", version: "1.0.0" }, { versionNegotiation: { mode: options.mode ?? "auto" } });
  await client.connect(new ModernHTTPTransport(new URL("/mcp", relay.url), { requestInit: { headers: options.headers }, fetch: options.fetch }));
  return {
    sdk: client,
    callTool: ((params, _resultSchema, requestOptions) => client.callTool(params, requestOptions)) as Client["callTool"],
    listTools: ((params, requestOptions) => client.listTools(params, requestOptions)) as Client["listTools"],
    close: () => client.close(),
    [Symbol.asyncDispose]: () => client.close(),
  };
}

/** The process ids of every process whose command line contains `marker` (ps, as a user would look). */
export function pidsMatching(marker: string): number[] {
  const ps = Bun.spawnSync(["ps", "-eo", "pid=,args="]).stdout.toString();
  return ps
    .split("\n")
    .filter((line) => line.includes(marker) && !line.includes("ps -eo"))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

/** Waits until `check` returns true, polling every 50 ms, or throws after `timeoutMs`. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await Bun.sleep(50);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}
