// Scenario 10: what a forwarded call costs in CPU, which is what a hosted relay pays for. Three sides, each in a
// 2025 Streamable HTTP session from the v1 SDK client, in alternating blocks (one call at a time) and then in
// alternating windows (32 in flight from 4 sessions), so all three meet the same machine noise:
//   - the relay forwarding read_file of 1 KiB to the agent: the relay's CPU and the agent's, per call;
//   - a bare echo server on the relay's SDK (bench/echo/server.ts) answering a tool call that carries the same 1 KiB
//     back: the SDK's own share of a call. The relay's CPU minus this is the relay's own work per call;
//   - the peer's read_text_file of the same file (when installed): its whole process tree's CPU per call, against
//     the relay's plus the agent's.
// CPU is read from /proc (harness.ts: cpuClock, processTreeCpuClock) before and after each block or window.

import { measureThroughput, round, sampleAlternating, totalThroughput, type CpuClocks, type Op, type Throughput } from "../harness.ts";
import { startEcho, type EchoServer } from "../echo.ts";
import type { Peer } from "../peer.ts";
import type { Figures, Results } from "../results.ts";
import { callOk, type Rig } from "../rig.ts";
import { CONCURRENT_CALLS, CONCURRENT_SESSIONS, type Settings } from "../settings.ts";

type Side = "relay" | "echo" | "peer";

/** Whose CPU each side's calls are charged with: the clocks' names, as the figures name them (`agent_cpu_per_call_ms`). */
const CHARGED: Record<Side, string[]> = { relay: ["relay", "agent"], echo: ["echo"], peer: ["peer_tree"] };

/** One operation per session of a side, each checked once for the right answer before anything is timed. */
type SideOps = Partial<Record<Side, Op[]>>;

async function checkedOp(call: () => Promise<Record<string, unknown>>, field: string, expected: string, what: string): Promise<Op> {
  if ((await call())[field] !== expected) throw new Error(`${what} returned other text than the 1 KiB file holds`);
  return call;
}

/** `sessions` sessions on each side (the relay's first one is the rig's own client). */
async function openSides(rig: Rig, echo: EchoServer, peer: Peer | undefined, sessions: number): Promise<SideOps> {
  const text = await Bun.file(rig.smallFile).text();
  const relayClients = sessions === 1 ? [rig.client] : await rig.clients("session", sessions);
  const times = <T>(make: () => Promise<T>) => Promise.all(Array.from({ length: sessions }, make));
  const sides: SideOps = {
    relay: await Promise.all(relayClients.map((c) => checkedOp(() => callOk(c, "read_file", { path: rig.smallFile }), "content", text, "read_file"))),
    echo: await times(async () => {
      const client = await echo.connect();
      return checkedOp(() => callOk(client, "echo", { text }), "text", text, "the echo server");
    }),
  };
  if (peer) {
    sides.peer = await times(async () => {
      const client = await peer.connect();
      return checkedOp(() => callOk(client, "read_text_file", { path: rig.smallFile }), "content", text, "the peer's read_text_file");
    });
  }
  return sides;
}

/** The sides' figures side by side, each with its own charged CPU only (`echo_p50_ms`, `relay_cpu_per_call_ms`, …),
 *  and the comparisons: the relay's own work per call, and the peer's tree over the relay and the agent together. */
function compare(measured: Partial<Record<Side, Figures>>, speed: "p50_ms" | "calls_per_s"): Figures {
  const figures: Figures = {};
  for (const [side, own] of Object.entries(measured) as [Side, Figures][]) {
    figures[`${side}_${speed}`] = own[speed]!;
    for (const clock of CHARGED[side]) figures[`${clock}_cpu_per_call_ms`] = own[`${clock}_cpu_per_call_ms`]!;
  }
  const ours = figures.relay_cpu_per_call_ms! + figures.agent_cpu_per_call_ms!;
  figures.relay_own_work_per_call_ms = round(figures.relay_cpu_per_call_ms! - figures.echo_cpu_per_call_ms!);
  figures.relay_plus_agent_cpu_per_call_ms = round(ours);
  if (figures.peer_tree_cpu_per_call_ms !== undefined) figures.peer_tree_over_relay_plus_agent = round(figures.peer_tree_cpu_per_call_ms / ours, 2);
  return figures;
}

function clocksOf(rig: Rig, echo: EchoServer, peer: Peer | undefined): CpuClocks {
  return { relay: rig.relayCpu, agent: rig.agentCpu, echo: echo.cpu, ...(peer ? { peer_tree: peer.cpu } : {}) };
}

async function sequential(sides: SideOps, clocks: CpuClocks, settings: Settings): Promise<Figures> {
  const ops = Object.fromEntries(Object.entries(sides).map(([side, ops]) => [side, ops[0]!])) as Record<Side, Op>;
  const measured = await sampleAlternating(ops, settings.sequential, clocks);
  return { ...compare(measured, "p50_ms"), n: measured.relay.n };
}

async function concurrent(sides: SideOps, clocks: CpuClocks, settings: Settings): Promise<Figures> {
  const windows = Object.fromEntries(Object.keys(sides).map((side) => [side, [] as Throughput[]])) as Record<Side, Throughput[]>;
  for (let round = 0; round < settings.concurrent.rounds; round++) {
    for (const [side, ops] of Object.entries(sides) as [Side, Op[]][]) {
      windows[side].push(await measureThroughput((worker) => ops[worker % ops.length]!(), CONCURRENT_CALLS, settings.concurrent, clocks));
    }
  }
  const measured = Object.fromEntries(Object.entries(windows).map(([side, w]) => [side, totalThroughput(w)]));
  return { ...compare(measured, "calls_per_s"), in_flight: CONCURRENT_CALLS, sessions: CONCURRENT_SESSIONS };
}

export async function cpuAgainstBaselines(rig: Rig, peer: Peer | undefined, settings: Settings, results: Results): Promise<string> {
  await using echo = await startEcho();
  const clocks = clocksOf(rig, echo, peer);
  results.record("10_cpu_sequential", await sequential(await openSides(rig, echo, peer, 1), clocks, settings));
  results.record("10_cpu_concurrent", await concurrent(await openSides(rig, echo, peer, CONCURRENT_SESSIONS), clocks, settings));
  return echo.description;
}
