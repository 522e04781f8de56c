// The Code Remote agent: a daemon on each machine that dials out to the relay over a WebSocket (it opens no
// port), runs shell commands with Bun.spawn in their own process group, and reads and writes files inside an
// allowlist of directories. The allowlist confines the file tools only: run_shell_command runs anything the
// agent's user can run. Every frame from the relay is treated as untrusted input and validated with the
// schemas in protocol.ts. Compiled with `bun build --compile` into one executable per OS and architecture.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  CloseCode,
  Failure,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  MachineName,
  PROTOCOL_VERSION,
  ServerFrame,
  VERSION,
  opSchemas,
  parseFrame,
  type AgentError,
  type AgentFrame,
  type AgentOp,
  type AgentStatus,
  type OpArgs,
  type OpResult,
  type RequestFrame,
} from "./protocol.ts";
import { CommandRunner } from "./commands.ts";
import { editFile } from "./edit.ts";
import { fileInfo, listDirectory, readFile, writeFile } from "./files.ts";
import { searchFiles } from "./search.ts";
import { MIN_LOG_BYTES, logToFile, logger } from "./log.ts";
import { SUBCOMMANDS, configFilePath, runSubcommand, withConfigFile } from "./service.ts";

const log = logger("agent");

// --- constants ---

/** Reconnect backoff: 1 s doubling to 30 s, with jitter; 60 s after being replaced by another agent. */
const RECONNECT_BASE_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;
const REPLACED_BACKOFF_MS = 60_000;
/** How long setup's connection check waits for the relay's welcome: a relay that is up answers in milliseconds. */
const CHECK_TIMEOUT_MS = 10_000;
/** Log file rotation: 10 MB × 5 files is at most 50 MB of logs, days of a busy agent's calls. */
const LOG_MAX_BYTES = 10 * 1024 * 1024;
const LOG_FILES = 5;

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
  maxBackgroundCommands: number;
  /** Where command records and output logs are kept (one directory per machine name). */
  stateDir: string;
  /** The log file (absolute), rotated by size while running; unset: stderr. */
  log: { file?: string; maxBytes: number; files: number };
}

/** Settings the agent reads, from the environment or its configuration file; `--help` prints this table. */
export const ENV_HELP: [string, string][] = [
  ["RELAY_URL", "Relay WebSocket URL, e.g. wss://relay.example.com/ws/agent (required)"],
  ["AGENT_TOKEN", "Credential for the relay; AUTH_TOKEN is used when it is unset (required)"],
  ["MACHINE_NAME", "Name the assistant uses for this machine (default: the host name)"],
  ["ALLOWED_ROOTS", "Directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)"],
  ["MAX_CONCURRENT_COMMANDS", "Foreground commands run at once; more wait in a queue (default 8)"],
  ["MAX_BACKGROUND_COMMANDS", "Background commands run at once; more are refused (default 16)"],
  ["AGENT_STATE_DIR", "Where command output and records are kept (default ~/.local/state/code-remote/<machine>; macOS: ~/Library/Application Support/…)"],
  ["SHELL", "Shell for run_shell_command, an absolute path (default: the login shell's $SHELL, else /bin/sh)"],
  ["LOG_FILE", "Log to this file instead of stderr, rotated by size (the service sets it; --log-file FILE too)"],
  ["LOG_MAX_BYTES", `Size at which LOG_FILE is rotated, in bytes (default ${LOG_MAX_BYTES}, at least ${MIN_LOG_BYTES})`],
  ["LOG_FILES", `Log files kept, LOG_FILE included: LOG_FILE.1 is the newest old one (default ${LOG_FILES})`],
];

