// Scenario 12: what calls cost over distances like the internet's (issue 17), on links emulated in user space
// (bench/delay-link.ts; this kernel has no netem): a 40 ms round trip from client to relay and another from relay to
// agent. A read_file should cost one round trip per hop and no more (80 ms plus the relay's and the agent's work);
// the first progress of a long command should arrive a second after the call plus those round trips; the bulk
// transfer of scenario 5 shows what the delay does to throughput. An echo through one link alone measures the links
// as emulated (timers, wake-ups), so what the relay and the agent add is read against that, not the nominal 40 ms.

import * as net from "node:net";
import * as path from "node:path";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { DelayLink } from "../delay-link.ts";
import { median, round, sampleAlternating, summarize, type Latency, type Op } from "../harness.ts";
import { startLinkedRig, type LinkedRig } from "../linked-rig.ts";
import { MCP_PATHS, onPath, type Figures, type Results, type ScenarioKey } from "../results.ts";
import { callOk, type BenchClient } from "../rig.ts";
import { LINK_ONE_WAY_MS, LINK_WARMUP_IN_FLIGHT, LONG_COMMAND, type Settings } from "../settings.ts";
import { bulkRounds } from "./bulk.ts";

/** No echo through a 40 ms link takes near this; it only turns a lost byte into an error. */
const ECHO_TIMEOUT_MS = 5_000;
/** LONG_COMMAND takes 1.5 s; a call that has not ended well after that has gone wrong. */
const LONG_CALL_TIMEOUT_MS = 30_000;

export async function overLinks(settings: Settings, results: Results): Promise<void> {
  results.record("12_links_round_trip", { ...(await echoRoundTrips(settings.links.roundTrips)) });
  await using rig = await startLinkedRig();
  await warmUp(rig, settings.links.warmupCalls);
  await readFileOverLinks(rig, settings, results);
  await firstProgressOverLinks(rig, settings, results);
  const bulk = await bulkRounds(await rig.clientOn("session"), path.join(rig.root, "bulk.bin"), settings.links.bulk);
  // The agent's one connection throughout: a reconnect in the middle would have cost calls a handshake.
  results.record("12_links_bulk", { ...bulk, agent_link_connections: rig.agentLink.accepted });
}

// --- the links alone ---

/** Round trips of one byte to an echo on loopback through one link, after one that opens the connection: the
 *  link's own round trip as emulated. */
async function echoRoundTrips(count: number): Promise<Latency> {
  await using echo = await startEchoServer();
  await using link = await DelayLink.start({ target: { port: echo.port }, oneWayMs: LINK_ONE_WAY_MS });
  const socket = await connectTo(link.port);
  try {
    await echoOnce(socket);
    const samples: number[] = [];
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      await echoOnce(socket);
      samples.push(performance.now() - started);
    }
    return summarize(samples);
  } finally {
    socket.destroy();
  }
}

