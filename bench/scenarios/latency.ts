// Scenarios 1 to 4, 8 and 9: small calls one at a time and many at once, through the relay on each MCP path (a
// 2025 session and 2026-07-28) and through the peer. Calls being compared alternate block by block (sequential)
// or window by window (concurrent), so every side of each ratio meets the same machine noise; the relay's CPU
// time is charged to the blocks and windows it was spent in.

import { measureThroughput, sampleAlternating, totalThroughput, type Latency, type Op, type Throughput } from "../harness.ts";
import type { Peer } from "../peer.ts";
import { MCP_PATHS, onPath, type Figures, type Results, type ScenarioKey } from "../results.ts";
import { callOk, connectBenchClient, type Rig } from "../rig.ts";
import { CONCURRENT_CALLS, CONCURRENT_SESSIONS, type Settings } from "../settings.ts";
import type { McpClient } from "../../test/helpers/processes.ts";

type ToolCaller = Pick<McpClient, "callTool">;

/** read_file of the small file, checked once for the right content before it is timed. */
async function readFileOp(client: ToolCaller, file: string, expected: string): Promise<Op> {
  const result = await callOk(client, "read_file", { path: file });
  if (result.content !== expected) throw new Error("read_file returned other content than the file holds");
  return () => callOk(client, "read_file", { path: file });
}

/** The peer's read_text_file of the same file, checked the same way. */
async function peerReadOp(client: ToolCaller, file: string, expected: string): Promise<Op> {
  const result = await callOk(client, "read_text_file", { path: file });
  if (result.content !== expected) throw new Error("the peer's read_text_file returned other content than the file holds");
  return () => callOk(client, "read_text_file", { path: file });
}

const PEER_SEQUENTIAL: ScenarioKey = "8_peer_read_text_file";
const PEER_CONCURRENT: ScenarioKey = "8_peer_read_text_file_concurrent";

/** The relay's CPU is the relay's: the peer's figures do not carry it (the relay sits idle while the peer works). */
function withoutRelayCpu({ relay_cpu_per_call_ms: _, ...latency }: Latency): Figures {
  return latency;
}

/** Scenarios 1, 2 and 8 (sequential): on each path a request the relay answers itself (ping; server/discover on
 *  2026-07-28) and read_file, and the peer's read_text_file, all in alternating blocks. */
export async function sequentialCalls(rig: Rig, peer: Peer | undefined, settings: Settings, results: Results): Promise<void> {
  const expected = await Bun.file(rig.smallFile).text();
  const ops: Partial<Record<ScenarioKey, Op>> = {};
  for (const path of MCP_PATHS) {
    const client = await rig.clientOn(path);
    ops[onPath("1_ping", path)] = () => client.noHop();
    ops[onPath("2_read_file", path)] = await readFileOp(client, rig.smallFile, expected);
  }
  if (peer) ops[PEER_SEQUENTIAL] = await peerReadOp(await peer.connect(), rig.smallFile, expected);
  const measured = await sampleAlternating(ops as Record<ScenarioKey, Op>, settings.sequential, { relay: rig.relayCpu });
  for (const [key, latency] of Object.entries(measured) as [ScenarioKey, Latency][]) {
    results.record(key, key === PEER_SEQUENTIAL ? withoutRelayCpu(latency) : { ...latency });
  }
}

/** Scenarios 3 and 8 (concurrent): 32 calls in flight from 4 clients (sessions, but on 2026-07-28), the relay on
 *  each path and the peer in alternating windows; calls/s is the total over all windows of each side. */
export async function concurrentCalls(rig: Rig, peer: Peer | undefined, settings: Settings, results: Results): Promise<void> {
  const expected = await Bun.file(rig.smallFile).text();
  const clientOf = (ops: Op[]) => (worker: number) => ops[worker % ops.length]!();
  const sides: Partial<Record<ScenarioKey, (worker: number) => Promise<unknown>>> = {};
  for (const path of MCP_PATHS) {
    const ops = await Promise.all((await rig.clients(path, CONCURRENT_SESSIONS)).map((c) => readFileOp(c, rig.smallFile, expected)));
    sides[onPath("3_read_file_concurrent", path)] = clientOf(ops);
  }
  if (peer) {
    const ops = await Promise.all(Array.from({ length: CONCURRENT_SESSIONS }, async () => peerReadOp(await peer.connect(), rig.smallFile, expected)));
    sides[PEER_CONCURRENT] = clientOf(ops);
  }
  const entries = Object.entries(sides) as [ScenarioKey, (worker: number) => Promise<unknown>][];
  const windows = new Map(entries.map(([key]) => [key, [] as Throughput[]]));
  for (let round = 0; round < settings.concurrent.rounds; round++) {
    for (const [key, op] of entries) {
      windows.get(key)!.push(await measureThroughput(op, CONCURRENT_CALLS, settings.concurrent, key === PEER_CONCURRENT ? {} : { relay: rig.relayCpu }));
    }
  }
  for (const [key, measured] of windows) {
    const clientsAre = key === "3_read_file_concurrent_2026" ? "clients" : "sessions";
    results.record(key, { ...totalThroughput(measured), in_flight: CONCURRENT_CALLS, [clientsAre]: CONCURRENT_SESSIONS });
  }
}

/** Scenario 9: tools/list (12 tools with their JSON Schemas) on each path, in alternating blocks, each from a
 *  client of its own (a v1 client that has listed the tools validates every later call's output against them). */
export async function toolsList(rig: Rig, settings: Settings, results: Results): Promise<void> {
  const clients = await Promise.all(MCP_PATHS.map((path) => connectBenchClient(rig.relay, path)));
  try {
    const ops: Partial<Record<ScenarioKey, Op>> = {};
    for (const client of clients) {
      const { tools } = await client.listTools();
      if (tools.length === 0) throw new Error(`tools/list on the ${client.path} path listed no tools`);
      ops[onPath("9_tools_list", client.path)] = () => client.listTools();
    }
    const measured = await sampleAlternating(ops as Record<ScenarioKey, Op>, settings.list, { relay: rig.relayCpu });
    for (const [key, latency] of Object.entries(measured) as [ScenarioKey, Latency][]) results.record(key, { ...latency });
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/** Scenario 4: run_shell_command "true" against Bun.spawn of the same shell with the same arguments, here. The
 *  shell is the one the agent reports, so both start the same binary. */
export async function shellOverhead(rig: Rig, settings: Settings, results: Results): Promise<string> {
  const status = await callOk(rig.client, "check_agent_status", {});
  const shell = (status.machines as { shell: string }[])[0]!.shell;
  const ops: Record<"tool" | "direct", Op> = {
    tool: async () => {
      const result = await callOk(rig.client, "run_shell_command", { command: "true" });
      if (result.exit_code !== 0) throw new Error(`run_shell_command "true" exited with ${result.exit_code}`);
    },
    direct: async () => {
      const code = await Bun.spawn([shell, "-c", "true"]).exited;
      if (code !== 0) throw new Error(`${shell} -c true exited with ${code}`);
    },
  };
  const measured = await sampleAlternating(ops, settings.shell);
  results.record("4_shell_tool", { ...measured.tool });
  results.record("4_shell_direct", { ...measured.direct });
  return shell;
}
