// The agent's command runner. Every run_shell_command becomes a Command with an id (`<hex>@<machine>`), its own
// process group (so a timeout, a cancel or kill_command reaches grandchildren), a clean environment, a timeout
// that keeps counting after the call has returned, and its full output in a bounded log on disk that the model
// pages through with get_command_output. Foreground commands share a few slots (more wait in a queue);
// background commands have their own limit. What each command is doing is written to disk, so after a crash the
// next agent kills the orphans and can still say what became of them.

import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import {
  DEFAULT_COMMAND_TIMEOUT_S,
  DEFAULT_OUTPUT_WAIT_S,
  DEFAULT_WAIT_S,
  FIELD_BUDGET_CHARS,
  KILL_GRACE_MS,
  CommandId,
  fail,
  Failure,
  fitToBudget,
  jsonCost,
  type CommandState,
  type OpArgs,
  type OpResult,
  type ProgressFrame,
} from "../protocol.ts";
import { type FileScope, isInsideRoots, resolveExisting } from "./paths.ts";
import { logger } from "../log.ts";

const log = logger("agent");

// --- constants ---

/** After the shell exits, keep reading its pipes this long: a background child may still hold them open. */
const DRAIN_AFTER_EXIT_MS = 300;
/** Bytes of each stream kept in memory for the immediate result (head and tail each); the middle is on disk. */
const KEEP_HEAD_BYTES = 32 * 1024;
const KEEP_TAIL_BYTES = 32 * 1024;
/** Each command's output goes to disk in segments of this size; once LOG_MAX_SEGMENTS are kept the oldest is
 *  deleted, so a command keeps its last ~48 MiB whatever it prints, and offsets stay absolute. */
const LOG_SEGMENT_BYTES = 8 * 1024 * 1024;
const LOG_MAX_SEGMENTS = 6;
/** Finished commands kept (with their output) for get_command_output and list_commands, and the disk they may
 *  use together; past either, the oldest finished ones are deleted. */
const MAX_FINISHED_COMMANDS = 100;
/** Foreground commands waiting for a slot, at most: beyond it a new one is refused rather than queued without end
 *  (each waiting command holds a record file and memory, and all would run once slots free up). */
const MAX_QUEUED_COMMANDS = 64;
const MAX_KEPT_LOG_BYTES = 512 * 1024 * 1024;
/** send_command_input waits this long for the command to take its input: one that never reads (its pipe full)
 *  must not hold the call, or pile up more input in memory, for ever. */
const INPUT_WAIT_MS = 5_000;
/** Progress frames go out this often while a foreground call waits, with this much of the output's end. */
const PROGRESS_INTERVAL_MS = 1_000;
const PROGRESS_TAIL_BYTES = 2_048;
const PROGRESS_TAIL_CHARS = 500;
/** get_command_output returns at most this many JSON characters of output per call. */
const OUTPUT_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;
/** list_commands shows this many, and a command line is shortened to this many characters. */
const LIST_LIMIT = 50;
const COMMAND_DISPLAY_CHARS = 200;
/** Environment variables a command inherits from the agent. Anything else (the agent's token above all) is
 *  left out: commands get a clean environment, not the agent's own. */
const INHERITED_ENV = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];
const INHERITED_ENV_PREFIXES = ["LC_"];
/** Set in every command's environment, so the next agent can find a crashed agent's orphans precisely. */
const COMMAND_ID_ENV = "CODE_REMOTE_COMMAND_ID";

/** Why a write to the state directory failed, in words: the code, and whether more room would fix it. */
function writeProblem(e: unknown): { reason: string; full: boolean } {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === "ENOSPC") return { reason: "the disk is full", full: true };
  if (code === "EDQUOT") return { reason: "the disk quota is exceeded", full: true };
  if (code === "EROFS") return { reason: "the file system is read-only", full: false };
  return { reason: code ?? String(e), full: false };
}

// --- output capture ---

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

// --- output log on disk ---

/** A command's combined stdout and stderr on disk, addressed by absolute byte offset. */
class OutputLog {
  /** Bytes on disk (absolute: pruned segments count too). */
  total = 0;
  /** Why the log stopped growing, if it did (the disk filled up): output after `total` was not kept. */
  stopped: string | null = null;
  #fd: number | null = null;
  #firstSegment = 0;
  /** The last bytes written, for progress messages without reading the disk. */
  #recent = Buffer.alloc(0);

  constructor(
    readonly dir: string,
    readonly id: string,
  ) {}