/** A function, not a constant: it names the configuration file, which depends on the environment. */
const usage = () => `code-remote-agent ${VERSION}: lets an AI assistant run commands and edit files on this machine,
through a Code Remote relay. It dials out to the relay; it opens no port.

Usage:
  code-remote-agent [--log-file FILE]   run the agent (what the service runs)
  code-remote-agent setup               ask for the relay URL, token and machine name, check them, save them
  code-remote-agent install-service     keep the agent running: launchd (macOS) or a systemd user unit (Linux)
  code-remote-agent uninstall-service   stop and remove that service
  code-remote-agent status              installed? running? connected?
  code-remote-agent COMMAND --help      what a command does and its flags
  code-remote-agent --version

Getting started: code-remote-agent setup && code-remote-agent install-service && code-remote-agent status

Configuration: the file setup writes (KEY=value lines, mode 600), ${configFilePath(process.env)};
environment variables override it (and so does a .env file in the working directory, under bun run):
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
  return {
    relayUrl,
    token,
    machine,
    roots,
    home,
    shell: pickShell(env.SHELL),
    maxConcurrentCommands: positiveInteger(env, "MAX_CONCURRENT_COMMANDS", 8),
    maxBackgroundCommands: positiveInteger(env, "MAX_BACKGROUND_COMMANDS", 16),
    stateDir: env.AGENT_STATE_DIR || defaultStateDir(env, home, machine),
    log: {
      file: env.LOG_FILE ? path.resolve(expandHome(env.LOG_FILE, home)) : undefined,
      maxBytes: positiveInteger(env, "LOG_MAX_BYTES", LOG_MAX_BYTES, MIN_LOG_BYTES),
      files: positiveInteger(env, "LOG_FILES", LOG_FILES),
    },
  };
}

function positiveInteger(env: Record<string, string | undefined>, name: string, fallback: number, min = 1): number {
  const value = Number(env[name]?.trim() || fallback); // an empty value (LOG_FILES= in agent.env) is unset
  if (!Number.isInteger(value) || value < min) throw new ConfigError(`${name} must be a whole number of at least ${min}.`);
  return value;
}

const expandHome = (entry: string, home: string) => (entry === "~" ? home : entry.startsWith("~/") ? path.join(home, entry.slice(2)) : entry);

/** Per machine name, so two agents with different names on one host keep their commands apart. */
export function defaultStateDir(env: Record<string, string | undefined>, home: string, machine: string): string {
  const base =
    process.platform === "darwin"
      ? path.join(home, "Library", "Application Support")
      : env.XDG_STATE_HOME || path.join(home, ".local", "state");
  return path.join(base, "code-remote", machine);
}

export function parseRelayUrl(raw: string | undefined): string {
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

export function defaultMachineName(): string {
  const name = os.hostname().replace(/\.local$/, "").replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return name.slice(0, 64) || "machine";
}

/** Resolves each root with realpath once; a root that does not exist is skipped, and none at all is an error. */
function resolveRoots(raw: string[], home: string): string[] {
  const roots: string[] = [];
  for (const entry of raw.map((r) => r.trim()).filter(Boolean)) {
    const expanded = expandHome(entry, home);
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

// --- dispatch ---

/** What every operation gets: the request's abort signal and arrival time, the configuration, the commands,
 *  and where to report progress when the client asked for it. */
interface OpContext {
  signal: AbortSignal;
  receivedAt: number;
  config: AgentConfig;
  commands: CommandRunner;
  onProgress?: (progress: { elapsed_ms: number; output_bytes: number; tail: string }) => void;
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
    running_commands: ctx.commands.running,
    queued_commands: ctx.commands.queued,
  };
}

type Handler<O extends AgentOp> = (args: OpArgs<O>, ctx: OpContext) => Promise<OpResult<O>> | OpResult<O>;

const HANDLERS: { [O in AgentOp]: Handler<O> } = {
  run_shell_command: (args, ctx) => ctx.commands.run(args, { ...ctx, ...ctx.config }),
  get_command_output: (args, ctx) => ctx.commands.output(args, ctx.signal),
  send_command_input: (args, ctx) => ctx.commands.input(args),
  kill_command: (args, ctx) => ctx.commands.kill(args),
  list_commands: (args, ctx) => ctx.commands.list(args),
  read_file: (args, ctx) => readFile(args, ctx.config),
  write_file: (args, ctx) => writeFile(args, ctx.config),
  edit_file: (args, ctx) => editFile(args, ctx.config),
  list_directory: (args, ctx) => listDirectory(args, ctx.config),
  search_files: (args, ctx) => searchFiles(args, ctx.config),
  file_info: (args, ctx) => fileInfo(args, ctx.config),
  status: (_args, ctx) => agentStatus(ctx),
};

const errorResult = (id: string, error: AgentError): AgentFrame => ({ type: "result", id, ok: false, error });

/** Texts of an error frame stay within the protocol's limit (AgentError): a message echoing a 4,000-character path
 *  would otherwise make the relay refuse the frame and drop this agent's connection, for every client. */
const ERROR_TEXT_MAX_CHARS = 2_000;
const shorten = (text: string) => (text.length > ERROR_TEXT_MAX_CHARS ? `${text.slice(0, ERROR_TEXT_MAX_CHARS - 1)}…` : text);

function failureFrame(e: Failure): AgentError {
  return { code: e.code, message: shorten(e.message), ...(e.quote && { quote: shorten(e.quote) }) };
}

/** Validates a request's arguments with the op's schema, runs it, and builds the one result frame. */
export async function execute(frame: RequestFrame, ctx: OpContext): Promise<AgentFrame> {
  const parsed = opSchemas(frame.op).args.safeParse(frame.args);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "arguments"}: ${i.message}`).join("; ");
    return errorResult(frame.id, { code: "invalid_arguments", message: issues.slice(0, 1000) });
  }
  try {
    const handler = HANDLERS[frame.op] as Handler<AgentOp>;
    return { type: "result", id: frame.id, ok: true, value: await handler(parsed.data as never, ctx) };
  } catch (e) {
    if (e instanceof Failure) return errorResult(frame.id, failureFrame(e));
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
  commands: CommandRunner;
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

/** Opens the WebSocket with the token in the Authorization header (never in the URL) and says hello once it is
 *  open. Every connection starts here: the daemon's, and setup's check, so the check proves what the daemon does. */
function dial(config: AgentConfig): WebSocket {
  const ws = new WebSocket(config.relayUrl, { headers: { Authorization: `Bearer ${config.token}` } });
  ws.addEventListener("open", () => ws.send(JSON.stringify(helloFrame(config))));
  return ws;
}

/** One connection: dial, say hello, serve requests until the socket closes or falls silent. Never throws. */
function connectOnce(rt: Runtime): Promise<ConnectionEnd> {
  const { config } = rt;
  return new Promise((resolve) => {
    const ws = dial(config);
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
      // Calls in flight are left to finish: the relay has failed them for their clients, but a command keeps
      // running (to its timeout) and stays reachable by its command_id once the link is back.
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
    const contextFor = (frame: RequestFrame, signal: AbortSignal): OpContext => ({
      signal,
      receivedAt: Date.now(),
      config,
      commands: rt.commands,
      onProgress: frame.progress ? (progress) => send({ type: "progress", id: frame.id, ...progress }) : undefined,
    });

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
          recordStatus(config, "connected");
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
      void execute(frame, contextFor(frame, controller.signal)).then((result) => {
        inflight.delete(frame.id);
        send(result);
        const outcome = result.type === "result" && !result.ok ? result.error.code : "ok";
        log("info", "call", { op: frame.op, id: frame.id, outcome, ms: Math.round(performance.now() - started) });
      });
    };

    ws.addEventListener("open", () => (lastHeard = Date.now()));
    ws.addEventListener("message", (event) => {
      lastHeard = Date.now();
      onFrame(event.data);
    });
    ws.addEventListener("close", (event) => end(event.code, event.reason));
    rt.closeConnection = (code, reason) => ws.close(code, reason);
  });
}

