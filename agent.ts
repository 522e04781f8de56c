// The Code Remote agent: a daemon on each machine that dials out to the relay over a WebSocket (it opens no
// port), runs shell commands with Bun.spawn in their own process group, and reads and writes files inside an
// allowlist of directories. The allowlist confines the file tools only: run_shell_command runs anything the
// agent's user can run. Every frame from the relay is treated as untrusted input and validated with the
// schemas in protocol.ts. Compiled with `bun build --compile` into one executable per OS and architecture.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import {
  AGENT_OPS,
  CloseCode,
  DEFAULT_COMMAND_TIMEOUT_S,
  FIELD_BUDGET_CHARS,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  MachineName,
  MAX_WRITE_BYTES,
  PROTOCOL_VERSION,
  ServerFrame,
  VERSION,
  parseFrame,
  type AgentError,
  type AgentFrame,
  type AgentOp,
  type AgentStatus,
  type ErrorCode,
  type OpArgs,
  type OpResult,
  type RequestFrame,
} from "./protocol.ts";

// --- constants ---

/** SIGTERM first, then SIGKILL to the whole group after this grace, so well-behaved programs can clean up. */
const KILL_GRACE_MS = 2_000;
/** After the shell exits, keep reading its pipes this long: a background child may still hold them open. */
const DRAIN_AFTER_EXIT_MS = 300;
/** Bytes of each output stream kept in memory (head and tail each); the middle of a flood is dropped. */
const KEEP_HEAD_BYTES = 32 * 1024;
const KEEP_TAIL_BYTES = 32 * 1024;
/** read_file returns at most this many JSON characters of text, or this many raw bytes as base64. */
const READ_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;
const READ_BASE64_MAX_BYTES = 32 * 1024;
/** read_file reads in chunks of this size, and stops counting lines past this many bytes (total_lines: null). */
const READ_CHUNK_BYTES = 1024 * 1024;
const COUNT_LINES_MAX_BYTES = 256 * 1024 * 1024;
/** Bytes of a file sniffed to decide between text and base64 (as git does: a NUL or invalid UTF-8 means binary). */
const SNIFF_BYTES = 8 * 1024;
/** list_directory lists at most this many entries, and fewer when their JSON would pass the budget. */
const LIST_MAX_ENTRIES = 1_000;
const LIST_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;
/** Reconnect backoff: 1 s doubling to 30 s, with jitter; 60 s after being replaced by another agent. */
const RECONNECT_BASE_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;
const REPLACED_BACKOFF_MS = 60_000;
/** Environment variables a command inherits from the agent. Anything else (the agent's token above all) is
 *  left out: commands get a clean environment, not the agent's own. */
const INHERITED_ENV = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];
const INHERITED_ENV_PREFIXES = ["LC_"];

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

// --- errors ---

/** An error meant for the model: it crosses the wire as { code, message }. */
export class Failure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const fail = (code: ErrorCode, message: string): never => {
  throw new Failure(code, message);
};

// --- path policy (pure) ---

/** True when `target` is `root` or lies under it. Both must be absolute and normalized. Pure: no disk access.
 *  Comparing with `root + sep` is what stops the sibling-prefix escape (/tmp vs /tmpx, /home/a vs /home/a2). */
export function isInsideRoot(target: string, root: string): boolean {
  if (target === root) return true;
  const prefix = root.endsWith(path.sep) ? root : root + path.sep;
  return target.startsWith(prefix);
}

export const isInsideRoots = (target: string, roots: readonly string[]) => roots.some((r) => isInsideRoot(target, r));

/** Turns what the model sent into an absolute, normalized path, or explains why it cannot. Pure. */
export function expandPath(input: string, home: string): string {
  if (input.length === 0) fail("invalid_arguments", "The path is empty.");
  if (input.includes("\0")) fail("invalid_arguments", "The path contains a NUL byte.");
  let expanded = input;
  if (input === "~" || input.startsWith("~/")) expanded = home + input.slice(1);
  else if (input.startsWith("~")) fail("invalid_arguments", `'${input}': only ~ (this user's home) is supported, not ~user.`);
  if (!path.isAbsolute(expanded)) fail("invalid_arguments", `'${input}' is relative: give an absolute path or start it with ~.`);
  return path.resolve(expanded);
}

// --- path policy (I/O) ---

const denied = (input: string, roots: readonly string[]): never =>
  fail("path_denied", `Access denied: '${input}' is outside the allowed roots (${roots.join(", ")}).`);

