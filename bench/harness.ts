// The measuring kit every scenario shares: bounded sampling loops (each stops at a count or a time limit,
// whichever comes first), percentiles, throughput over concurrent workers, process RSS and CPU time from /proc,
// and progress lines. No scenario knows how to time anything on its own.

import * as fs from "node:fs";

/** How long and how often to sample one thing. A loop ends at `count` samples or `maxMs`, whichever is first. */
export interface Budget {
  /** Calls made and thrown away first, so JIT warm-up and first-connection costs don't count. */
  warmup: number;
  count: number;
  maxMs: number;
}

/** One latency series, in milliseconds. */
export interface Latency {
  n: number;
  p50_ms: number;
  p99_ms: number;
  mean_ms: number;
  min_ms: number;
  /** Sequential calls per second implied by the mean (one call at a time). */
  calls_per_s: number;
  /** CPU time the relay spent per call (all its threads), when the sampler was given its clock. */
  relay_cpu_per_call_ms?: number;
}

/** Three decimals (a microsecond) are plenty for milliseconds measured on a shared machine. */
export const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Nearest-rank percentile of ascending `sorted` (p in 0..1). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(p * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))]!;
}

export const median = (xs: readonly number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);

export function summarize(samplesMs: readonly number[], cpuMs?: number): Latency {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const mean = sorted.reduce((sum, x) => sum + x, 0) / sorted.length;
  return {
    n: sorted.length,
    p50_ms: round(percentile(sorted, 0.5)),
    p99_ms: round(percentile(sorted, 0.99)),
    mean_ms: round(mean),
    min_ms: round(sorted[0] ?? Number.NaN),
    calls_per_s: Math.round(1000 / mean),
    ...(cpuMs === undefined ? {} : { relay_cpu_per_call_ms: round(cpuMs / sorted.length) }),
  };
}

/** A process's CPU time so far in milliseconds, every thread's together (an exited thread's time is lost, which
 *  the relay's long-lived threads do not do). Read from each thread's /proc schedstat, which counts nanoseconds:
 *  /proc/<pid>/stat counts in ticks of 10 ms, too coarse for a block of calls of a few hundred microseconds each. */
export type CpuClock = () => number;

export function cpuClock(pid: number): CpuClock {
  const tasks = `/proc/${pid}/task`;
  return () => {
    let ns = 0;
    for (const tid of fs.readdirSync(tasks)) {
      try {
        ns += Number(fs.readFileSync(`${tasks}/${tid}/schedstat`, "utf8").split(" ")[0]);
      } catch {
        // The thread ended between the listing and the read.
      }
    }
    return ns / 1e6;
  };
}

export type Op = () => Promise<unknown>;

/** Calls per block in sampleAlternating: long enough that one system's after-work (GC, log writes) is over
 *  before the other is timed, short enough that both meet the same machine noise over the run. */
const BLOCK_CALLS = 100;

/** Times several operations one call at a time, in alternating blocks (A×100, B×100, C×100, A×100, …), so that
 *  a ratio or a difference between them is measured under the same conditions. With the relay's `cpu` clock, each
 *  operation is also charged the relay's CPU time over its own blocks. */
export async function sampleAlternating<K extends string>(ops: Record<K, Op>, budget: Budget, cpu?: CpuClock): Promise<Record<K, Latency>> {
  const names = Object.keys(ops) as K[];
  for (const name of names) for (let i = 0; i < budget.warmup; i++) await ops[name]();
  const samples = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  const cpuMs = Object.fromEntries(names.map((name) => [name, 0])) as Record<K, number>;
  const deadline = performance.now() + budget.maxMs;
  for (let done = 0; done < budget.count && performance.now() < deadline; ) {
    const block = Math.min(BLOCK_CALLS, budget.count - done);
    for (const name of names) {
      const cpuBefore = cpu?.() ?? 0;
      for (let i = 0; i < block; i++) {
        const started = performance.now();
        await ops[name]();
        samples[name].push(performance.now() - started);
      }
      if (cpu) cpuMs[name] += cpu() - cpuBefore;
    }
    done += block;
  }
  return Object.fromEntries(names.map((name) => [name, summarize(samples[name], cpu ? cpuMs[name] : undefined)])) as Record<K, Latency>;
}

export interface Throughput {
  calls: number;
  seconds: number;
  calls_per_s: number;
  /** The relay's CPU time over the window, when measureThroughput was given its clock. */
  relay_cpu_ms?: number;
}

/** Keeps `concurrency` calls in flight (worker i calls `op(i)`) until `count` calls have started or `maxMs`
 *  has passed, after a warm-up; calls/s counts the calls completed over the wall time. */
export async function measureThroughput(op: (worker: number) => Promise<unknown>, concurrency: number, budget: Budget, cpu?: CpuClock): Promise<Throughput> {
  await runWorkers(op, concurrency, budget.warmup, Number.POSITIVE_INFINITY);
  const cpuBefore = cpu?.() ?? 0;
  const started = performance.now();
  const calls = await runWorkers(op, concurrency, budget.count, budget.maxMs);
  const seconds = (performance.now() - started) / 1000;
  const measured = { calls, seconds: round(seconds), calls_per_s: Math.round(calls / seconds) };
  return cpu ? { ...measured, relay_cpu_ms: cpu() - cpuBefore } : measured;
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