async function startEchoServer(): Promise<{ port: number } & AsyncDisposable> {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on("data", (chunk) => socket.write(chunk));
    socket.on("error", () => {}); // the bench hung up
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function connectTo(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: "127.0.0.1", port, noDelay: true }, () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Sends one byte and waits for it to come back. */
function echoOnce(socket: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no echo through the link within ${ECHO_TIMEOUT_MS} ms`)), ECHO_TIMEOUT_MS);
    socket.once("data", () => (clearTimeout(timer), resolve()));
    socket.write("x");
  });
}

// --- warm-up ---

/** read_file and run_shell_command "true" on each path, LINK_WARMUP_IN_FLIGHT at a time, `calls` of each. */
async function warmUp(rig: LinkedRig, calls: number): Promise<void> {
  for (const mcpPath of MCP_PATHS) {
    const client = await rig.clientOn(mcpPath);
    await callsInFlight(() => callOk(client, "read_file", { path: rig.smallFile }), calls);
    await callsInFlight(() => callOk(client, "run_shell_command", { command: "true" }), calls);
  }
}

async function callsInFlight(op: Op, calls: number): Promise<void> {
  let left = calls;
  const worker = async () => {
    while (left-- > 0) await op();
  };
  await Promise.all(Array.from({ length: LINK_WARMUP_IN_FLIGHT }, worker));
}

// --- read_file ---

/** read_file of the small file on each path, in alternating blocks; each path's figures also count the TCP
 *  connections its client opened per call (a new one per request would cost a round trip more on a real link). */
async function readFileOverLinks(rig: LinkedRig, settings: Settings, results: Results): Promise<void> {
  const expected = await Bun.file(rig.smallFile).text();
  const ops: Partial<Record<ScenarioKey, Op>> = {};
  const counts: Partial<Record<ScenarioKey, { calls: number; connections: number }>> = {};
  for (const mcpPath of MCP_PATHS) {
    const client = await rig.clientOn(mcpPath);
    const key = onPath("12_links_read_file", mcpPath);
    const first = await callOk(client, "read_file", { path: rig.smallFile });
    if (first.content !== expected) throw new Error("read_file over the links returned other content than the file holds");
    const count = (counts[key] = { calls: 0, connections: 0 });
    ops[key] = async () => {
      const accepted = rig.clientLink.accepted;
      await callOk(client, "read_file", { path: rig.smallFile });
      count.calls++;
      count.connections += rig.clientLink.accepted - accepted;
    };
  }
  const measured = await sampleAlternating(ops as Record<ScenarioKey, Op>, settings.links.read);
  for (const [key, latency] of Object.entries(measured) as [ScenarioKey, Latency][]) {
    const { calls, connections } = counts[key]!;
    results.record(key, { ...latency, new_connections_per_call: round(connections / calls) });
  }
}

// --- the first progress of a long command ---

/** LONG_COMMAND on each path in turn, each call timed to its first progress notification and to its answer. */
async function firstProgressOverLinks(rig: LinkedRig, settings: Settings, results: Results): Promise<void> {
  const clients = await Promise.all(MCP_PATHS.map((mcpPath) => rig.clientOn(mcpPath)));
  const timings = new Map(clients.map((client) => [client, [] as { firstMs: number; answerMs: number }[]]));
  for (let i = 0; i < settings.links.progressCalls; i++) {
    for (const client of clients) timings.get(client)!.push(await timeToFirstProgress(client));
  }
  for (const [client, samples] of timings) results.record(onPath("12_links_first_progress", client.path), progressFigures(samples));
}

/** Sends LONG_COMMAND with a progress token (the SDK adds one when given onprogress). */
async function timeToFirstProgress(client: BenchClient): Promise<{ firstMs: number; answerMs: number }> {
  let firstAt: number | undefined;
  const sent = performance.now();
  const result = (await client.callTool({ name: "run_shell_command", arguments: { command: LONG_COMMAND } }, undefined, {
    timeout: LONG_CALL_TIMEOUT_MS,
    onprogress: () => void (firstAt ??= performance.now()),
  })) as CallToolResult;
  const answerMs = performance.now() - sent;
  if (result.isError) throw new Error(`run_shell_command "${LONG_COMMAND}" failed: ${JSON.stringify(result.content)}`);
  if (firstAt === undefined) throw new Error(`run_shell_command "${LONG_COMMAND}" answered in ${round(answerMs)} ms with no progress before`);
  return { firstMs: firstAt - sent, answerMs };
}

function progressFigures(samples: { firstMs: number; answerMs: number }[]): Figures {
  const first = samples.map((s) => s.firstMs);
  return {
    calls: samples.length,
    first_progress_p50_ms: round(median(first)),
    first_progress_min_ms: round(Math.min(...first)),
    first_progress_max_ms: round(Math.max(...first)),
    answer_p50_ms: round(median(samples.map((s) => s.answerMs))),
  };
}