const errnoOf = (e: unknown) => (e as NodeJS.ErrnoException)?.code;

/** Where a path really leads, for an operation on something that must exist. The real path (all symlinks
 *  resolved) must be inside a root; a path outside gets "denied" whether or not it exists, so nothing outside
 *  can be probed. */
export function resolveExisting(input: string, roots: readonly string[], home: string): string {
  const { target, exists } = landing(input, expandPath(input, home));
  if (!isInsideRoots(target, roots)) denied(input, roots);
  if (!exists) fail("not_found", `'${input}' does not exist.`);
  return target;
}

/** Where a write to `input` would land: the real path of an existing file (through a symlink inside the
 *  roots), or the real path of the nearest existing parent joined with the names still to be created. */
export function resolveForWrite(input: string, roots: readonly string[], home: string): string {
  const { target, dangling } = landing(input, expandPath(input, home));
  if (!isInsideRoots(target, roots)) denied(input, roots);
  // Writing through a dangling symlink would create its target: refuse rather than follow, even inside.
  if (dangling) fail("path_denied", `'${input}' goes through a symlink to something that does not exist; refusing to follow it.`);
  return target;
}

interface Landing {
  /** The absolute path every symlink leads to; missing components are joined as they are. */
  target: string;
  exists: boolean;
  /** A symlink on the way points to something missing. */
  dangling: boolean;
}

/** Resolves `absolute` like realpath, but also when its end (or a symlink's target) does not exist, so the
 *  policy can judge where a missing path *would* be. Dangling symlinks are followed to their would-be target:
 *  the answer for a link pointing outside is "denied" whether its target exists or not. */
function landing(input: string, absolute: string): Landing {
  try {
    return { target: fs.realpathSync(absolute), exists: true, dangling: false };
  } catch (e) {
    const code = errnoOf(e);
    if (code === "ELOOP") fail("path_denied", `'${input}' is a symlink loop.`);
    if (code !== "ENOENT" && code !== "ENOTDIR") fail("io_error", `Cannot resolve '${input}': ${code ?? e}.`);
  }
  return walkMissing(input, absolute, 0, 0);
}

/** Max symlinks followed for one path, as the kernel's own limit (MAXSYMLINKS is 40 on Linux). */
const MAX_SYMLINK_HOPS = 40;

/** Walks `absolute` component by component with lstat, following symlinks by hand. `linkParts` is how many
 *  leading components came from the last symlink's target: a component missing among them makes it dangling. */
function walkMissing(input: string, absolute: string, hops: number, linkParts: number): Landing {
  const parts = absolute.split(path.sep).filter(Boolean);
  let current: string = path.sep;
  for (let i = 0; i < parts.length; i++) {
    const next = path.join(current, parts[i]!);
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(next);
    } catch {
      return { target: path.join(next, ...parts.slice(i + 1)), exists: false, dangling: i < linkParts };
    }
    if (stat.isSymbolicLink()) {
      if (hops >= MAX_SYMLINK_HOPS) fail("path_denied", `'${input}' is a symlink loop.`);
      const linkTarget = path.resolve(current, fs.readlinkSync(next));
      const targetParts = linkTarget.split(path.sep).filter(Boolean).length;
      return walkMissing(input, path.join(linkTarget, ...parts.slice(i + 1)), hops + 1, targetParts);
    }
    current = next;
  }
  return { target: current, exists: true, dangling: false };
}

// --- descriptors: operate on what was checked, not on a name that can be swapped ---

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY } = fs.constants;
const HAS_PROC_FD = process.platform === "linux" && fs.existsSync("/proc/self/fd");

/** A path that names exactly the open descriptor `fd`. On Linux, /proc/self/fd/N is bound to the open file, so a
 *  symlink swapped into the path after the check cannot redirect us. Elsewhere it falls back to the checked path
 *  (a small race window remains; documented in docs/ARCHITECTURE.md). */
const fdPath = (fd: number, checkedPath: string) => (HAS_PROC_FD ? `/proc/self/fd/${fd}` : checkedPath);

/** Opens `real` without following a final symlink and checks, on Linux, that the descriptor is still inside the
 *  roots (an intermediate directory swapped for a symlink would show here). Closes the fd on failure. */
