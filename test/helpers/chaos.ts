// Fault injection for the chaos and load suites: a TCP proxy whose live connections can be turned into a black
// hole (a network that drops everything without a FIN or RST), small tmpfs and read-only bind mounts (root only;
// probed once so tests can skip with a reason), and /proc readers for process groups and resident memory.
// Everything stays on loopback and in directories the test made.

import * as fs from "node:fs";
import type { Socket } from "bun";
import { tempDir, type McpClient } from "./processes.ts";
import { call } from "./tools.ts";

// --- a proxy that can cut the link without closing it ---

interface Side {
  socket?: Socket<unknown>;
  /** Bytes waiting for this side to accept them (writes may be partial under backpressure). */
  queue: Uint8Array[];
  closed: boolean;
}

interface Pair {
  client: Side;
  upstream: Side;
  /** Once cut, nothing passes in either direction and neither side is told: no FIN, no RST. */
  cut: boolean;
}

export interface CuttableProxy extends AsyncDisposable {
  port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Black-holes every connection open now; connections made afterwards pass normally. */
  cut(): void;
}

function flush(side: Side): void {
  while (side.socket && side.queue.length > 0) {
    const chunk = side.queue[0]!;
    const written = side.socket.write(chunk);
    if (written < chunk.length) {
      side.queue[0] = chunk.subarray(Math.max(0, written));
      return; // the rest goes on drain
    }
    side.queue.shift();
  }
}

function forward(pair: Pair, to: Side, data: Uint8Array): void {
  if (pair.cut || to.closed) return;
  to.queue.push(new Uint8Array(data)); // copy: Bun reuses the buffer it hands to data()
  flush(to);
}

function closeBoth(pair: Pair): void {
  if (pair.cut) return; // a dead network tells nobody
  for (const side of [pair.client, pair.upstream]) {
    if (side.closed) continue;
    side.closed = true;
    side.socket?.end();
  }
}

/** A TCP proxy on 127.0.0.1 in front of `targetPort` on 127.0.0.1. */
export function startCuttableProxy(targetPort: number): CuttableProxy {
  const pairs = new Set<Pair>();
  let accepted = 0;
  const listener = Bun.listen<Pair>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        accepted++;
        const pair: Pair = { client: { socket: client, queue: [], closed: false }, upstream: { queue: [], closed: false }, cut: false };
        client.data = pair;
        pairs.add(pair);
        void Bun.connect<Pair>({
          hostname: "127.0.0.1",
          port: targetPort,
          data: pair,
          socket: {
            open(upstream) {
              pair.upstream.socket = upstream;
              flush(pair.upstream);
            },
            data: (_upstream, data) => forward(pair, pair.client, data),
            drain: () => flush(pair.upstream),
            close: () => closeBoth(pair),
            error: () => closeBoth(pair),
          },
        }).catch(() => closeBoth(pair));
      },
      data: (client, data) => forward(client.data, client.data.upstream, data),
      drain: (client) => flush(client.data.client),
      close: (client) => closeBoth(client.data),
      error: (client) => closeBoth(client.data),
    },
  });
  return {
    port: listener.port,
    get accepted() {
      return accepted;
    },
    cut() {
      for (const pair of pairs) pair.cut = true;
    },
    async [Symbol.asyncDispose]() {
      listener.stop(true);
      for (const pair of pairs) for (const side of [pair.client, pair.upstream]) side.socket?.terminate();
    },
  };
}

// --- mounts (root only) ---

const run = (argv: string[]) => Bun.spawnSync(argv, { stderr: "pipe" });

/** Whether this process may mount file systems (root with CAP_SYS_ADMIN): tried once, on a throwaway tmpfs. */
export const canMount: boolean = (() => {
  if (process.platform !== "linux" || process.getuid?.() !== 0) return false;
  using probe = tempDir("cr-mount-probe-");
  if (run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe.path]).exitCode !== 0) return false;
  run(["umount", probe.path]);
  return true;
})();

