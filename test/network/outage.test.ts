// Real (emulated) networks: the agent runs in a network namespace of the test's own, linked to the relay in the root
// namespace by a veth pair (test/helpers/netns.ts), and the link is cut by dropping every frame on it, both ways,
// without a RST or FIN: half-dead, as behind a dead NAT, on a train, or when a laptop sleeps. The client stays in
// the root namespace on loopback. Measured and asserted, each on its own namespace, relay and agent, side by side
// (issue 17's targets; network.md's figures: heartbeats every 2 s, silent for 6 s is dead, backoff capped at 5 s,
// RECONNECT_GRACE_S 30 s):
//   - after a 60 s outage, the first successful call comes within 3 s of the link's return (with ARP dropped too,
//     and with ARP still answered);
//   - a read_file issued 1 s into a 5 s blip succeeds, with progress saying the link is silent (and, if the link was
//     dropped meanwhile, saying so too);
//   - a call for a machine that dropped a moment ago waits, with progress "waiting for <machine> to reconnect",
//     and succeeds once the link is back;
//   - a half-dead link is found by the relay and by the agent within 10 s each.
// Every figure is printed, also when it misses its target. Skips, saying why, where namespaces cannot be made (not
// root, no ip or nft, no netns support). About 70 s in all: the 60 s outage is the long pole.
//
// The relay listens on every address (HOST=0.0.0.0): the agent dials it on the veth's 10.77.x.x address, and the
// client on 127.0.0.1, since the relay serves MCP only under a loopback Host (or PUBLIC_URL, which must be https).

import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { createNetNs, leftoversOfThisRun, removeAll, startAgentIn, type NetNs } from "../helpers/netns.ts";
import { connectClient, startRelay, type Agent, type McpClient, type Relay } from "../helpers/processes.ts";
import { call, type ToolCall } from "../helpers/tools.ts";
import { linkLines, seconds, skipWithoutNamespaces, stopBounded } from "./shared.ts";

const unavailable = skipWithoutNamespaces("test/network/outage.test.ts");

setDefaultTimeout(150_000);

/** Targets (issue 17). */
const RESTORE_TO_CALL_MS = 3_000;
const HALF_DEAD_DETECTED_MS = 10_000;
/** How long a test watches for something that misses its target, so the figure is still measured and printed. */
const WATCH_MS = 30_000;
const OUTAGE_MS = 60_000;
const BLIP_MS = 5_000;

const figures: string[] = [];
const report = (line: string) => {
  figures.push(line);
  console.log(`network: ${line}`);
};

const FILE_TEXT = "hello across the veth\n";

interface Net extends AsyncDisposable {
  ns: NetNs;
  relay: Relay;
  agent: Agent;
  client: McpClient & AsyncDisposable;
  file: string;
  /** Whether the relay lists the agent's machine (GET /health with the token). */
  relayHasMachine(): Promise<boolean>;
}

/** A namespace, a relay listening on every address (the agent reaches it on the veth, the client on loopback, which
 *  is what the relay's Host check serves), an agent inside the namespace, and a client whose first read_file has
 *  crossed the link (so every test starts from a link known to work). Disposed in reverse; the link is restored
 *  first so that the agent can say goodbye. */
async function startNet(): Promise<Net> {
  const parts = new AsyncDisposableStack();
  try {
    const ns = await createNetNs();
    parts.defer(async () => {
      const left = await ns.remove();
      if (left.length) console.error(`network: left behind: ${left.join(", ")}`);
    });
    const relay = await startRelay({ env: { HOST: "0.0.0.0" } });
    parts.defer(() => stopBounded(relay, 10_000));
    const agent = await startAgentIn(ns, relay);
    parts.defer(async () => {
      if (ns.isCut) ns.restore();
      await stopBounded(agent);
    });
    const loopback = { url: new URL(`http://127.0.0.1:${relay.port}`), token: relay.token };
    const client = await connectClient(loopback, "streamable-http");
    parts.defer(() => Promise.race([client.close().catch(() => {}), Bun.sleep(5_000)]));
    const file = path.join(agent.roots[0]!, "hello.txt");
    fs.writeFileSync(file, FILE_TEXT);
    const first = await call(client, "read_file", { path: file, machine: agent.machine });
    if (!readOk(first)) throw new Error(`the first read_file across the veth failed: ${first.text}`);
    const stack = parts.move();
    return {
      ns,
      relay,
      agent,
      client,
      file,
      async relayHasMachine() {
        const res = await fetch(`http://127.0.0.1:${relay.port}/health`, { headers: { Authorization: `Bearer ${relay.token}` }, signal: AbortSignal.timeout(2_000) });
        const body = (await res.json()) as { machines?: string[] };
        return (body.machines ?? []).includes(agent.machine);
      },
      [Symbol.asyncDispose]: () => stack.disposeAsync(),
    };
  } catch (e) {
    await parts.disposeAsync();
    throw e;
  }
}