function openChecked(real: string, flags: number, roots: readonly string[], input: string): number {
  let fd: number;
  try {
    fd = fs.openSync(real, flags | O_NOFOLLOW);
  } catch (e) {
    const code = errnoOf(e);
    if (code === "ELOOP") return fail("path_denied", `'${input}' changed into a symlink while being opened.`);
    if (code === "ENOTDIR") return fail("wrong_type", `'${input}' is not a directory.`);
    if (code === "ENOENT") return fail("not_found", `'${input}' does not exist.`);
    if (code === "EACCES" || code === "EPERM") return fail("io_error", `Permission denied: '${input}'.`);
    return fail("io_error", `Cannot open '${input}': ${code ?? e}.`);
  }
  if (HAS_PROC_FD) {
    const opened = fs.readlinkSync(`/proc/self/fd/${fd}`);
    if (!isInsideRoots(opened, roots)) {
      fs.closeSync(fd);
      denied(input, roots);
    }
  }
  return fd;
}

// --- output shaping ---

/** How many characters `text` takes once JSON-encoded (without the quotes): control characters cost six. */
export function jsonCost(text: string): number {
  return JSON.stringify(text).length - 2;
}

/** Keeps the beginning and end of `text` so that its JSON form fits `budget` characters, marking the cut. */
export function fitToBudget(text: string, budget: number, omittedBytes = 0): { text: string; cut: boolean } {
  if (omittedBytes === 0 && jsonCost(text) <= budget) return { text, cut: false };
  const chars = Array.from(text); // code points, so a surrogate pair is never split
  const half = Math.floor((budget - 80) / 2);
  const head = takeWithinCost(chars, half);
  const tail = takeWithinCost(chars.slice(head.length).reverse(), half).reverse();
  const kept = head.join("") + tail.join("");
  const omitted = omittedBytes + Buffer.byteLength(text) - Buffer.byteLength(kept);
  return { text: `${head.join("")}\n[... ${omitted} bytes omitted ...]\n${tail.join("")}`, cut: true };
}

function takeWithinCost(chars: string[], budget: number): string[] {
  let cost = 0;
  let n = 0;
  for (; n < chars.length; n++) {
    cost += jsonCost(chars[n]!);
    if (cost > budget) break;
  }
  return chars.slice(0, n);
}

/** Keeps the first and last bytes of a stream and counts the rest, so memory stays flat under any flood. */
export class OutputCapture {
  readonly #head = new Uint8Array(KEEP_HEAD_BYTES);
  readonly #tail = new Uint8Array(KEEP_TAIL_BYTES);
  #headLength = 0;
  #tailEnd = 0; // next write position in the ring
  #tailLength = 0;
  total = 0;