/** A fresh directory with a tmpfs of `bytes` mounted on it; dispose unmounts and removes it. */
export function smallTmpfs(bytes: number, prefix = "cr-tmpfs-"): { path: string } & Disposable {
  const dir = tempDir(prefix);
  const mounted = run(["mount", "-t", "tmpfs", "-o", `size=${bytes},mode=0755`, "tmpfs", dir.path]);
  if (mounted.exitCode !== 0) throw new Error(`mount tmpfs failed: ${mounted.stderr.toString()}`);
  return {
    path: dir.path,
    [Symbol.dispose]: () => {
      run(["umount", "-l", dir.path]);
      dir[Symbol.dispose]();
    },
  };
}

/** `source` seen read-only at a fresh directory (a read-only bind mount); dispose unmounts it. */
export function readOnlyView(source: string, prefix = "cr-ro-"): { path: string } & Disposable {
  const dir = tempDir(prefix);
  for (const argv of [
    ["mount", "--bind", source, dir.path],
    ["mount", "-o", "remount,bind,ro", dir.path],
  ]) {
    const result = run(argv);
    if (result.exitCode !== 0) {
      run(["umount", "-l", dir.path]);
      throw new Error(`${argv.join(" ")} failed: ${result.stderr.toString()}`);
    }
  }
  return {
    path: dir.path,
    [Symbol.dispose]: () => {
      run(["umount", "-l", dir.path]);
      fs.rmdirSync(dir.path);
    },
  };
}

// --- /proc readers ---

/** The pids in process group `pgid` (ps, as a user would look). */
export function processGroup(pgid: number): number[] {
  const ps = Bun.spawnSync(["ps", "-eo", "pid=,pgid="]).stdout.toString();
  return ps
    .split("\n")
    .map((line) => line.trim().split(/\s+/).map(Number))
    .filter(([pid, group]) => group === pgid && pid !== undefined && pid > 0)
    .map(([pid]) => pid!);
}

/** The process group of `pid`, or null when it is gone. */
export function groupOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]);
  } catch {
    return null;
  }
}

/** Resident memory of a process now, in bytes (Linux /proc). */
export function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

/** Samples `rssBytes(pid)` every `everyMs` until stopped; returns the samples. */
export function sampleRss(pid: number, everyMs: number): { stop(): number[]; readonly samples: number[] } {
  const samples: number[] = [];
  const take = () => {
    try {
      samples.push(rssBytes(pid));
    } catch {
      // the process is gone: no more samples
    }
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    samples,
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** Bytes used by the files directly in `dir` (those whose name passes `which`). */
export function directoryBytes(dir: string, which: (name: string) => boolean = () => true): number {
  return fs.readdirSync(dir).filter(which).reduce((sum, name) => {
    try {
      return sum + fs.statSync(`${dir}/${name}`).size;
    } catch {
      return sum; // removed meanwhile (a rotated log segment)
    }
  }, 0);
}

export const MiB = 1024 * 1024;

// --- following a command ---

/** Follows a command with get_command_output until it is final and all output is read (at most `maxCalls`
 *  calls); returns its whole output and the last answer. */
export async function followCommand(client: McpClient, commandId: string, maxCalls = 30): Promise<{ output: string; last: Record<string, any> }> {
  let output = "";
  let offset = 0;
  for (let i = 0; i < maxCalls; i++) {
    const r = await call(client, "get_command_output", { command_id: commandId, offset, wait_seconds: 10 });
    if (r.isError) throw new Error(`get_command_output failed: ${r.text}`);
    output += r.data.output;
    offset = r.data.next_offset;
    if (!["running", "queued"].includes(r.data.state) && !r.data.more) return { output, last: r.data };
  }
  throw new Error(`${commandId} did not finish within ${maxCalls} get_command_output calls`);
}