  /** A log an earlier agent wrote, measured by its segments on disk (`names`: the state directory's files): a
   *  command's record gets its size only when the command ends, so after a crash the disk is what knows how much
   *  output there is and which segments are left to delete. */
  static fromDisk(dir: string, id: string, names: readonly string[]): OutputLog {
    const log = new OutputLog(dir, id);
    const indexes = names.map((name) => segmentIndex(name, id)).filter((i) => i !== null).sort((a, b) => a - b);
    if (indexes.length === 0) return log;
    const last = indexes[indexes.length - 1]!;
    log.#firstSegment = indexes[0]!;
    log.total = last * LOG_SEGMENT_BYTES + fs.statSync(log.#segment(last)).size;
    return log;
  }

  #segment = (index: number) => path.join(this.dir, `${this.id}.${index}.log`);

  get firstKept(): number {
    return this.#firstSegment * LOG_SEGMENT_BYTES;
  }

  get keptBytes(): number {
    return this.total - this.firstKept;
  }

  /** Adds output at the end. A write that fails (the disk is full) stops the log there, once and for good:
   *  the command goes on and is still drained (a pipe nobody reads would block it), its head and tail stay in
   *  memory for the call's result, and get_command_output serves what reached the disk. */
  append(chunk: Uint8Array): void {
    this.#recent = Buffer.concat([this.#recent, chunk]).subarray(-PROGRESS_TAIL_BYTES);
    if (this.stopped) return;
    try {
      for (let rest = chunk; rest.length > 0; ) {
        const index = Math.floor(this.total / LOG_SEGMENT_BYTES);
        this.#fd ??= fs.openSync(this.#segment(index), "a", 0o600);
        const part = rest.subarray(0, LOG_SEGMENT_BYTES - (this.total % LOG_SEGMENT_BYTES));
        const written = fs.writeSync(this.#fd, part); // short on a nearly full disk; the next write says why
        this.total += written;
        rest = rest.subarray(written);
        if (this.total % LOG_SEGMENT_BYTES === 0) this.#rotate(index);
      }
    } catch (e) {
      this.stopped = writeProblem(e).reason;
      this.close();
      log("warn", "command output log stopped; later output is not kept on disk", { command_id: this.id, kept_bytes: this.total, reason: this.stopped });
    }
  }

  #rotate(finished: number): void {
    this.close();
    while (finished + 1 - this.#firstSegment >= LOG_MAX_SEGMENTS) fs.rmSync(this.#segment(this.#firstSegment++), { force: true });
  }

  /** Up to `maxBytes` from `offset` (or from the oldest kept byte, if older output was pruned). */
  read(offset: number, maxBytes: number): { bytes: Buffer; from: number } {
    const from = Math.max(offset, this.firstKept);
    const parts: Buffer[] = [];
    for (let at = from, left = Math.min(maxBytes, this.total - from); left > 0; ) {
      const index = Math.floor(at / LOG_SEGMENT_BYTES);
      const fd = fs.openSync(this.#segment(index), "r");
      try {
        const want = Math.min(left, LOG_SEGMENT_BYTES - (at % LOG_SEGMENT_BYTES));
        const buffer = Buffer.alloc(want);
        const n = fs.readSync(fd, buffer, 0, want, at % LOG_SEGMENT_BYTES);
        if (n === 0) break;
        parts.push(buffer.subarray(0, n));
        at += n;
        left -= n;
      } finally {
        fs.closeSync(fd);
      }
    }
    return { bytes: Buffer.concat(parts), from };
  }

  /** The last lines printed, for a progress message. */
  tail(): string {
    return new TextDecoder().decode(this.#recent).slice(-PROGRESS_TAIL_CHARS);
  }

  close(): void {
    if (this.#fd !== null) fs.closeSync(this.#fd);
    this.#fd = null;
  }

  remove(): void {
    this.close();
    for (let i = this.#firstSegment; i * LOG_SEGMENT_BYTES <= this.total; i++) fs.rmSync(this.#segment(i), { force: true });
  }
}

/** The index of a file named `<id>.<index>.log` (a segment of command `id`'s log), or null for any other file. */
function segmentIndex(name: string, id: string): number | null {
  if (!name.startsWith(`${id}.`) || !name.endsWith(".log")) return null;
  const index = name.slice(id.length + 1, -".log".length);
  return /^\d+$/.test(index) ? Number(index) : null;
}

// --- process groups and environment ---

/** Sends `signal` to a whole process group; false when the group is gone. */
function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false; // ESRCH: nobody left in the group
  }
}

/** SIGTERM to a whole process group, then SIGKILL after the grace period (grandchildren included). */
export function killGroup(pgid: number): void {
  if (signalGroup(pgid, "SIGTERM")) setTimeout(() => signalGroup(pgid, "SIGKILL"), KILL_GRACE_MS).unref();
}

/** The environment a command starts with: a short allowlist from the agent's own (never its credentials), the
 *  variables the call asked for, and the command's id. */
function childEnv(id: string, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (INHERITED_ENV.includes(key) || INHERITED_ENV_PREFIXES.some((p) => key.startsWith(p))) env[key] = value;
  }
  // No terminal: keep pagers and colour prompts from waiting for a human.
  return { ...env, TERM: "dumb", PAGER: "cat", GIT_PAGER: "cat", CODE_REMOTE: "1", ...extra, [COMMAND_ID_ENV]: id };
}

/** Linux: the pids of processes in group `pgid` that carry our command id in their environment. Checking both
 *  means a pid reused by an unrelated process is never killed. */
function orphansOf(id: string, pgid: number): number[] {
  const marker = `${COMMAND_ID_ENV}=${id}`;
  const found: number[] = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // the name in parentheses may hold spaces
      if (Number(fields[2]) !== pgid) continue;
      if (fs.readFileSync(`/proc/${entry}/environ`, "latin1").split("\0").includes(marker)) found.push(Number(entry));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/** Kills what is left of a command that an earlier agent started and could not finish. */
function reapOrphans(id: string, pgid: number): number {
  if (process.platform !== "linux") return signalGroup(pgid, "SIGKILL") ? 1 : 0; // no /proc: trust the group id
  const pids = orphansOf(id, pgid);
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  return pids.length;
}

// --- commands ---

/** What is kept about a command on disk (one JSON file each), enough to answer for it after a restart. */
interface CommandRecord {
  id: string;
  display: string;
  background: boolean;
  started_at: string;
  ended_at: string | null;
  state: CommandState;
  exit_code: number | null;
  signal: string | null;
  timed_out: boolean;
  pgid: number | null;
  total_bytes: number;
  note?: string;
}

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
        reject(signal.reason);
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

/** What spawning needs, checked: the program and arguments, directory, extra environment and stdin. */
interface CommandSpec {
  argv: string[];
  display: string;
  cwd: string;
  env: Record<string, string>;
  stdin: string | undefined;
  keepStdinOpen: boolean;
  background: boolean;
  /** Milliseconds from creation until the command is killed, or null for none. */
  timeoutMs: number | null;
}

/** One command: queued, running, or finished. Reading `record` gives what is known about it right now. */
class Command {
  readonly record: CommandRecord;
  readonly stdout = new OutputCapture();
  readonly stderr = new OutputCapture();
  readonly log: OutputLog;
  /** Settles once the command is final (exited, killed or timed out). */
  readonly done: Promise<void>;
  #finish!: () => void;
  /** stdin is a pipe only when there is input to give (see #spawn); otherwise /dev/null. */
  #proc: Bun.Subprocess<"pipe" | "ignore", "pipe", "pipe"> | null = null;
  #stdinOpen = false;
  /** Input given to the command that it has not taken yet: more is refused meanwhile. */
  #inputWaiting = false;
  #killRequested = false;
  readonly #dequeue = new AbortController();
  readonly #startedAt = performance.now();
  #listeners = new Set<() => void>();
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    record: CommandRecord,
    log: OutputLog,
    readonly persist: (record: CommandRecord) => unknown,
  ) {
    this.record = record;
    this.log = log;
    this.done = new Promise((resolve) => (this.#finish = resolve));
    if (isFinal(record.state)) this.#finish();
  }

  get active(): boolean {
    return !isFinal(this.record.state);
  }

  get stdinOpen(): boolean {
    return this.#stdinOpen;
  }

  get durationMs(): number {
    const end = this.record.ended_at ? Date.parse(this.record.ended_at) : Date.now();
    return Math.max(0, end - Date.parse(this.record.started_at));
  }

  /** Arms the timeout, which counts from creation (queueing included) and keeps counting after a call returns. */
  armTimeout(timeoutMs: number | null): void {
    if (timeoutMs === null) return;
    this.#timer = setTimeout(() => {
      this.record.timed_out = true;
      this.#stop();
    }, timeoutMs);
  }

  /** Waits for a free slot (if `slots` is given), then spawns. A kill while queued ends the command unstarted. */
  async start(spec: CommandSpec, slots: Slots | null): Promise<void> {
    if (slots) {
      try {
        await slots.acquire(this.#dequeue.signal);
      } catch {
        return this.#end(null, null);
      }
      void this.done.then(() => slots.release());
    }
    if (!this.active) return;
    try {
      this.#spawn(spec);
    } catch (e) {
      this.#cannotStart(spec, e);
    }
  }

  /** A program that cannot be started ends like it would in a shell: a message on stderr, exit 127 or 126. */
  #cannotStart(spec: CommandSpec, error: unknown): void {
    const code = (error as NodeJS.ErrnoException)?.code;
    const message = Buffer.from(`code-remote: cannot run '${spec.argv[0]}': ${code ?? String(error)}\n`);
    this.stderr.push(message);
    this.log.append(message);
    this.#end(code === "ENOENT" ? 127 : 126, null);
  }

  #spawn(spec: CommandSpec): void {
    const proc = Bun.spawn(spec.argv, {
      cwd: spec.cwd,
      env: childEnv(this.record.id, spec.env),
      stdin: spec.stdin !== undefined || spec.keepStdinOpen ? "pipe" : "ignore", // a pipe costs ~0.2 ms per spawn
      stdout: "pipe",
      stderr: "pipe",
      detached: true, // setsid: the command leads its own process group, so killGroup reaches grandchildren
    });
    this.#proc = proc;
    this.record.state = "running";
    this.record.pgid = proc.pid;
    this.persist(this.record);
    void this.#collect(proc); // first: collecting must run whatever happens to stdin
    if (proc.stdin) this.#feedStdin(proc.stdin, spec);
    this.#changed();
  }

  /** Writes the given stdin and closes it, or keeps it open for send_command_input (background commands). A
   *  command that exits before reading closes the pipe: that is its business, not an error. */
  #feedStdin(stdin: Bun.FileSink, spec: CommandSpec): void {
    this.#stdinOpen = spec.keepStdinOpen;
    void (async () => {
      if (spec.stdin !== undefined) stdin.write(spec.stdin);
      await (spec.keepStdinOpen ? stdin.flush() : stdin.end());
    })().catch(() => {
      this.#stdinOpen = false;
    });
  }

  async #collect(proc: Bun.Subprocess<"pipe" | "ignore", "pipe", "pipe">): Promise<void> {
    const stopReading = new AbortController();
    const pumps = Promise.all([this.#pump(proc.stdout, this.stdout, stopReading.signal), this.#pump(proc.stderr, this.stderr, stopReading.signal)]);
    await proc.exited;
    // It ended on its own: the timeout no longer applies, even while the pipes drain below.
    if (!this.record.timed_out) clearTimeout(this.#timer);
    // A background child (`cmd &`) may keep the pipes open after the shell is gone; don't wait for it forever.
    const drained = await Promise.race([pumps.then(() => true), Bun.sleep(DRAIN_AFTER_EXIT_MS).then(() => false)]);
    if (!drained) stopReading.abort();
    await pumps;
    this.#end(proc.signalCode ? null : proc.exitCode, proc.signalCode ? String(proc.signalCode) : null);
  }

  /** Reads one stream into its capture and the shared log until it ends or `stop` is aborted. */
  async #pump(stream: ReadableStream<Uint8Array>, capture: OutputCapture, stop: AbortSignal): Promise<void> {
    const reader = stream.getReader();
    const onStop = () => void reader.cancel().catch(() => {});
    stop.addEventListener("abort", onStop, { once: true });
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        capture.push(value);
        this.log.append(value);
        this.#changed();
      }
    } catch {
      // cancelled by `stop`: what was read is kept
    } finally {
      stop.removeEventListener("abort", onStop);
    }
  }