  push(chunk: Uint8Array): void {
    this.total += chunk.length;
    let offset = 0;
    if (this.#headLength < KEEP_HEAD_BYTES) {
      offset = Math.min(chunk.length, KEEP_HEAD_BYTES - this.#headLength);
      this.#head.set(chunk.subarray(0, offset), this.#headLength);
      this.#headLength += offset;
    }
    for (let rest = chunk.subarray(Math.max(offset, chunk.length - KEEP_TAIL_BYTES)); rest.length > 0; ) {
      const n = Math.min(rest.length, KEEP_TAIL_BYTES - this.#tailEnd);
      this.#tail.set(rest.subarray(0, n), this.#tailEnd);
      this.#tailEnd = (this.#tailEnd + n) % KEEP_TAIL_BYTES;
      this.#tailLength = Math.min(KEEP_TAIL_BYTES, this.#tailLength + n);
      rest = rest.subarray(n);
    }
  }

  /** The kept text, cut to `budget` JSON characters; `cut` says whether anything was left out. */
  text(budget: number): { text: string; cut: boolean } {
    const tailStart = (this.#tailEnd - this.#tailLength + KEEP_TAIL_BYTES) % KEEP_TAIL_BYTES;
    const tail = Buffer.concat([this.#tail.subarray(tailStart, tailStart + this.#tailLength), this.#tail.subarray(0, Math.max(0, tailStart + this.#tailLength - KEEP_TAIL_BYTES))]);
    const dropped = this.total - this.#headLength - tail.length;
    const decoder = () => new TextDecoder("utf-8", { fatal: false });
    if (dropped === 0) return fitToBudget(decoder().decode(Buffer.concat([this.#head.subarray(0, this.#headLength), tail])), budget);
    const head = fitToBudget(decoder().decode(this.#head.subarray(0, this.#headLength)), budget / 2).text;
    const end = fitToBudget(decoder().decode(tail), budget / 2).text;
    return { text: `${head}\n[... ${dropped} bytes omitted ...]\n${end}`, cut: true };
  }
}

// --- commands ---

/** A counting semaphore: at most `limit` holders; the rest wait in order. */
class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(limit: number) {
    this.#free = limit;
  }
  get queued() {
    return this.#waiting.length;
  }
  async acquire(signal: AbortSignal): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const grant = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        this.#waiting.splice(this.#waiting.indexOf(grant), 1);
        reject(new Failure("busy", "The command was cancelled while waiting for a free slot."));
      };
      this.#waiting.push(grant);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

/** Sends SIGTERM to a whole process group, then SIGKILL after the grace period (grandchildren included). */
export function killGroup(pgid: number): void {
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-pgid, sig);
    } catch {
      // ESRCH: the group is already gone
    }
  };
  signal("SIGTERM");
  setTimeout(() => signal("SIGKILL"), KILL_GRACE_MS).unref();
}

/** The environment a command starts with: a short allowlist from the agent's own, never its credentials. */
function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (INHERITED_ENV.includes(key) || INHERITED_ENV_PREFIXES.some((p) => key.startsWith(p))) env[key] = value;
  }
  // No terminal: keep pagers and colour prompts from waiting for a human.
  return { ...env, TERM: "dumb", PAGER: "cat", GIT_PAGER: "cat", CODE_REMOTE: "1" };
}

/** Reads a stream into `capture` until it ends or `stop` is aborted. */
async function pump(stream: ReadableStream<Uint8Array>, capture: OutputCapture, stop: AbortSignal): Promise<void> {
  const reader = stream.getReader();
  const onStop = () => void reader.cancel().catch(() => {});
  stop.addEventListener("abort", onStop, { once: true });
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      capture.push(value);
    }
  } catch {
    // cancelled by `stop`: what was read is kept
  } finally {
    stop.removeEventListener("abort", onStop);
  }
}

/** Running commands, by process group id, so shutdown can kill them all. */
const runningGroups = new Set<number>();

interface OpContext {
  signal: AbortSignal;
  /** When the request arrived (ms): a command's timeout counts from here, queueing included, so the relay's
   *  deadline (timeout + a margin) always outlasts it. */
  receivedAt: number;
  config: AgentConfig;
  slots: Slots;
}

async function runShellCommand(args: OpArgs<"run_shell_command">, ctx: OpContext): Promise<OpResult<"run_shell_command">> {
  const { config } = ctx;
  const cwd = args.working_dir ? resolveExisting(args.working_dir, config.roots, config.home) : config.home;
  if (args.working_dir && !fs.statSync(cwd).isDirectory()) fail("wrong_type", `'${args.working_dir}' is not a directory.`);
  const timeoutMs = (args.timeout ?? DEFAULT_COMMAND_TIMEOUT_S) * 1000;
  await ctx.slots.acquire(ctx.signal);
  try {
    return await spawnAndCollect(config.shell, args.command, cwd, ctx.receivedAt + timeoutMs - Date.now(), ctx.signal);
  } finally {
    ctx.slots.release();
  }
}

async function spawnAndCollect(shell: string, command: string, cwd: string, timeoutMs: number, signal: AbortSignal) {
  const started = performance.now();
  const proc = Bun.spawn([shell, "-c", command], {
    cwd,
    env: childEnv(),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    detached: true, // setsid: the command leads its own process group, so killGroup reaches grandchildren
  });
  runningGroups.add(proc.pid);
  let timedOut = false;
  const kill = () => killGroup(proc.pid);
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, Math.max(0, timeoutMs));
  signal.addEventListener("abort", kill, { once: true });
  const stdout = new OutputCapture();
  const stderr = new OutputCapture();
  const stopReading = new AbortController();
  const pumps = Promise.all([pump(proc.stdout, stdout, stopReading.signal), pump(proc.stderr, stderr, stopReading.signal)]);
  try {
    await proc.exited;
    // A background child (`cmd &`) may keep the pipes open after the shell is gone; don't wait for it forever.
    const drained = await Promise.race([pumps.then(() => true), Bun.sleep(DRAIN_AFTER_EXIT_MS).then(() => false)]);
    if (!drained) stopReading.abort();
    await pumps;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", kill);
    runningGroups.delete(proc.pid);
  }
  const out = stdout.text(FIELD_BUDGET_CHARS);
  const err = stderr.text(FIELD_BUDGET_CHARS);
  return {
    exit_code: proc.signalCode ? null : proc.exitCode,
    signal: proc.signalCode ? String(proc.signalCode) : null,
    stdout: out.text,
    stderr: err.text,
    timed_out: timedOut,
    duration_ms: Math.round(performance.now() - started),
    truncated: out.cut || err.cut,
    stdout_bytes: stdout.total,
    stderr_bytes: stderr.total,
  };
}

// --- files ---

/** Reads up to `length` bytes at `position` from an fd. */
function readAt(fd: number, length: number, position: number): Buffer {
  const buffer = Buffer.alloc(length);
  const n = fs.readSync(fd, buffer, 0, length, position);
  return buffer.subarray(0, n);
}

function openRegularFile(input: string, config: AgentConfig): { fd: number; real: string; size: number } {
  const real = resolveExisting(input, config.roots, config.home);
  // O_NONBLOCK: opening a FIFO must not hang waiting for a writer; fstat then refuses it.
  const fd = openChecked(real, O_RDONLY | O_NONBLOCK, config.roots, input);
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) {
    fs.closeSync(fd);
    if (stat.isDirectory()) fail("wrong_type", `'${input}' is a directory: use list_directory.`);
    fail("path_denied", `'${input}' is not a regular file (FIFOs, devices and sockets are refused).`);
  }
  return { fd, real, size: stat.size };
}

/** True when the bytes look like text: no NUL and valid UTF-8 (a character cut at the end is fine). */
function looksLikeText(sample: Uint8Array): boolean {
  if (sample.includes(0)) return false;
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(sample, { stream: true });
    return true;
  } catch {
    return false;
  }
}

