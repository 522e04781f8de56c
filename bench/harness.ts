// The measuring kit every scenario shares: bounded sampling loops (each stops at a count or a time limit,
// whichever comes first), percentiles, throughput over concurrent workers, process RSS and CPU time from /proc,
// and progress lines. No scenario knows how to time anything on its own.

import * as fs from "node:fs";
import type { Figures } from "./results.ts";

/** How long and how often to sample one thing. A loop ends at `count` samples or `maxMs`, whichever is first. */
export interface Budget {
  /** Calls made and thrown away first, so JIT warm-up and first-connection costs don't count. */
  warmup: number;
  count: number;
  maxMs: number;
}

/** One latency series, in milliseconds. */
export type Latency = {
  n: number;
  p50_ms: number;
  p99_ms: number;
  mean_ms: number;
  min_ms: number;
  /** Sequential calls per second implied by the mean (one call at a time). */
  calls_per_s: number;
} & CpuPerCall;

/** CPU time per call of each process the sampler was given a clock for: `relay_cpu_per_call_ms`, … */
export type CpuPerCall = { [figure: `${string}_cpu_per_call_ms`]: number };

/** Three decimals (a microsecond) are plenty for milliseconds measured on a shared machine. */
export const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Nearest-rank percentile of ascending `sorted` (p in 0..1). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(p * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))]!;
}

export const median = (xs: readonly number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);

export function summarize(samplesMs: readonly number[], cpuMs: Record<string, number> = {}): Latency {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const mean = sorted.reduce((sum, x) => sum + x, 0) / sorted.length;
  return {
    n: sorted.length,
    p50_ms: round(percentile(sorted, 0.5)),
    p99_ms: round(percentile(sorted, 0.99)),
    mean_ms: round(mean),
    min_ms: round(sorted[0] ?? Number.NaN),
    calls_per_s: Math.round(1000 / mean),
    ...cpuPerCall(cpuMs, sorted.length),
  };
}

/** `{ relay: 59 }` over 100 calls reads `{ relay_cpu_per_call_ms: 0.59 }`. */
export function cpuPerCall(cpuMs: Record<string, number>, calls: number): CpuPerCall {
  return Object.fromEntries(Object.entries(cpuMs).map(([name, ms]) => [`${name}_cpu_per_call_ms`, round(ms / calls)]));
}

/** A process's CPU time so far in milliseconds, every thread's together (an exited thread's time is lost, which
 *  the relay's long-lived threads do not do). Read from each thread's /proc schedstat, which counts nanoseconds:
 *  /proc/<pid>/stat counts in ticks of 10 ms, too coarse for a block of calls of a few hundred microseconds each. */
export type CpuClock = () => number;

export function cpuClock(pid: number): CpuClock {
  return () => processCpuNs(pid) / 1e6;
}

/** The CPU time of a process and every descendant alive when read (the peer is a gateway that spawns a shell and a
 *  server per session: its cost is the whole tree's). Descendants are found through each thread's
 *  /proc/<pid>/task/<tid>/children; one that exits takes its time along, so this suits long-lived trees only. */
export function processTreeCpuClock(pid: number): CpuClock {
  return () => descendantsAndSelf(pid).reduce((ns, p) => ns + processCpuNs(p), 0) / 1e6;
}

function processCpuNs(pid: number): number {
  let ns = 0;
  for (const tid of threadsOf(pid)) ns += Number(readProc(`/proc/${pid}/task/${tid}/schedstat`)?.split(" ")[0] ?? 0);
  return ns;
}

function descendantsAndSelf(pid: number): number[] {
  const children = threadsOf(pid).flatMap((tid) => (readProc(`/proc/${pid}/task/${tid}/children`) ?? "").split(" ").filter(Boolean).map(Number));
  return [pid, ...children.flatMap(descendantsAndSelf)];
}

const threadsOf = (pid: number): string[] => {
  try {
    return fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return []; // the process has exited
  }
};

