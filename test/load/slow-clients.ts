// The slow-client attack that runs beside the load: many connections that hold the relay's sockets and give it
// as little as possible. Debian's slowhttptest when it is installed (slow headers and slow bodies, the classic
// Slowloris and R-U-Dead-Yet), and always our own script on raw sockets: half-open connections that never send a
// byte, requests whose headers never end, and authenticated POSTs whose bodies trickle in. Nothing here sends a
// wrong token, so the relay's per-address penalties (limits.ts) never fall on the load's own address. Everything is
// on 127.0.0.1, bounded in connections and in time, and stops by itself.

import type { Socket } from "bun";
import { spawnProgram } from "../helpers/processes.ts";

export interface SlowClientOptions {
  port: number;
  /** The owner's token, for authenticated slow bodies (a right token never counts as a failure). */
  token: string;
  /** Connections of each kind held open at once. */
  halfOpen: number;
  slowHeaders: number;
  slowBodies: number;
  /** The attack ends by itself after this long. */
  durationMs: number;
}

export interface SlowClientFigures {
  /** Connections the script opened in all, by kind (it reopens what the relay closes, within its bound). */
  opened: Record<Kind, number>;
  /** Of those, how many the relay closed before the attack ended (its idle timeout), by kind. */
  closedByRelay: Record<Kind, number>;
  /** Most connections the script held open at one time. */
  peakOpen: number;
  /** slowhttptest, if it is installed, per mode: how often it was started, the connections it made and saw closed
   *  (from its last report of each run: it reports every few seconds, so the last closings may be missing), whether
   *  its probe found the service available, and why each run ended. */
  slowhttptest: { mode: string; runs: number; connections: number; closedByRelay: number; serviceAvailable: string[]; exitStatus: string[] }[];
}

/** Header lines and body bytes trickle in at this pace: under the relay's 30 s idle timeout, as an attacker would. */
const TRICKLE_EVERY_MS = 5_000;
/** slowhttptest stops at its own time limit (whole seconds, from its own start); it gets this long beyond ours. */
const SLOWHTTPTEST_GRACE_MS = 5_000;
/** slowhttptest is started again at most this many times per mode. */
const MAX_SLOWHTTPTEST_RUNS = 30;
/** Each slot reopens at most this many times, so a relay that closes everything cannot make the script spin. */
const MAX_REOPENS_PER_SLOT = 20;

type Kind = "halfOpen" | "slowHeaders" | "slowBodies";

