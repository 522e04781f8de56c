// The agent's command runner: run_shell_command in the user's shell, in its own process group (so a timeout or a
// cancel reaches grandchildren), with a clean environment, a bounded number running at once, and output kept as
// its head and tail so memory stays flat under any flood.

import * as fs from "node:fs";
import { DEFAULT_COMMAND_TIMEOUT_S, FIELD_BUDGET_CHARS, fail, fitToBudget, Failure, type OpArgs, type OpResult } from "./protocol.ts";
import { resolveExisting } from "./paths.ts";

// --- constants ---

/** SIGTERM first, then SIGKILL to the whole group after this grace, so well-behaved programs can clean up. */
export const KILL_GRACE_MS = 2_000;
/** After the shell exits, keep reading its pipes this long: a background child may still hold them open. */
const DRAIN_AFTER_EXIT_MS = 300;
/** Bytes of each output stream kept in memory (head and tail each); the middle of a flood is dropped. */
const KEEP_HEAD_BYTES = 32 * 1024;
const KEEP_TAIL_BYTES = 32 * 1024;
/** Environment variables a command inherits from the agent. Anything else (the agent's token above all) is
 *  left out: commands get a clean environment, not the agent's own. */
const INHERITED_ENV = ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];
const INHERITED_ENV_PREFIXES = ["LC_"];

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

// --- commands ---

/** A counting semaphore: at most `limit` holders; the rest wait in order. */
export class Slots {
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
export const runningGroups = new Set<number>();

/** What a command needs from the agent. */
export interface CommandContext {
  signal: AbortSignal;
  /** When the request arrived (ms): a command's timeout counts from here, queueing included, so the relay's
   *  deadline (timeout + a margin) always outlasts it. */
  receivedAt: number;
  roots: readonly string[];
  home: string;
  shell: string;
  slots: Slots;
}

export async function runShellCommand(args: OpArgs<"run_shell_command">, ctx: CommandContext): Promise<OpResult<"run_shell_command">> {
  const cwd = args.working_dir ? resolveExisting(args.working_dir, ctx.roots, ctx.home) : ctx.home;
  if (args.working_dir && !fs.statSync(cwd).isDirectory()) fail("wrong_type", `'${args.working_dir}' is not a directory.`);
  const timeoutMs = (args.timeout ?? DEFAULT_COMMAND_TIMEOUT_S) * 1000;
  await ctx.slots.acquire(ctx.signal);
  try {
    return await spawnAndCollect(ctx.shell, args.command, cwd, ctx.receivedAt + timeoutMs - Date.now(), ctx.signal);
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