const readOk = (r: ToolCall) => !r.isError && r.text.includes(FILE_TEXT.trim());

/** Resolves with the time the relay no longer lists the machine (polled every 100 ms), or undefined after `withinMs`. */
async function whenRelayDrops(net: Net, withinMs: number): Promise<number | undefined> {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    if (!(await net.relayHasMachine().catch(() => true))) return Date.now();
    await Bun.sleep(100);
  }
  return undefined;
}

/** Resolves with the time the agent logs that its link ended (a line from `from` on), or undefined after `withinMs`. */
async function whenAgentNotices(net: Net, from: number, withinMs: number): Promise<number | undefined> {
  try {
    await net.agent.stderr.waitFor(/agent (warn|info) disconnected/, withinMs, from);
    return Date.now();
  } catch {
    return undefined;
  }
}

/** A read_file of the test file, issued now, with the progress it hears (when, from the issue, and what). */
function readWithProgress(net: Net) {
  const progress: { at: number; message: string }[] = [];
  const issuedAt = Date.now();
  const pending = net.client
    .callTool({ name: "read_file", arguments: { path: net.file, machine: net.agent.machine } }, undefined, {
      timeout: 60_000,
      onprogress: (p) => void progress.push({ at: Date.now() - issuedAt, message: p.message ?? "" }),
    })
    .then(
      (result) => ({ result, at: Date.now() }),
      (error: Error) => ({ error, at: Date.now() }),
    );
  return { progress, issuedAt, pending };
}

/** What a read's outcome said, and whether it read the file. */
function judged(outcome: Awaited<ReturnType<typeof readWithProgress>["pending"]>): { text: string; ok: boolean } {
  const text = "result" in outcome ? ((outcome.result.content as { type: string; text?: string }[])?.[0]?.text ?? "") : outcome.error.message;
  return { text, ok: "result" in outcome && outcome.result.isError !== true && text.includes(FILE_TEXT.trim()) };
}