async function readFile(args: OpArgs<"read_file">, ctx: OpContext): Promise<OpResult<"read_file">> {
  const { fd, real, size } = openRegularFile(args.path, ctx.config);
  try {
    const encoding = args.encoding ?? "auto";
    const asText = encoding === "utf8" || (encoding === "auto" && looksLikeText(readAt(fd, SNIFF_BYTES, 0)));
    return asText ? readTextLines(fd, real, size, args) : readBase64(fd, real, size, args);
  } finally {
    fs.closeSync(fd);
  }
}

function readBase64(fd: number, real: string, size: number, args: OpArgs<"read_file">): OpResult<"read_file"> {
  const offset = args.offset ?? 0;
  const length = Math.min(args.limit ?? READ_BASE64_MAX_BYTES, READ_BASE64_MAX_BYTES, Math.max(0, size - offset));
  const bytes = readAt(fd, length, offset);
  const end = offset + bytes.length;
  return {
    path: real,
    encoding: "base64",
    content: bytes.toString("base64"),
    size,
    offset,
    returned: bytes.length,
    total_lines: null,
    truncated: end < size,
    next_offset: end < size ? end : null,
  };
}

/** Splits decoded text into lines (each keeping its "\n"); a line longer than `maxChars` keeps only its head,
 *  so memory stays bounded even for a file that is one enormous line. */
class LineSplitter {
  #partial = "";
  #overlong = false;
  constructor(readonly maxChars: number) {}

  *push(text: string): Generator<string> {
    let start = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", start)) {
      this.#append(text.slice(start, nl + 1));
      start = nl + 1;
      yield this.#take();
    }
    this.#append(text.slice(start));
  }

  *end(): Generator<string> {
    if (this.#partial) yield this.#take();
  }

  #append(piece: string) {
    if (this.#overlong) return;
    this.#partial += piece;
    if (this.#partial.length > this.maxChars) {
      this.#partial = this.#partial.slice(0, this.maxChars);
      this.#overlong = true;
    }
  }

  #take(): string {
    const line = this.#partial;
    this.#partial = "";
    this.#overlong = false;
    return line;
  }
}

/** Keeps the lines numbered first..last (from 1) that fit the budget, and counts every line offered. */
class LineSelection {
  seen = 0;
  readonly kept: string[] = [];
  #cost = 0;
  /** The budget stopped the selection; more lines follow. */
  full = false;
  /** The first selected line alone was over the budget and only its head was kept. */
  cutLine = false;
  constructor(
    readonly first: number,
    readonly last: number,
    readonly budget: number,
  ) {}

  get done() {
    return this.full || this.seen >= this.last;
  }

