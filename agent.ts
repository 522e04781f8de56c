// The Code Remote agent: a daemon on each machine that dials out to the relay over a WebSocket (it opens no
// port), runs shell commands with Bun.spawn in their own process group, and reads and writes files inside an
// allowlist of directories. The allowlist confines the file tools only: run_shell_command runs anything the
// agent's user can run. Every frame from the relay is treated as untrusted input and validated with the
// schemas in protocol.ts. Compiled with `bun build --compile` into one executable per OS and architecture.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  AGENT_OPS,
  CloseCode,
  Failure,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  MachineName,
  PROTOCOL_VERSION,
  ServerFrame,
  VERSION,
  parseFrame,
  type AgentError,
  type AgentFrame,
  type AgentOp,
  type AgentStatus,
  type OpArgs,
  type OpResult,
  type RequestFrame,
} from "./protocol.ts";
import { KILL_GRACE_MS, killGroup, runningGroups, runShellCommand, Slots } from "./commands.ts";
import { listDirectory, readFile, writeFile } from "./files.ts";

// --- constants ---

/** Reconnect backoff: 1 s doubling to 30 s, with jitter; 60 s after being replaced by another agent. */
const RECONNECT_BASE_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;
const REPLACED_BACKOFF_MS = 60_000;

// --- config ---

export interface AgentConfig {
  relayUrl: string;
  token: string;
  machine: string;
  /** Real paths of the allowed roots (resolved once at start: /tmp is /private/tmp on macOS). */
  roots: string[];
  home: string;
  shell: string;
  maxConcurrentCommands: number;
}

/** Environment variables the agent reads; `--help` prints this table. */
const ENV_HELP: [string, string][] = [
  ["RELAY_URL", "Relay WebSocket URL, e.g. wss://relay.example.com/ws/agent (required)"],
  ["AGENT_TOKEN", "Credential for the relay; AUTH_TOKEN is used when it is unset (required)"],
  ["MACHINE_NAME", "Name the assistant uses for this machine (default: the host name)"],
  ["ALLOWED_ROOTS", "Directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)"],
  ["MAX_CONCURRENT_COMMANDS", "Commands run at once; more wait in a queue (default 8)"],
  ["SHELL", "Shell for run_shell_command (default /bin/sh)"],
];

const USAGE = `code-remote-agent ${VERSION}: lets an AI assistant run commands and edit files on this machine,
through a Code Remote relay. It dials out to the relay; it opens no port.

Usage: code-remote-agent [--help | --version]

Configuration (environment variables, or a .env file in the working directory when run with bun):
${ENV_HELP.map(([k, v]) => `  ${k.padEnd(24)} ${v}`).join("\n")}

Security: run_shell_command runs anything this user can run. Only the file tools are confined to
ALLOWED_ROOTS. Commands can read this agent's own credentials like any secret of this user; for real
isolation run the sandboxed Docker agent.`;

export class ConfigError extends Error {}

/** Reads the agent configuration from the environment. Throws ConfigError with a message that says what to fix. */
export function loadConfig(env: Record<string, string | undefined>): AgentConfig {
  const relayUrl = parseRelayUrl(env.RELAY_URL);
  const token = env.AGENT_TOKEN || env.AUTH_TOKEN;
  if (!token) throw new ConfigError("AGENT_TOKEN (or AUTH_TOKEN) is not set: use the token the relay gave you.");
  const home = os.homedir();
  const machine = env.MACHINE_NAME || defaultMachineName();
  if (!MachineName.safeParse(machine).success) {
    throw new ConfigError(`MACHINE_NAME '${machine}' is not valid: use 1-64 letters, digits, '.', '_' or '-'.`);
  }
  const roots = resolveRoots(env.ALLOWED_ROOTS ? env.ALLOWED_ROOTS.split(":") : [home, "/tmp", "/var/tmp"], home);
  const maxConcurrentCommands = Number(env.MAX_CONCURRENT_COMMANDS ?? 8);
  if (!Number.isInteger(maxConcurrentCommands) || maxConcurrentCommands < 1) {
    throw new ConfigError("MAX_CONCURRENT_COMMANDS must be a whole number of at least 1.");
  }
  return { relayUrl, token, machine, roots, home, shell: pickShell(env.SHELL), maxConcurrentCommands };
}