/** What setup's check found. `problem` says which advice fits: the relay refused the token (HTTP 401/403 before
 *  the upgrade, or a 4003 close), could not be reached, replaced this connection with another agent of the same
 *  name, turned it away for another reason, or never answered. */
export type CheckResult =
  | { ok: true; machine: string; serverVersion: string }
  | { ok: false; problem: "refused" | "unreachable" | "replaced" | "rejected" | "timeout"; detail: string };

/** Connects once, exactly as the daemon does (dial, hello), and hangs up as soon as the relay welcomes this
 *  machine: setup's proof that the URL, token and name work. Serves no request. Never throws. */
export function checkConnection(config: AgentConfig, timeoutMs = CHECK_TIMEOUT_MS): Promise<CheckResult> {
  return new Promise((resolve) => {
    const ws = dial(config);
    let failure = ""; // Bun reports an HTTP refusal of the upgrade only in the error event's message
    let done = false;
    const finish = (result: CheckResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      ws.terminate();
      finish({ ok: false, problem: "timeout", detail: `no answer from the relay within ${timeoutMs / 1000} s` });
    }, timeoutMs);
    ws.addEventListener("message", (event) => {
      const parsed = parseFrame(ServerFrame, event.data as string);
      if (!parsed.ok || parsed.frame.type !== "welcome") return; // a ping before the welcome needs no answer
      ws.close(CloseCode.normal, "setup check done");
      finish({ ok: true, machine: parsed.frame.machine, serverVersion: parsed.frame.server_version });
    });
    ws.addEventListener("error", (event) => (failure = (event as ErrorEvent).message ?? ""));
    ws.addEventListener("close", (event) => finish(explainClose(event.code, event.reason, failure)));
  });
}

