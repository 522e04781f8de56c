// Scenarios 1 to 4 and 8: small calls one at a time and many at once, through the relay and through the peer.
// Calls being compared alternate block by block (sequential) or window by window (concurrent), so both
// sides of each ratio meet the same machine noise.

import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { measureThroughput, round, sampleAlternating, type Op, type Throughput } from "../harness.ts";
import type { Peer } from "../peer.ts";
import type { Results } from "../results.ts";
import { callOk, type Rig } from "../rig.ts";
import { CONCURRENT_CALLS, CONCURRENT_SESSIONS, type Settings } from "../settings.ts";

/** read_file of the small file, checked once for the right content before it is timed. */
async function readFileOp(client: Client, file: string, expected: string): Promise<Op> {
  const result = await callOk(client, "read_file", { path: file });
  if (result.content !== expected) throw new Error("read_file returned other content than the file holds");
  return () => callOk(client, "read_file", { path: file });
}

/** The peer's read_text_file of the same file, checked the same way. */
async function peerReadOp(client: Client, file: string, expected: string): Promise<Op> {
  const result = await callOk(client, "read_text_file", { path: file });
  if (result.content !== expected) throw new Error("the peer's read_text_file returned other content than the file holds");
  return () => callOk(client, "read_text_file", { path: file });
}

/** Scenarios 1, 2 and 8 (sequential): ping, read_file and the peer's read_text_file, in alternating blocks. */
export async function sequentialCalls(rig: Rig, peer: Peer | undefined, settings: Settings, results: Results): Promise<void> {
  const expected = await Bun.file(rig.smallFile).text();
  const ops: Record<string, Op> = {
    ping: () => rig.client.ping(),
    read_file: await readFileOp(rig.client, rig.smallFile, expected),
  };
  if (peer) ops.peer = await peerReadOp(await peer.connect(), rig.smallFile, expected);
  const measured = await sampleAlternating(ops, settings.sequential);
  results.record("1_ping", { ...measured.ping! });
  results.record("2_read_file", { ...measured.read_file! });
  if (measured.peer) results.record("8_peer_read_text_file", { ...measured.peer });
}

/** Scenarios 3 and 8 (concurrent): 32 calls in flight from 4 sessions, the relay and the peer in alternating
 *  windows; calls/s is the total over all windows of each side. */
export async function concurrentCalls(rig: Rig, peer: Peer | undefined, settings: Settings, results: Results): Promise<void> {
  const expected = await Bun.file(rig.smallFile).text();
  const ours = await Promise.all((await rig.sessions(CONCURRENT_SESSIONS)).map((c) => readFileOp(c, rig.smallFile, expected)));
  const theirs = peer
    ? await Promise.all(Array.from({ length: CONCURRENT_SESSIONS }, async () => peerReadOp(await peer.connect(), rig.smallFile, expected)))
    : [];
  const sessionOf = (ops: Op[]) => (worker: number) => ops[worker % ops.length]!();
  const windows = { ours: [] as Throughput[], theirs: [] as Throughput[] };
  for (let round = 0; round < settings.concurrent.rounds; round++) {
    windows.ours.push(await measureThroughput(sessionOf(ours), CONCURRENT_CALLS, settings.concurrent));
    if (peer) windows.theirs.push(await measureThroughput(sessionOf(theirs), CONCURRENT_CALLS, settings.concurrent));
  }
  results.record("3_read_file_concurrent", total(windows.ours));
  if (peer) results.record("8_peer_read_text_file_concurrent", total(windows.theirs));
}

function total(windows: Throughput[]) {
  const calls = windows.reduce((sum, w) => sum + w.calls, 0);
  const seconds = windows.reduce((sum, w) => sum + w.seconds, 0);
  return { calls, seconds: round(seconds), calls_per_s: Math.round(calls / seconds), in_flight: CONCURRENT_CALLS, sessions: CONCURRENT_SESSIONS };
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