/** slowhttptest's last status report (it prints one every few seconds, in colour) and why it ended. */
function lastReport(output: string): { connected: number | null; closed: number | null; serviceAvailable: string | null; exitStatus: string | null } {
  const plain = output.replace(/\x1b\[[0-9;]*m/g, "");
  const last = (label: string) => [...plain.matchAll(new RegExp(`${label}:[ \\t]+([^\\n]+)`, "g"))].at(-1)?.[1]?.trim() ?? null;
  const number = (value: string | null) => (value === null ? null : Number(value));
  return { connected: number(last("connected")), closed: number(last("closed")), serviceAvailable: last("service available"), exitStatus: last("Exit status") };
}

/** Starts the attack; `stop()` ends it early and returns what it did. */
export function startSlowClients(options: SlowClientOptions): { stop(): Promise<SlowClientFigures> } {
  const deadline = Date.now() + options.durationMs;
  const figures: SlowClientFigures = {
    opened: { halfOpen: 0, slowHeaders: 0, slowBodies: 0 },
    closedByRelay: { halfOpen: 0, slowHeaders: 0, slowBodies: 0 },
    peakOpen: 0,
    slowhttptest: [],
  };
  const live = new Set<Socket<{ kind: Kind }>>();
  let stopping = false;

  const request = (kind: Kind): string => {
    const host = `Host: 127.0.0.1:${options.port}\r\n`;
    if (kind === "slowHeaders") return `GET /mcp HTTP/1.1\r\n${host}Accept: text/event-stream\r\n`; // never a blank line
    if (kind === "slowBodies") {
      return `POST /mcp HTTP/1.1\r\n${host}Authorization: Bearer ${options.token}\r\nContent-Type: application/json\r\n` +
        `Accept: application/json, text/event-stream\r\nContent-Length: 1000000\r\n\r\n{"jsonrpc":"2.0",`;
    }
    return ""; // half-open: connect and say nothing
  };

  const open = async (kind: Kind, reopensLeft: number): Promise<void> => {
    if (stopping || Date.now() >= deadline) return;
    figures.opened[kind]++;
    let timer: ReturnType<typeof setInterval> | undefined;
    try {
      await Bun.connect<{ kind: Kind }>({
        hostname: "127.0.0.1",
        port: options.port,
        data: { kind },
        socket: {
          open(socket) {
            live.add(socket);
            figures.peakOpen = Math.max(figures.peakOpen, live.size);
            socket.write(request(kind));
            if (kind !== "halfOpen") timer = setInterval(() => socket.write(kind === "slowHeaders" ? `X-Slow-${figures.opened[kind]}: x\r\n` : " "), TRICKLE_EVERY_MS);
          },
          data() {}, // whatever the relay answers is read and dropped
          close(socket) {
            clearInterval(timer);
            live.delete(socket);
            if (stopping) return;
            figures.closedByRelay[kind]++;
            if (reopensLeft > 0) void open(kind, reopensLeft - 1);
          },
          error() {},
        },
      });
    } catch {
      // refused: the relay is saturated or gone; this slot gives up
    }
  };

  for (const kind of ["halfOpen", "slowHeaders", "slowBodies"] as Kind[]) {
    for (let i = 0; i < options[kind]; i++) void open(kind, MAX_REOPENS_PER_SLOT);
  }

  // slowhttptest: each run is bounded by its -c (connections) and -l (seconds). It gives up once the relay has
  // closed all its connections (the relay's idle timeout does that after about 10 s), so each mode is started
  // again until the deadline, at most MAX_SLOWHTTPTEST_RUNS times.
  const runs: Promise<void>[] = [];
  if (Bun.which("slowhttptest")) {
    const base = `http://127.0.0.1:${options.port}`;
    for (const [mode, url] of [
      ["-H", `${base}/mcp`], // slow headers (Slowloris)
      ["-B", `${base}/register`], // slow body (R-U-Dead-Yet) on a route that reads its body without a token
    ] as const) {
      const report = { mode, runs: 0, connections: 0, closedByRelay: 0, serviceAvailable: [] as string[], exitStatus: [] as string[] };
      figures.slowhttptest.push(report);
      runs.push(
        (async () => {
          while (!stopping && report.runs < MAX_SLOWHTTPTEST_RUNS && deadline - Date.now() > 2_000) {
            const seconds = String(Math.ceil((deadline - Date.now()) / 1000));
            const child = spawnProgram(["slowhttptest", mode, "-c", "200", "-r", "50", "-i", "5", "-s", "8192", "-l", seconds, "-p", "3", "-u", url]);
            report.runs++;
            // Past the deadline it gets a little grace to print its report (buffered until it exits), then SIGTERM.
            await Promise.race([child.proc.exited, Bun.sleep(Math.max(0, deadline - Date.now()) + SLOWHTTPTEST_GRACE_MS)]);
            await child.stop();
            await Bun.sleep(50); // let the output reader take the last lines
            const last = lastReport(child.stdout.text);
            report.connections += last.connected ?? 0;
            report.closedByRelay += last.closed ?? 0;
            if (last.serviceAvailable) report.serviceAvailable.push(last.serviceAvailable);
            if (last.exitStatus) report.exitStatus.push(last.exitStatus);
          }
        })(),
      );
    }
  }

  const ended = setTimeout(() => void stop(), Math.max(0, deadline - Date.now()));
  const stop = async (): Promise<SlowClientFigures> => {
    clearTimeout(ended);
    stopping = true;
    for (const socket of live) socket.terminate();
    live.clear();
    await Promise.all(runs);
    return figures;
  };
  return { stop };
}