function explainClose(code: number, reason: string, failure: string): CheckResult {
  const status = Number(/Expected 101 status code: (\d+)/.exec(failure)?.[1] ?? 0);
  if (status === 401 || status === 403 || code === CloseCode.forbidden) {
    return { ok: false, problem: "refused", detail: status ? `HTTP ${status}` : reason || "forbidden" };
  }
  if (status) return { ok: false, problem: "rejected", detail: `HTTP ${status} instead of a WebSocket upgrade` };
  if (code === CloseCode.replaced) return { ok: false, problem: "replaced", detail: reason };
  if (code === 1006) return { ok: false, problem: "unreachable", detail: failure.replace(/^WebSocket connection to '[^']*' failed: /, "") || "connection failed" };
  return { ok: false, problem: "rejected", detail: `closed with code ${code}${reason ? `: ${reason}` : ""}` };
}

/** Connects forever: backoff with jitter between attempts, reset after a connection that registered. */
async function runForever(rt: Runtime): Promise<void> {
  let failures = 0;
  while (!rt.stopping.signal.aborted) {
    const result = await connectOnce(rt);
    if (rt.stopping.signal.aborted) return;
    failures = result.registered ? 0 : failures + 1;
    recordStatus(rt.config, "disconnected", result.reason || `code ${result.code}`);
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
  log("info", "stopping", { signal, running_commands: rt.commands.running });
  rt.stopping.abort();
  recordStatus(rt.config, "stopped");
  await rt.commands.stopAll();
  rt.closeConnection?.(CloseCode.normal, "agent stopping");
  process.exit(0);
}

/** A process that starts an agent as its child and wants it gone with it (`bun run dev`, the test helpers) puts its
 *  own pid in CODE_REMOTE_PARENT_PID: if that parent dies without stopping the agent (kill -9, a crash), the agent
 *  stops too instead of lingering and holding the machine's name. */
function stopWithParent(rt: Runtime, parent: number): void {
  if (!Number.isInteger(parent) || parent <= 0) return;
  const watch = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(watch);
    void shutdown(rt, "the dev server exited");
  }, 1_000);
  watch.unref();
}

/** Makes this the only agent using `dir`: two agents sharing one state would kill each other's commands. */
function lockStateDir(config: AgentConfig): void {
  fs.mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = path.join(config.stateDir, "agent.pid");
  const holder = Number(fs.existsSync(lock) ? fs.readFileSync(lock, "utf8") : 0);
  if (holder && holder !== process.pid && isAgentProcess(holder)) {
    throw new ConfigError(
      `Another agent (pid ${holder}) is already running as '${config.machine}' on this machine, with state in ` +
        `${config.stateDir}. Stop it first, or give this one another MACHINE_NAME.`,
    );
  }
  fs.writeFileSync(lock, String(process.pid), { mode: 0o600 });
  process.on("exit", () => {
    if (fs.existsSync(lock) && Number(fs.readFileSync(lock, "utf8")) === process.pid) fs.rmSync(lock, { force: true });
  });
}

/** The file in the state directory where the daemon records its connection, for `code-remote-agent status`. */
export const STATUS_FILE = "status.json";

export interface StatusRecord {
  state: "connecting" | "connected" | "disconnected" | "stopped";
  relay: string;
  machine: string;
  pid: number;
  /** When this state began (ISO 8601): a run of failed reconnects keeps the time of the first. */
  since: string;
  /** Why the last connection ended, as the relay put it. */
  reason?: string;
}

let lastRecorded: StatusRecord | undefined;

/** Rewrites status.json (temp file and rename, so a reader never sees half of it). A failure is logged, never
 *  thrown: the status file is a courtesy to `status`, and the agent keeps working without it. */