/** A /proc file, or undefined when its thread or process ended between the listing and the read. */
function readProc(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** Named CPU clocks ("relay", "agent", …): the samplers charge each one's time to the calls that ran meanwhile. */
export type CpuClocks = Record<string, CpuClock>;

const readClocks = (clocks: CpuClocks): Record<string, number> => Object.fromEntries(Object.entries(clocks).map(([name, clock]) => [name, clock()]));

/** The CPU each clock counted since `before` (a readClocks of the same clocks), added to `into`. */
function chargeSince(clocks: CpuClocks, before: Record<string, number>, into: Record<string, number>): void {
  for (const [name, clock] of Object.entries(clocks)) into[name] = (into[name] ?? 0) + clock() - before[name]!;
}

export type Op = () => Promise<unknown>;

/** Calls per block in sampleAlternating: long enough that one system's after-work (GC, log writes) is over
 *  before the other is timed, short enough that both meet the same machine noise over the run. */
const BLOCK_CALLS = 100;

/** Times several operations one call at a time, in alternating blocks (A×100, B×100, C×100, A×100, …), so that
 *  a ratio or a difference between them is measured under the same conditions. Each operation is also charged the
 *  CPU time every clock in `clocks` counted over its own blocks (`relay_cpu_per_call_ms` for the clock "relay"). */
export async function sampleAlternating<K extends string>(ops: Record<K, Op>, budget: Budget, clocks: CpuClocks = {}): Promise<Record<K, Latency>> {
  const names = Object.keys(ops) as K[];
  for (const name of names) for (let i = 0; i < budget.warmup; i++) await ops[name]();
  const samples = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  const cpuMs = Object.fromEntries(names.map((name) => [name, {}])) as Record<K, Record<string, number>>;
  const deadline = performance.now() + budget.maxMs;
  for (let done = 0; done < budget.count && performance.now() < deadline; ) {
    const block = Math.min(BLOCK_CALLS, budget.count - done);
    for (const name of names) {
      const cpuBefore = readClocks(clocks);
      for (let i = 0; i < block; i++) {
        const started = performance.now();
        await ops[name]();
        samples[name].push(performance.now() - started);
      }
      chargeSince(clocks, cpuBefore, cpuMs[name]);
    }
    done += block;
  }
  return Object.fromEntries(names.map((name) => [name, summarize(samples[name], cpuMs[name])])) as Record<K, Latency>;
}

export interface Throughput {
  calls: number;
  seconds: number;
  calls_per_s: number;
  /** The CPU time each of measureThroughput's clocks counted over the window, by clock name. */
  cpu_ms: Record<string, number>;
}

/** Keeps `concurrency` calls in flight (worker i calls `op(i)`) until `count` calls have started or `maxMs`
 *  has passed, after a warm-up; calls/s counts the calls completed over the wall time. */
export async function measureThroughput(op: (worker: number) => Promise<unknown>, concurrency: number, budget: Budget, clocks: CpuClocks = {}): Promise<Throughput> {
  await runWorkers(op, concurrency, budget.warmup, Number.POSITIVE_INFINITY);
  const cpuBefore = readClocks(clocks);
  const started = performance.now();
  const calls = await runWorkers(op, concurrency, budget.count, budget.maxMs);
  const seconds = (performance.now() - started) / 1000;
  const cpu_ms: Record<string, number> = {};
  chargeSince(clocks, cpuBefore, cpu_ms);
  return { calls, seconds: round(seconds), calls_per_s: Math.round(calls / seconds), cpu_ms };
}

/** Several windows of measureThroughput as one: calls/s over their total time, and each clock's CPU per call. */
export function totalThroughput(windows: readonly Throughput[]): Figures {
  const calls = windows.reduce((sum, w) => sum + w.calls, 0);
  const seconds = windows.reduce((sum, w) => sum + w.seconds, 0);
  const cpuMs: Record<string, number> = {};
  for (const w of windows) for (const [name, ms] of Object.entries(w.cpu_ms)) cpuMs[name] = (cpuMs[name] ?? 0) + ms;
  return { calls, seconds: round(seconds), calls_per_s: Math.round(calls / seconds), ...cpuPerCall(cpuMs, calls) };
}

async function runWorkers(op: (worker: number) => Promise<unknown>, concurrency: number, count: number, maxMs: number): Promise<number> {
  const deadline = performance.now() + maxMs;
  let started = 0;
  const worker = async (index: number) => {
    while (started < count && performance.now() < deadline) {
      started++;
      await op(index);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));
  return started;
}

/** A size field of /proc/<pid>/status in bytes (Linux only): VmRSS is resident now, VmHWM the peak so far. */
export function procStatusBytes(pid: number, field: "VmRSS" | "VmHWM"): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status)?.[1];
  if (!kib) throw new Error(`no ${field} for pid ${pid}`);
  return Number(kib) * 1024;
}

export const rssBytes = (pid: number) => procStatusBytes(pid, "VmRSS");
export const peakRssBytes = (pid: number) => procStatusBytes(pid, "VmHWM");

export const MB = 1_000_000;
export const MiB = 1024 * 1024;

/** Waits for `ready` to hold, polling every `pollMs`, for at most `timeoutMs`. */
export async function waitUntil(ready: () => boolean | Promise<boolean>, timeoutMs: number, what: string, pollMs = 20): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await ready()) return;
    await Bun.sleep(pollMs);
  }
  throw new Error(`${what}: not ready within ${timeoutMs} ms`);
}

const benchStarted = performance.now();

/** One progress line on stderr, stamped with the seconds since the run began (stdout is kept for the table). */
export function progress(message: string): void {
  const seconds = ((performance.now() - benchStarted) / 1000).toFixed(1).padStart(6);
  console.error(`[${seconds} s] ${message}`);
}