  offer(line: string): void {
    this.seen++;
    if (this.seen < this.first || this.seen > this.last || this.full) return;
    const cost = jsonCost(line);
    if (this.#cost + cost > this.budget) {
      if (this.kept.length === 0) {
        this.kept.push(takeWithinCost(Array.from(line), this.budget).join(""));
        this.cutLine = true;
      }
      this.full = true;
      return;
    }
    this.kept.push(line);
    this.#cost += cost;
  }
}

/** Reads lines [offset, offset + limit) of a UTF-8 file within the budget, streaming, and counts all lines
 *  (up to COUNT_LINES_MAX_BYTES). Invalid UTF-8 is an error that points to base64, never silently mangled. */
function readTextLines(fd: number, real: string, size: number, args: OpArgs<"read_file">): OpResult<"read_file"> {
  const first = Math.max(1, args.offset ?? 1);
  const selection = new LineSelection(first, args.limit ? first + args.limit - 1 : Infinity, READ_BUDGET_CHARS);
  const splitter = new LineSplitter(2 * READ_BUDGET_CHARS);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let position = 0;
  let atEnd = false;
  while (!atEnd && !(selection.done && position > COUNT_LINES_MAX_BYTES)) {
    const chunk = readAt(fd, READ_CHUNK_BYTES, position);
    position += chunk.length;
    atEnd = chunk.length === 0;
    let text: string;
    try {
      text = decoder.decode(chunk, { stream: !atEnd });
    } catch {
      return fail("wrong_type", `'${args.path}' is not valid UTF-8 after line ${selection.seen}: read it with encoding "base64".`);
    }
    for (const line of splitter.push(text)) selection.offer(line);
    if (atEnd) for (const line of splitter.end()) selection.offer(line);
  }
  const returned = selection.kept.length;
  const more = returned > 0 && (selection.cutLine || !atEnd || first + returned - 1 < selection.seen);
  return {
    path: real,
    encoding: "utf8",
    content: selection.kept.join(""),
    size,
    offset: first,
    returned,
    total_lines: atEnd ? selection.seen : null,
    truncated: more,
    next_offset: more ? first + returned : null,
  };
}

/** Turns an errno from a write into a sentence for the model. */
function ioFailure(e: unknown, input: string): never {
  if (e instanceof Failure) throw e;
  const code = errnoOf(e);
  const reason: Record<string, string> = {
    ENOSPC: "the disk is full",
    EDQUOT: "the disk quota is exceeded",
    EROFS: "the file system is read-only",
    EACCES: "permission denied",
    EPERM: "permission denied",
    ENAMETOOLONG: "a name in the path is too long",
    EISDIR: "it is a directory",
  };
  return fail("io_error", `Cannot write '${input}': ${(code && reason[code]) ?? code ?? String(e)}. Nothing was changed.`);
}

function decodeContent(content: string, encoding: "utf8" | "base64"): Buffer {
  if (encoding === "utf8") return Buffer.from(content, "utf8");
  // Buffer.from(…, "base64") skips bad characters silently; a typo must be an error, not a corrupt file.
  if (content.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(content)) {
    fail("invalid_arguments", "content is not valid base64 (A-Z, a-z, 0-9, +, / with = padding, no spaces).");
  }
  return Buffer.from(content, "base64");
}

/** Opens the real directory `dir`, creating the missing components one at a time below a checked descriptor,
 *  so a symlink swapped in meanwhile cannot send the new directories or the file elsewhere. */
function openDirCreating(dir: string, roots: readonly string[], input: string): { fd: number; real: string } {
  const missing: string[] = [];
  let existing = dir;
  while (!fs.existsSync(existing)) {
    missing.unshift(path.basename(existing));
    existing = path.dirname(existing);
  }
  let fd = openChecked(existing, O_RDONLY | O_DIRECTORY, roots, input);
  let real = existing;
  for (const name of missing) {
    const child = `${fdPath(fd, real)}/${name}`;
    try {
      fs.mkdirSync(child);
    } catch (e) {
      if (errnoOf(e) !== "EEXIST") {
        fs.closeSync(fd);
        ioFailure(e, input);
      }
    }
    const next = openChecked(child, O_RDONLY | O_DIRECTORY, roots, input);
    fs.closeSync(fd);
    fd = next;
    real = path.join(real, name);
  }
  return { fd, real };
}