function recordStatus(config: AgentConfig, state: StatusRecord["state"], reason?: string): void {
  const since = lastRecorded?.state === state ? lastRecorded.since : new Date().toISOString();
  const record: StatusRecord = { state, relay: config.relayUrl, machine: config.machine, pid: process.pid, since, reason };
  const file = path.join(config.stateDir, STATUS_FILE);
  try {
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(record) + "\n", { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
    lastRecorded = record;
  } catch (e) {
    log("warn", "could not write the status file", { file, error: (e as Error).message });
  }
}

/** Whether `pid` is alive and (where /proc tells) an agent, so a pid reused by something else does not block. */
export function isAgentProcess(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("agent");
  } catch {
    return true; // no /proc (macOS): assume it is
  }
}

/** Whether a relay host is on this machine or a private network (a compose service name, 10/8, 192.168/16,
 *  172.16/12, Tailscale's 100.64/10), where plain ws:// is expected and not worth a warning. */
function isLocalOrPrivate(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  if (host === "localhost" || host === "::1" || !host.includes(".") && !host.includes(":")) return true;
  const [a, b] = host.split(".").map(Number) as [number, number];
  return a === 127 || a === 10 || (a === 192 && b === 168) || (a === 172 && b >= 16 && b <= 31) || (a === 100 && b >= 64 && b <= 127);
}

/** An unknown argument as it may be shown: a word or a flag's name, but never text that could be a token typed
 *  in the wrong place. */
export function describeArg(arg: string): string {
  if (/^(--?[a-z][a-z-]*|[a-z][a-z-]{0,30})(=|$)/.test(arg)) return `'${arg.replace(/=.*/s, "=…")}'`;
  return "(not shown, in case it is a secret)";
}

/** The daemon's only flag, `--log-file FILE` (or `--log-file=FILE`), as the setting it overrides; or what is
 *  wrong with the arguments. */
function parseDaemonArgs(argv: string[]): { LOG_FILE?: string } | string {
  const settings: { LOG_FILE?: string } = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const inline = arg.startsWith("--log-file=") ? arg.slice("--log-file=".length) : undefined;
    if (arg !== "--log-file" && inline === undefined) return `unknown argument ${describeArg(arg)}.`;
    const file = inline ?? argv[++i];
    if (!file) return "--log-file needs a file.";
    settings.LOG_FILE = file;
  }
  return settings;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command && SUBCOMMANDS.includes(command)) return runSubcommand(command, rest);
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(usage());
    return 0;
  }
  if (argv.includes("--version")) {
    console.log(VERSION);
    return 0;
  }
  const flags = parseDaemonArgs(argv);
  if (typeof flags === "string") {
    console.error(`code-remote-agent: ${flags} See --help.`);
    return 2;
  }
  let config: AgentConfig;
  try {
    // The file setup wrote, under the environment: a variable that is set wins, and --log-file wins over both.
    config = loadConfig({ ...withConfigFile(process.env), ...flags });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote-agent: ${e.message} See --help.`);
    return 2;
  }
  if (config.log.file) {
    try {
      logToFile(config.log.file, config.log);
    } catch (e) {
      console.error(`code-remote-agent: cannot write the log file ${config.log.file}: ${(e as Error).message}`);
      return 2;
    }
    // The last line on stderr, so whoever started it by hand knows where the rest went.
    console.error(`code-remote-agent: logging to ${config.log.file}`);
  }
  if (config.relayUrl.startsWith("ws:") && !isLocalOrPrivate(config.relayUrl)) {
    log("warn", "RELAY_URL is ws:// to a public host: the token travels unencrypted; use wss://");
  }
  let commands: CommandRunner;
  try {
    lockStateDir(config);
    commands = new CommandRunner({
      stateDir: config.stateDir,
      machine: config.machine,
      maxForeground: config.maxConcurrentCommands,
      maxBackground: config.maxBackgroundCommands,
    });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote-agent: ${e.message}`);
    return 2;
  }
  log("info", "starting", { version: VERSION, machine: config.machine, roots: config.roots, shell: config.shell });
  recordStatus(config, "connecting");
  const recovered = commands.recover();
  if (recovered.commandsLost > 0) {
    log("warn", "commands left running by a previous agent were killed", { commands: recovered.commandsLost, processes: recovered.orphansKilled });
  }
  const rt: Runtime = { config, commands, stopping: new AbortController() };
  process.on("SIGINT", () => void shutdown(rt, "SIGINT"));
  process.on("SIGTERM", () => void shutdown(rt, "SIGTERM"));
  stopWithParent(rt, Number(process.env.CODE_REMOTE_PARENT_PID));
  await runForever(rt);
  return 0;
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