  #end(exitCode: number | null, signal: string | null): void {
    if (!this.active) return;
    clearTimeout(this.#timer);
    this.log.close();
    const r = this.record;
    r.exit_code = exitCode;
    r.signal = signal;
    r.ended_at = new Date().toISOString();
    r.total_bytes = this.log.total;
    r.state = r.timed_out ? "timed_out" : this.#killRequested || signal ? "killed" : "exited";
    this.#stdinOpen = false;
    this.persist(r);
    this.#finish();
    this.#changed();
  }

  /** Stops the command: out of the queue if it has not started, else TERM then KILL to its whole group. */
  #stop(): void {
    this.#dequeue.abort(new Failure("busy", "stopped while queued"));
    if (this.#proc) killGroup(this.#proc.pid);
  }

  /** kill_command: the default is TERM then KILL; a named signal is sent once, as it is. */
  kill(signal?: NodeJS.Signals): string | null {
    if (!this.active) return null;
    this.#killRequested = true;
    if (!signal || !this.#proc) {
      this.#stop();
      return this.#proc ? "SIGTERM" : null;
    }
    signalGroup(this.#proc.pid, signal);
    return signal;
  }

  /** send_command_input: writes to stdin and waits (at most INPUT_WAIT_MS) until the command has taken it all. */
  async writeInput(input: string, close: boolean): Promise<number> {
    const id = this.record.id;
    const stdin = this.#proc?.stdin;
    if (!stdin || !this.#stdinOpen) return fail("wrong_type", `Command ${id} does not take input: its stdin is closed (only background commands keep it open).`);
    if (this.#inputWaiting) {
      return fail("busy", `Command ${id} has not read the input sent before yet, so nothing was sent. See what it is doing with get_command_output, or stop it with kill_command.`);
    }
    if (close) this.#stdinOpen = false;
    this.#inputWaiting = true;
    const delivered = this.#deliver(stdin, input, close);
    void delivered.then(() => (this.#inputWaiting = false));
    const taken = await Promise.race([delivered, Bun.sleep(INPUT_WAIT_MS).then(() => "waiting" as const)]);
    if (taken === "waiting") {
      return fail(
        "busy",
        `Command ${id} has not taken all of its input within ${INPUT_WAIT_MS / 1000} s (its input pipe is full): the rest waits ` +
          `there and reaches it as it reads${close ? ", then its stdin closes" : ""}; more input is refused until then. See ` +
          `what it is doing with get_command_output, or stop it with kill_command.`,
      );
    }
    if (!taken) fail("io_error", `Command ${id} stopped reading its input.`);
    return Buffer.byteLength(input);
  }

  /** Writes to the pipe and resolves once the command has taken it all (true), or the pipe broke (false: it
   *  exited or closed its stdin). Never rejects. */
  async #deliver(stdin: Bun.FileSink, input: string, close: boolean): Promise<boolean> {
    try {
      stdin.write(input);
      await stdin.flush();
      if (close) await stdin.end();
      return true;
    } catch {
      this.#stdinOpen = false;
      return false;
    }
  }

  /** Resolves at the next output or state change, or after `ms`, or when `signal` aborts. */
  async changed(ms: number, signal?: AbortSignal): Promise<void> {
    if (ms <= 0 || !this.active) return;
    await new Promise<void>((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        this.#listeners.delete(finish);
        signal?.removeEventListener("abort", finish);
        resolve();
      };
      const timer = setTimeout(finish, ms);
      this.#listeners.add(finish);
      signal?.addEventListener("abort", finish, { once: true });
    });
  }

  #changed(): void {
    for (const listener of [...this.#listeners]) listener();
  }

  elapsedMs(): number {
    return Math.round(performance.now() - this.#startedAt);
  }
}

const isFinal = (state: CommandState) => state === "exited" || state === "killed" || state === "timed_out";

/** Runs and keeps track of commands. One per agent; its state directory holds one JSON file and the output
 *  log of each kept command. */
export class CommandRunner {
  /** Every kept command by id: added when created (or found on disk at start), removed when pruned. */
  readonly #commands = new Map<string, Command>();
  readonly #foreground: Slots;

  constructor(
    readonly options: { stateDir: string; machine: string; maxForeground: number; maxBackground: number },
  ) {
    fs.mkdirSync(options.stateDir, { recursive: true, mode: 0o700 });
    this.#foreground = new Slots(options.maxForeground);
  }

  get running(): number {
    return [...this.#commands.values()].filter((c) => c.record.state === "running").length;
  }

  get queued(): number {
    return this.#foreground.queued;
  }

  /** Loads what an earlier agent left: commands it could not finish are killed (orphans included) and marked so. */
  recover(): { orphansKilled: number; commandsLost: number } {
    let orphansKilled = 0;
    let commandsLost = 0;
    const names = fs.readdirSync(this.options.stateDir);
    for (const name of names.filter((n) => n.endsWith(".json"))) {
      const record = this.#readRecord(path.join(this.options.stateDir, name));
      if (!record) continue;
      const log = OutputLog.fromDisk(this.options.stateDir, record.id, names);
      if (!isFinal(record.state)) {
        if (record.pgid) orphansKilled += reapOrphans(record.id, record.pgid);
        Object.assign(record, { state: "killed", ended_at: new Date().toISOString(), total_bytes: log.total, note: "the agent restarted while it ran" });
        this.#persist(record);
        commandsLost++;
      }
      this.#commands.set(record.id, new Command(record, log, (r) => this.#persist(r)));
    }
    this.#prune();
    return { orphansKilled, commandsLost };
  }

  #readRecord(file: string): CommandRecord | null {
    try {
      const record = JSON.parse(fs.readFileSync(file, "utf8")) as CommandRecord;
      return typeof record.id === "string" && record.id.endsWith(`@${this.options.machine}`) ? record : null;
    } catch {
      return null;
    }
  }

  #recordFile(id: string): string {
    return path.join(this.options.stateDir, `${id}.json`);
  }

  /** Writes a command's record in place. Not through a temp file and rename: on ext4 a rename over a file flushes
   *  its data (about 0.3 ms here, three times per command), and a record torn by a crash is only skipped when the
   *  next agent recovers, no worse than a stale one. A failure is returned, not thrown: a record that cannot be
   *  written must not break a command that is already running (its state stays right in memory); only a command
   *  about to start is refused over it (#create). */
  #persist(record: CommandRecord): { reason: string; full: boolean } | null {
    try {
      fs.writeFileSync(this.#recordFile(record.id), JSON.stringify(record), { mode: 0o600 });
      return null;
    } catch (e) {
      const problem = writeProblem(e);
      log("warn", "could not write a command record", { command_id: record.id, reason: problem.reason });
      return problem;
    }
  }

  /** run_shell_command: starts the command and waits for its end, for `wait_seconds`, or for a cancel. */
  async run(args: OpArgs<"run_shell_command">, ctx: RunContext): Promise<OpResult<"run_shell_command">> {
    const spec = this.#spec(args, ctx);
    if (spec.background && this.#activeBackground() >= this.options.maxBackground) {
      fail("busy", `${this.options.maxBackground} background commands are running already; kill_command one first (list_commands shows them).`);
    }
    if (!spec.background && this.#foreground.queued >= MAX_QUEUED_COMMANDS) {
      fail("busy", `${MAX_QUEUED_COMMANDS} commands are already waiting for one of the ${this.options.maxForeground} slots; wait for some to finish (list_commands shows them).`);
    }
    const command = this.#create(spec, ctx.commandId);
    command.armTimeout(spec.timeoutMs === null ? null : spec.timeoutMs - (Date.now() - ctx.receivedAt));
    void command.start(spec, spec.background ? null : this.#foreground);
    if (!spec.background) await this.#waitForeground(command, args, ctx);
    return this.#snapshot(command);
  }

  /** Waits for the end, the wait limit, or a cancel (which kills); sends progress every second meanwhile. */
  async #waitForeground(command: Command, args: OpArgs<"run_shell_command">, ctx: RunContext): Promise<void> {
    const waitMs = (args.wait_seconds ?? DEFAULT_WAIT_S) * 1000 - (Date.now() - ctx.receivedAt);
    const tell = () => ctx.onProgress!({ elapsed_ms: command.elapsedMs(), output_bytes: command.log.total, tail: command.log.tail() });
    // Counted from the request's arrival, not from the spawn after the record was written: the first progress is
    // then a second after the request, as clients are told, not a few milliseconds later.
    let progress: ReturnType<typeof setInterval> | undefined;
    const first = ctx.onProgress
      ? setTimeout(() => {
          tell();
          progress = setInterval(tell, PROGRESS_INTERVAL_MS);
        }, Math.max(0, ctx.receivedAt + PROGRESS_INTERVAL_MS - Date.now()))
      : undefined;
    const cancelled = new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
    try {
      await Promise.race([command.done, Bun.sleep(Math.max(0, waitMs)), cancelled]);
      if (ctx.signal.aborted && command.active) {
        command.kill();
        await Promise.race([command.done, Bun.sleep(KILL_GRACE_MS + 1_000)]);
      }
    } finally {
      clearTimeout(first);
      clearInterval(progress);
    }
  }

  /** Checks the arguments and turns them into what to spawn. */
  #spec(args: OpArgs<"run_shell_command">, ctx: RunContext): CommandSpec {
    if ((args.command === undefined) === (args.argv === undefined)) fail("invalid_arguments", "Give either command (a shell command line) or argv (a program and its arguments), not both.");
    if (args.argv && args.shell) fail("invalid_arguments", "shell applies to command; argv runs without a shell.");
    // A program gets its arguments and environment as C strings, where a NUL would end them early; spawn refuses
    // them, which used to surface as an obscure "cannot run '/bin/sh'" with exit 126.
    if ([args.command, ...(args.argv ?? []), ...Object.values(args.env ?? {})].some((text) => text?.includes("\0"))) {
      fail("invalid_arguments", "command, argv and env values cannot contain a NUL byte (programs receive them as C strings); pass binary data on stdin.");
    }
    const shell = args.shell ?? ctx.shell;
    if (args.shell && !isExecutable(args.shell)) fail("invalid_arguments", `shell '${args.shell}' is not an executable file (give an absolute path).`);
    const cwd = args.working_dir ? resolveExisting(args.working_dir, ctx) : defaultDirectory(ctx);
    if (!fs.statSync(cwd).isDirectory()) fail("wrong_type", `'${args.working_dir}' is not a directory.`);
    const argv = args.argv ?? [shell, "-c", args.command!];
    const background = args.background === true;
    const timeoutS = args.timeout ?? (background ? null : DEFAULT_COMMAND_TIMEOUT_S);
    return {
      argv,
      display: (args.command ?? args.argv!.join(" ")).slice(0, COMMAND_DISPLAY_CHARS),
      cwd,
      env: args.env ?? {},
      stdin: args.stdin,
      keepStdinOpen: background && args.stdin === undefined,
      background,
      timeoutMs: timeoutS === null ? null : timeoutS * 1000,
    };
  }

  /** The command's id: the one the relay chose (`requested`), when it is a well-formed id of this machine that no
   *  kept command has (in memory or on disk), so the relay can name the command even if the link dies before the
   *  answer; else one of the agent's own, as before the relay chose them. */
  #newId(requested: string | undefined): string {
    if (requested !== undefined) {
      const usable =
        CommandId.safeParse(requested).success &&
        requested.endsWith(`@${this.options.machine}`) &&
        !this.#commands.has(requested) &&
        !fs.existsSync(this.#recordFile(requested));
      if (usable) return requested;
      log("warn", "the relay's command id is malformed, for another machine, or already used; the agent made its own", { requested: requested.slice(0, 80) });
    }
    let id: string;
    do id = `${randomBytes(6).toString("hex")}@${this.options.machine}`;
    while (this.#commands.has(id));
    return id;
  }

  #create(spec: CommandSpec, requestedId?: string): Command {
    const id = this.#newId(requestedId);
    const record: CommandRecord = {
      id,
      display: spec.display,
      background: spec.background,
      started_at: new Date().toISOString(),
      ended_at: null,
      state: "queued",
      exit_code: null,
      signal: null,
      timed_out: false,
      pgid: null,
      total_bytes: 0,
    };
    // Without its record on disk, a crash would leave the command's processes unreapable: refuse to start it.
    const problem = this.#persist(record);
    if (problem) {
      try {
        fs.rmSync(this.#recordFile(id), { force: true }); // written in place: a failed first write leaves an empty file
      } catch {
        // a read-only state directory: nothing was created
      }
      const what = problem.full ? "is full. Free some space there and try again." : `cannot be written (${problem.reason}).`;
      fail("io_error", `The agent cannot record the command: its state directory (${this.options.stateDir}) ${what}`);
    }
    const command = new Command(record, new OutputLog(this.options.stateDir, id), (r) => this.#persist(r));
    this.#commands.set(id, command);
    void command.done.then(() => this.#prune());
    return command;
  }

  #activeBackground(): number {
    return [...this.#commands.values()].filter((c) => c.active && c.record.background).length;
  }

  /** run_shell_command's answer: where the command is, and its stdout and stderr (head and tail) so far. */
  #snapshot(command: Command): OpResult<"run_shell_command"> {
    const { command_id, state, exit_code, signal, duration_ms } = this.#summary(command);
    const out = command.stdout.text(FIELD_BUDGET_CHARS);
    const err = command.stderr.text(FIELD_BUDGET_CHARS);
    return {
      command_id,
      state,
      exit_code,
      signal,
      stdout: out.text,
      stderr: err.text,
      timed_out: command.record.timed_out,
      duration_ms,
      truncated: out.cut || err.cut,
      stdout_bytes: command.stdout.total,
      stderr_bytes: command.stderr.total,
      next_offset: command.log.total,
    };
  }

  #find(id: string): Command {
    const command = this.#commands.get(id);
    if (!command) return fail("not_found", `No command ${id} on this machine (finished ones are pruned after a while); list_commands shows what is kept.`);
    return command;
  }

  /** get_command_output: the combined output from `offset`, waiting a little for something new. */
  async output(args: OpArgs<"get_command_output">, signal: AbortSignal): Promise<OpResult<"get_command_output">> {
    const command = this.#find(args.command_id);
    const offset = args.offset ?? 0;
    if (offset > command.log.total) fail("invalid_arguments", `offset ${offset} is past the end of the output (${command.log.total} bytes so far).`);
    if (offset === command.log.total) await command.changed((args.wait_seconds ?? DEFAULT_OUTPUT_WAIT_S) * 1000, signal);
    const { text, from, next } = readText(command.log, offset, !command.active);
    return { ...this.#summary(command), output: text, offset: from, next_offset: next, total_bytes: command.log.total, more: next < command.log.total };
  }

  /** What list_commands and get_command_output say about any command. */
  #summary(command: Command) {
    const r = command.record;
    return {
      command_id: r.id,
      command: r.display,
      state: r.state,
      background: r.background,
      started_at: r.started_at,
      duration_ms: command.durationMs,
      exit_code: r.exit_code,
      signal: r.signal,
    };
  }

  async input(args: OpArgs<"send_command_input">): Promise<OpResult<"send_command_input">> {
    const command = this.#find(args.command_id);
    const bytes = await command.writeInput(args.input, args.close_stdin === true);
    return { command_id: command.record.id, state: command.record.state, bytes_written: bytes, stdin_open: command.stdinOpen };
  }

  async kill(args: OpArgs<"kill_command">): Promise<OpResult<"kill_command">> {
    const command = this.#find(args.command_id);
    const sent = command.kill(args.signal);
    if (!args.signal) await Promise.race([command.done, Bun.sleep(KILL_GRACE_MS + 500)]);
    return { command_id: command.record.id, state: command.record.state, signal_sent: sent };
  }

  list(args: OpArgs<"list_commands">): OpResult<"list_commands"> {
    const matching = [...this.#commands.values()]
      .filter((c) => !args.state || c.record.state === args.state)
      .sort((a, b) => b.record.started_at.localeCompare(a.record.started_at));
    return { commands: matching.slice(0, LIST_LIMIT).map((c) => this.#summary(c)), total: matching.length };
  }

  /** Shutdown: every active command's group gets TERM, then KILL after the grace period; all are marked killed. */
  async stopAll(): Promise<void> {
    const active = [...this.#commands.values()].filter((c) => c.active);
    for (const command of active) command.kill();
    await Promise.race([Promise.all(active.map((c) => c.done)), Bun.sleep(KILL_GRACE_MS + 500)]);
    // Members that ignored SIGTERM, even after their shell exited, get SIGKILL before the agent goes.
    for (const command of active) if (command.record.pgid) signalGroup(command.record.pgid, "SIGKILL");
  }

  /** Deletes the oldest finished commands past MAX_FINISHED_COMMANDS or MAX_KEPT_LOG_BYTES. */
  #prune(): void {
    const finished = [...this.#commands.values()].filter((c) => !c.active).sort((a, b) => a.record.started_at.localeCompare(b.record.started_at));
    let kept = [...this.#commands.values()].reduce((sum, c) => sum + c.log.keptBytes, 0);
    while (finished.length > 0 && (finished.length > MAX_FINISHED_COMMANDS || kept > MAX_KEPT_LOG_BYTES)) {
      const oldest = finished.shift()!;
      kept -= oldest.log.keptBytes;
      oldest.log.remove();
      fs.rmSync(this.#recordFile(oldest.record.id), { force: true });
      this.#commands.delete(oldest.record.id);
    }
  }
}

/** What run() needs from the request and the agent; a working_dir must be a place the file tools may reach. */
export interface RunContext extends FileScope {
  signal: AbortSignal;
  /** When the request arrived (ms): timeout and wait_seconds count from here, queueing included. */
  receivedAt: number;
  shell: string;
  /** Set when the client asked for progress. */
  onProgress?: (progress: Omit<ProgressFrame, "type" | "id">) => void;
  /** The id the relay chose for this command (RequestFrame.command_id), taken when valid and unused. */
  commandId?: string;
}

/** Where a command runs when no working_dir is given: home, or the first allowed root when home is not inside
 *  one (the sandboxed agent's home is not, its workspace is). */
function defaultDirectory(ctx: RunContext): string {
  return isInsideRoots(ctx.home, ctx.roots) ? ctx.home : ctx.roots[0]!;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return path.isAbsolute(file) && fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Reads output from `offset` and decodes as much as fits the budget, ending on a UTF-8 character boundary so the
 *  next read starts cleanly. `next` counts raw bytes, so invalid UTF-8 never shifts the offsets. */
function readText(log: OutputLog, offset: number, final: boolean): { text: string; from: number; next: number } {
  const { bytes, from } = log.read(offset, OUTPUT_BUDGET_CHARS);
  const decode = (n: number) => new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, n));
  const atEnd = final && from + bytes.length === log.total; // nothing more will come: no character to wait for
  let length = atEnd ? bytes.length : completeCharacters(bytes, bytes.length);
  if (jsonCost(decode(length)) > OUTPUT_BUDGET_CHARS) {
    // Control characters cost up to six JSON characters each: find the longest prefix that fits.
    let low = 0;
    let high = length;
    while (low < high) {
      const mid = Math.ceil((low + high) / 2);
      if (jsonCost(decode(mid)) <= OUTPUT_BUDGET_CHARS) low = mid;
      else high = mid - 1;
    }
    length = completeCharacters(bytes, low) || low;
  }
  return { text: decode(length), from, next: from + length };
}

/** The length of the longest prefix of bytes[0, n) that does not end inside a multi-byte UTF-8 character. */
function completeCharacters(bytes: Uint8Array, n: number): number {
  let lead = n - 1;
  while (lead > 0 && lead > n - 4 && (bytes[lead]! & 0xc0) === 0x80) lead--; // continuation bytes are 0b10xxxxxx
  if (lead < 0) return n;
  const first = bytes[lead]!;
  const size = first >= 0xf0 ? 4 : first >= 0xe0 ? 3 : first >= 0xc0 ? 2 : 1;
  return lead + size <= n ? n : lead;
}