function parseRelayUrl(raw: string | undefined): string {
  if (!raw) throw new ConfigError("RELAY_URL is not set: e.g. RELAY_URL=ws://127.0.0.1:8080/ws/agent");
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError("RELAY_URL is not a URL: e.g. RELAY_URL=wss://relay.example.com/ws/agent");
  }
  if (url.protocol === "https:") url.protocol = "wss:";
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new ConfigError("RELAY_URL must start with ws:// or wss://.");
  // A credential in the URL ends up in proxy and server logs; the token travels only in the Authorization header.
  if (url.search || url.username || url.password) {
    throw new ConfigError("RELAY_URL must not carry a query or credentials; the token goes in AGENT_TOKEN.");
  }
  if (url.pathname === "/" || url.pathname === "") url.pathname = "/ws/agent";
  return url.toString();
}

function defaultMachineName(): string {
  const name = os.hostname().replace(/\.local$/, "").replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return name.slice(0, 64) || "machine";
}

/** Resolves each root with realpath once; a root that does not exist is skipped, and none at all is an error. */
function resolveRoots(raw: string[], home: string): string[] {
  const roots: string[] = [];
  for (const entry of raw.map((r) => r.trim()).filter(Boolean)) {
    const expanded = entry === "~" ? home : entry.startsWith("~/") ? path.join(home, entry.slice(2)) : entry;
    if (!path.isAbsolute(expanded)) throw new ConfigError(`ALLOWED_ROOTS entry '${entry}' is not an absolute path.`);
    try {
      const real = fs.realpathSync(expanded);
      if (!roots.includes(real)) roots.push(real);
    } catch {
      log("warn", "allowed root does not exist; skipped", { root: entry });
    }
  }
  if (roots.length === 0) throw new ConfigError("None of ALLOWED_ROOTS exists; name at least one existing directory.");
  return roots;
}

function pickShell(shell: string | undefined): string {
  if (shell && path.isAbsolute(shell)) {
    try {
      fs.accessSync(shell, fs.constants.X_OK);
      return shell;
    } catch {
      log("warn", "SHELL is not executable; using /bin/sh", { shell });
    }
  }
  return "/bin/sh";
}

// --- logging ---

/** One line per event on stderr: time, level, message, key=value fields. Callers never pass secrets. */
function log(level: "info" | "warn" | "error", message: string, fields: Record<string, unknown> = {}): void {
  const parts = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  console.error([new Date().toISOString(), "agent", level, message, ...parts].join(" "));
}

// --- dispatch ---

/** What every operation gets: the request's abort signal and arrival time, the configuration, the command slots. */
interface OpContext {
  signal: AbortSignal;
  receivedAt: number;
  config: AgentConfig;
  slots: Slots;
}

function agentStatus(ctx: OpContext): AgentStatus {
  return {
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: ctx.config.shell,
    hostname: os.hostname(),
    allowed_roots: ctx.config.roots,
    pid: process.pid,
    uptime_s: Math.round(process.uptime()),
    running_commands: runningGroups.size,
    queued_commands: ctx.slots.queued,
  };
}

type Handler<O extends AgentOp> = (args: OpArgs<O>, ctx: OpContext) => Promise<OpResult<O>> | OpResult<O>;

const HANDLERS: { [O in AgentOp]: Handler<O> } = {
  run_shell_command: (args, ctx) => runShellCommand(args, { ...ctx, ...ctx.config }),
  read_file: (args, ctx) => readFile(args, ctx.config),
  write_file: (args, ctx) => writeFile(args, ctx.config),
  list_directory: (args, ctx) => listDirectory(args, ctx.config),
  status: (_args, ctx) => agentStatus(ctx),
};