/** lstat of `name` in an open directory, or null when there is nothing there. */
function lstatIn(dirPath: string, name: string): fs.Stats | null {
  try {
    return fs.lstatSync(`${dirPath}/${name}`);
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return null;
    throw e;
  }
}

async function writeFile(args: OpArgs<"write_file">, ctx: OpContext): Promise<OpResult<"write_file">> {
  const { config } = ctx;
  const data = decodeContent(args.content, args.encoding ?? "utf8");
  if (data.length > MAX_WRITE_BYTES) {
    fail("too_large", `content is ${data.length} bytes; write at most ${MAX_WRITE_BYTES} per call and append the rest.`);
  }
  const target = resolveForWrite(args.path, config.roots, config.home);
  const dir = openDirCreating(path.dirname(target), config.roots, args.path);
  try {
    return replaceAtomically(fdPath(dir.fd, dir.real), path.basename(target), data, args, target);
  } catch (e) {
    return ioFailure(e, args.path);
  } finally {
    fs.closeSync(dir.fd);
  }
}

/** Writes a temp file in the same directory and renames it over `name`: readers see the old file or the new
 *  one, never half of it. Appending copies the old content into the temp file first. */
function replaceAtomically(dirPath: string, name: string, data: Buffer, args: OpArgs<"write_file">, target: string) {
  const existing = lstatIn(dirPath, name);
  if (existing && !existing.isFile()) {
    fail("wrong_type", `'${args.path}' exists and is not a regular file; refusing to replace it.`);
  }
  const tempPath = `${dirPath}/.code-remote-${randomBytes(8).toString("hex")}.tmp`;
  // Security: O_EXCL|O_NOFOLLOW, so a symlink planted under the temp name is never followed.
  const fd = fs.openSync(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  let size = data.length;
  try {
    if (args.append && existing) size += copyInto(fd, `${dirPath}/${name}`);
    writeAll(fd, data);
    fs.fchmodSync(fd, existing ? existing.mode & 0o7777 : 0o666 & ~process.umask());
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tempPath, `${dirPath}/${name}`);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(tempPath, { force: true });
    throw e;
  }
  return { path: target, bytes_written: data.length, size, created: !existing };
}

function writeAll(fd: number, data: Uint8Array): void {
  for (let offset = 0; offset < data.length; ) offset += fs.writeSync(fd, data, offset);
}

/** Copies a regular file (not followed if it is a symlink) into `fd`; returns the bytes copied. */
function copyInto(fd: number, source: string): number {
  const src = fs.openSync(source, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  try {
    let copied = 0;
    for (let chunk = readAt(src, READ_CHUNK_BYTES, 0); chunk.length > 0; chunk = readAt(src, READ_CHUNK_BYTES, copied)) {
      writeAll(fd, chunk);
      copied += chunk.length;
    }
    return copied;
  } finally {
    fs.closeSync(src);
  }
}

function entryType(stat: fs.Stats): "file" | "dir" | "symlink" | "other" {
  if (stat.isSymbolicLink()) return "symlink";
  if (stat.isDirectory()) return "dir";
  return stat.isFile() ? "file" : "other";
}

function listDirectory(args: OpArgs<"list_directory">, ctx: OpContext): OpResult<"list_directory"> {
  const { config } = ctx;
  const real = resolveExisting(args.path, config.roots, config.home);
  if (!fs.statSync(real).isDirectory()) fail("wrong_type", `'${args.path}' is not a directory: use read_file.`);
  const fd = openChecked(real, O_RDONLY | O_DIRECTORY, config.roots, args.path);
  try {
    const dirPath = fdPath(fd, real);
    const names = fs.readdirSync(dirPath).sort();
    const entries: OpResult<"list_directory">["entries"] = [];
    let cost = 0;
    for (const name of names.slice(0, LIST_MAX_ENTRIES)) {
      const stat = lstatIn(dirPath, name);
      if (!stat) continue; // removed while we listed
      const entry = { name, type: entryType(stat), size: stat.size, modified: stat.mtime.toISOString() };
      cost += JSON.stringify(entry).length + 1;
      if (cost > LIST_BUDGET_CHARS) break;
      entries.push(entry);
    }
    return { path: real, entries, total: names.length, truncated: entries.length < names.length };
  } finally {
    fs.closeSync(fd);
  }
}

// --- dispatch ---

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
  run_shell_command: runShellCommand,
  read_file: readFile,
  write_file: writeFile,
  list_directory: listDirectory,
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