describe.skipIf(unavailable !== undefined)("network outages (agent in a network namespace, link cut with nft)", () => {
  afterAll(async () => {
    await removeAll();
    if (figures.length) console.log(`network figures:\n${figures.map((f) => `  ${f}`).join("\n")}`);
    const left = leftoversOfThisRun();
    if (left.length) throw new Error(`namespaces or veths left behind: ${left.join(", ")}`);
  });

  // Two kinds of dead link: everything dropped, ARP too (the Wi-Fi is gone: a dial fails with "no route to host"
  // after ~3 s of unanswered ARP), and everything but ARP (a dead upstream behind a live access point: a dial's SYNs
  // vanish and it hangs in SYN_SENT, retried by the kernel at 1, 3, 7, 15, 31, 63 s, unless the agent gives up on it).
  for (const keepArp of [false, true]) {
    test.concurrent(`after a 60 s outage (${keepArp ? "ARP answered" : "ARP dropped too"}), the first call succeeds within 3 s of the link's return`, async () => {
      await using net = await startNet();

      const relayFrom = net.relay.stderr.lines.length;
      const agentFrom = net.agent.stderr.lines.length;
      const cutAt = net.ns.cut({ keepArp });
      // Detection is measured here too, for the record (the half-dead test asserts it).
      const detected = Promise.all([whenRelayDrops(net, OUTAGE_MS), whenAgentNotices(net, agentFrom, OUTAGE_MS)]);
      await Bun.sleep(OUTAGE_MS - (Date.now() - cutAt));
      const [relayDropped, agentNoticed] = await detected;
      const restoredAt = net.ns.restore();
      const restoreLine = net.agent.stderr.lines.length;

      // Calls from the moment the link is back, one after another, until one succeeds (bounded): a call for a machine
      // gone longer than the grace fails at once; one the relay holds waits for the agent.
      let attempts = 0;
      let last: ToolCall | Error | undefined;
      let succeededAt: number | undefined;
      const deadline = restoredAt + 45_000;
      while (Date.now() < deadline) {
        attempts++;
        try {
          last = await call(net.client, "read_file", { path: net.file, machine: net.agent.machine }, { timeout: Math.max(1_000, deadline - Date.now()) });
        } catch (e) {
          last = e as Error;
        }
        if (!(last instanceof Error) && readOk(last)) {
          succeededAt = Date.now();
          break;
        }
        await Bun.sleep(100);
      }
      const backAt = await net.agent.stderr.waitFor(/agent info connected/, 1, restoreLine).then(() => true, () => false);
      const ms = succeededAt === undefined ? undefined : succeededAt - restoredAt;
      report(
        `60 s outage, ${keepArp ? "ARP answered" : "ARP dropped too"}: restore to first successful call ${seconds(ms)} (target ≤ ${RESTORE_TO_CALL_MS / 1000} s; ${attempts} calls; ` +
          `the relay had dropped the agent after ${seconds(relayDropped && relayDropped - cutAt)}, the agent noticed after ${seconds(agentNoticed && agentNoticed - cutAt)}; ` +
          `agent ${backAt ? "reconnected" : "had not reconnected"})`,
      );
      const lastSaid = last instanceof Error ? last.message : last?.text;
      expect(ms, `no successful call within 45 s of the restore; the last said: ${lastSaid}\n${linkLines(net, relayFrom, agentFrom)}`).toBeDefined();
      expect(ms!, `restore to first successful call\n${linkLines(net, relayFrom, agentFrom)}`).toBeLessThanOrEqual(RESTORE_TO_CALL_MS);
    });
  }

  test.concurrent("a read_file issued during a 5 s blip succeeds", async () => {
    await using net = await startNet();

    const relayFrom = net.relay.stderr.lines.length;
    const agentFrom = net.agent.stderr.lines.length;
    const cutAt = net.ns.cut();
    await Bun.sleep(1_000);
    const { progress, issuedAt, pending } = readWithProgress(net);
    await Bun.sleep(BLIP_MS - (Date.now() - cutAt));
    const restoredAt = net.ns.restore();
    const outcome = await pending;
    const { text, ok } = judged(outcome);
    const relayDropped = net.relay.stderr.lines.slice(relayFrom).some((l) => /agent disconnected|link silent|agent replaced/.test(l));
    const agentDropped = net.agent.stderr.lines.slice(agentFrom).some((l) => /disconnected/.test(l));
    report(
      `5 s blip: a read_file issued 1 s into it ${ok ? "succeeded" : "FAILED"} after ${seconds(outcome.at - issuedAt)} ` +
        `(${seconds(outcome.at - restoredAt)} after the restore); progress: ${progress.length ? progress.map((p) => `${seconds(p.at)} "${p.message}"`).join(", ") : "none"}; ` +
        `the relay ${relayDropped ? "dropped" : "kept"} the link, the agent ${agentDropped ? "dropped" : "kept"} it`,
    );
    expect(ok, `the call said: ${text}\n${linkLines(net, relayFrom, agentFrom)}`).toBe(true);
    // Waiting on a link silent for more than 3 s, before it or after it was sent, the call is told so.
    const quiet = `waiting for ${net.agent.machine}: its link has been silent for`;
    expect(progress.some((p) => p.message.startsWith(quiet)), `progress: ${JSON.stringify(progress)}`).toBe(true);
    // A call sent on the old link either rides it out (the link survived the blip: nothing to wait for) or, when
    // either side dropped the link meanwhile, says so: it waits for the agent to come back, or, when the agent was
    // back on a new link before the relay found the old one dead (it replaced it), is sent again at once.
    if (relayDropped || agentDropped) {
      const machine = net.agent.machine;
      const saidSo = (message: string) => message.startsWith(`waiting for ${machine} to reconnect`) || message.startsWith(`the link to ${machine} dropped`);
      expect(progress.some((p) => saidSo(p.message)), `progress: ${JSON.stringify(progress)}`).toBe(true);
    }
  });

  test.concurrent("a call for a machine that dropped a moment ago waits, with progress, and succeeds once the link is back", async () => {
    await using net = await startNet();

    const relayFrom = net.relay.stderr.lines.length;
    const agentFrom = net.agent.stderr.lines.length;
    const cutAt = net.ns.cut();
    const dropped = await whenRelayDrops(net, WATCH_MS);
    expect(dropped, `the relay did not drop the agent within ${WATCH_MS / 1000} s of the cut\n${linkLines(net, relayFrom, agentFrom)}`).toBeDefined();

    const { progress, issuedAt, pending } = readWithProgress(net);
    // Long enough for the first progress and a second one (every 2 s); then the link comes back.
    await Bun.sleep(3_000);
    const restoredAt = net.ns.restore();
    const outcome = await pending;
    const { text, ok } = judged(outcome);
    report(
      `dropped a moment ago: the relay dropped the agent ${seconds(dropped! - cutAt)} into the cut; a read_file issued then ` +
        `${ok ? "succeeded" : "FAILED"} after ${seconds(outcome.at - issuedAt)} (${seconds(outcome.at - restoredAt)} after the restore); ` +
        `progress: ${progress.length ? progress.map((p) => `${seconds(p.at)} "${p.message}"`).join(", ") : "none"}`,
    );
    expect(ok, `the call said: ${text}\n${linkLines(net, relayFrom, agentFrom)}`).toBe(true);
    const waiting = progress.filter((p) => p.message.startsWith(`waiting for ${net.agent.machine} to reconnect`));
    expect(waiting.length, `progress while it waited: ${JSON.stringify(progress)}`).toBeGreaterThanOrEqual(1);
    expect(waiting[0]!.at, "the first progress comes at once").toBeLessThan(1_000);
  });

  test.concurrent("a half-dead link is found within 10 s by the relay and by the agent", async () => {
    await using net = await startNet();

    const relayFrom = net.relay.stderr.lines.length;
    const agentFrom = net.agent.stderr.lines.length;
    const cutAt = net.ns.cut();
    const [relayDropped, agentNoticed] = await Promise.all([whenRelayDrops(net, WATCH_MS), whenAgentNotices(net, agentFrom, WATCH_MS)]);
    net.ns.restore();
    const relayMs = relayDropped && relayDropped - cutAt;
    const agentMs = agentNoticed && agentNoticed - cutAt;
    const relaySaid = net.relay.stderr.lines.slice(relayFrom).find((l) => /link silent|agent disconnected/.test(l)) ?? "nothing";
    const agentSaid = net.agent.stderr.lines.slice(agentFrom).find((l) => /disconnected/.test(l)) ?? "nothing";
    report(
      `half-dead link: the relay dropped the agent after ${seconds(relayMs)}, the agent noticed after ${seconds(agentMs)} ` +
        `(target ≤ ${HALF_DEAD_DETECTED_MS / 1000} s each); relay: ${relaySaid.replace(/^\S+ /, "")}; agent: ${agentSaid.replace(/^\S+ /, "")}`,
    );
    expect(relayMs, `the relay did not drop the agent within ${WATCH_MS / 1000} s`).toBeDefined();
    expect(agentMs, `the agent did not notice within ${WATCH_MS / 1000} s`).toBeDefined();
    expect(relayMs!).toBeLessThanOrEqual(HALF_DEAD_DETECTED_MS);
    expect(agentMs!).toBeLessThanOrEqual(HALF_DEAD_DETECTED_MS);
    // And it comes back by itself once the link does.
    await net.agent.stderr.waitFor(/agent info connected/, WATCH_MS, agentFrom);
  });
});