const errorResult = (id: string, error: AgentError): AgentFrame => ({ type: "result", id, ok: false, error });

/** Validates a request's arguments with the op's schema, runs it, and builds the one result frame. */
export async function execute(frame: RequestFrame, ctx: OpContext): Promise<AgentFrame> {
  const parsed = AGENT_OPS[frame.op].args.safeParse(frame.args);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "arguments"}: ${i.message}`).join("; ");
    return errorResult(frame.id, { code: "invalid_arguments", message: issues.slice(0, 1000) });
  }
  try {
    const handler = HANDLERS[frame.op] as Handler<AgentOp>;
    return { type: "result", id: frame.id, ok: true, value: await handler(parsed.data as never, ctx) };
  } catch (e) {
    if (e instanceof Failure) return errorResult(frame.id, { code: e.code, message: e.message });
    log("error", "operation failed unexpectedly", { op: frame.op, error: String(e) });
    return errorResult(frame.id, { code: "internal", message: "The agent hit an unexpected error; its log has the details." });
  }
}

// --- connection ---

/** Reconnect delay after `attempt` failures in a row: 1 s doubling to 30 s, with the upper half jittered so
 *  that many agents do not reconnect in step after a relay restart. Pure, for tests. */
export function nextDelayMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

interface Runtime {
  config: AgentConfig;
  slots: Slots;
  /** Aborted once, on SIGINT/SIGTERM: wakes the backoff sleep and ends the loop. */
  stopping: AbortController;
  /** Closes the live connection, if any. */
  closeConnection?: (code: number, reason: string) => void;
}

interface ConnectionEnd {
  registered: boolean;
  code: number;
  reason: string;
}

function helloFrame(config: AgentConfig): AgentFrame {
  return {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    machine: config.machine,
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: config.shell,
    hostname: os.hostname(),
    allowed_roots: config.roots,
  };
}

/** One connection: dial, say hello, serve requests until the socket closes or falls silent. Never throws. */
function connectOnce(rt: Runtime): Promise<ConnectionEnd> {
  const { config } = rt;
  return new Promise((resolve) => {
    const ws = new WebSocket(config.relayUrl, { headers: { Authorization: `Bearer ${config.token}` } });
    const inflight = new Map<string, AbortController>();
    let registered = false;
    let lastHeard = Date.now();
    let ended = false;
    const send = (frame: AgentFrame) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
    };
    const end = (code: number, reason: string) => {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      // The relay has already failed these calls for its clients; nobody will read their results.
      for (const controller of inflight.values()) controller.abort();
      rt.closeConnection = undefined;
      resolve({ registered, code, reason });
    };
    const heartbeat = setInterval(() => {
      if (Date.now() - lastHeard > HEARTBEAT_TIMEOUT_MS) {
        ws.terminate();
        end(CloseCode.heartbeatTimeout, "the relay fell silent");
        return;
      }
      send({ type: "ping", t: Date.now() });
    }, HEARTBEAT_INTERVAL_MS);
    const ctx = (signal: AbortSignal): OpContext => ({ signal, receivedAt: Date.now(), config, slots: rt.slots });

    const onFrame = (data: unknown) => {
      const parsed = parseFrame(ServerFrame, data as string);
      if (!parsed.ok) {
        log("warn", "closing: the relay sent a bad frame", { reason: parsed.reason });
        ws.close(CloseCode.protocolError, parsed.reason);
        return;
      }
      const frame = parsed.frame;
      switch (frame.type) {
        case "welcome":
          registered = true;
          log("info", "connected", { relay: config.relayUrl, machine: frame.machine });
          return;
        case "request":
          return startRequest(frame);
        case "cancel":
          inflight.get(frame.id)?.abort();
          return;
        case "ping":
          return send({ type: "pong", t: frame.t });
        case "pong":
          return;
      }
    };

    const startRequest = (frame: RequestFrame) => {
      if (!registered || inflight.has(frame.id)) {
        send(errorResult(frame.id, { code: "invalid_arguments", message: "request before welcome, or a duplicate id" }));
        return;
      }
      const controller = new AbortController();
      inflight.set(frame.id, controller);
      const started = performance.now();
      void execute(frame, ctx(controller.signal)).then((result) => {
        inflight.delete(frame.id);
        send(result);
        const outcome = result.type === "result" && !result.ok ? result.error.code : "ok";
        log("info", "call", { op: frame.op, id: frame.id, outcome, ms: Math.round(performance.now() - started) });
      });
    };

    ws.addEventListener("open", () => {
      lastHeard = Date.now();
      send(helloFrame(config));
    });
    ws.addEventListener("message", (event) => {
      lastHeard = Date.now();
      onFrame(event.data);
    });
    ws.addEventListener("close", (event) => end(event.code, event.reason));
    rt.closeConnection = (code, reason) => ws.close(code, reason);
  });
}

/** Connects forever: backoff with jitter between attempts, reset after a connection that registered. */
async function runForever(rt: Runtime): Promise<void> {
  let failures = 0;
  while (!rt.stopping.signal.aborted) {
    const result = await connectOnce(rt);
    if (rt.stopping.signal.aborted) return;
    failures = result.registered ? 0 : failures + 1;
    let delay = nextDelayMs(Math.max(0, failures - 1));
    if (result.code === CloseCode.replaced) {
      log("warn", "another agent connected with this machine name; waiting before trying again", {
        machine: rt.config.machine,
        seconds: REPLACED_BACKOFF_MS / 1000,
      });
      delay = REPLACED_BACKOFF_MS;
    } else if (result.registered) {
      log("warn", "disconnected", { code: result.code, reason: result.reason, retry_ms: delay });
    } else {
      log("warn", "could not register with the relay (is it running, and is the token right?)", {
        relay: rt.config.relayUrl,
        code: result.code,
        reason: result.reason,
        retry_ms: delay,
      });
    }
    await sleepUnlessStopped(delay, rt.stopping.signal);
  }
}

function sleepUnlessStopped(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

// --- lifecycle ---

/** Stops cleanly: running commands are killed (TERM, then KILL to each whole group), the socket is closed. */
async function shutdown(rt: Runtime, signal: string): Promise<never> {
  log("info", "stopping", { signal, running_commands: runningGroups.size });
  rt.stopping.abort();
  const groups = [...runningGroups];
  for (const pgid of groups) killGroup(pgid);
  rt.closeConnection?.(CloseCode.normal, "agent stopping");
  const deadline = Date.now() + KILL_GRACE_MS;
  while (runningGroups.size > 0 && Date.now() < deadline) await Bun.sleep(50);
  // Members that ignored SIGTERM (even after their shell exited) get SIGKILL before we go.
  for (const pgid of groups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  process.exit(0);
}

function isLoopbackUrl(url: string): boolean {
  const host = new URL(url).hostname;
  return host === "localhost" || host === "[::1]" || host.startsWith("127.");
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  if (argv.includes("--version")) {
    console.log(VERSION);
    return 0;
  }
  if (argv.length > 0) {
    console.error(`code-remote-agent: unknown argument '${argv[0]}'. See --help.`);
    return 2;
  }
  let config: AgentConfig;
  try {
    config = loadConfig(process.env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote-agent: ${e.message} See --help.`);
    return 2;
  }
  if (config.relayUrl.startsWith("ws:") && !isLoopbackUrl(config.relayUrl)) {
    log("warn", "RELAY_URL is ws:// to another host: the token travels unencrypted unless this is a private network");
  }
  log("info", "starting", { version: VERSION, machine: config.machine, roots: config.roots, shell: config.shell });
  const rt: Runtime = { config, slots: new Slots(config.maxConcurrentCommands), stopping: new AbortController() };
  process.on("SIGINT", () => void shutdown(rt, "SIGINT"));
  process.on("SIGTERM", () => void shutdown(rt, "SIGTERM"));
  await runForever(rt);
  return 0;
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
