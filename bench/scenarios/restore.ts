// Scenario 13: what a network outage costs once it is over (issue 17). The relay-agent link of scenario 12's rig is
// cut as a path that drops every packet would be (no FIN, no RST: bench/delay-link.ts). First a blip: two read_file
// calls sent during a short cut, one early and one late, must succeed, whether the link outlived the cut or the
// agent came back on a new one. Then an outage longer than the relay's reconnect grace: from the restore, read_file
// calls go out one after another until one succeeds, the wait a user has after opening the lid. Along the way, how
// long each side took to give up on the silent link (the half-dead link, to be found within 10 s).

import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import type { OutputLog } from "../../test/helpers/processes.ts";
import { round } from "../harness.ts";
import { startLinkedRig, type LinkedRig } from "../linked-rig.ts";
import type { Figures, Results } from "../results.ts";
import { callOk, type BenchClient } from "../rig.ts";
import type { Settings } from "../settings.ts";

/** Between two failed calls after the restore: a client that retries at once, give or take, without filling the
 *  relay's log and audit with thousands of refusals. */
const RETRY_PAUSE_MS = 50;
/** A call of the blip waits at most the relay's grace (30 s by default) plus the blip; this only ends a hang. */
const BLIP_CALL_TIMEOUT_MS = 60_000;

/** A log line printed before a call's answer left the relay is read here well within this. */
const LOG_SETTLE_MS = 500;
/** The log lines that tell when each side gave up on the silent link, and when the agent registered again. */
const RELAY_GAVE_UP = /agent link silent; closing/;
const AGENT_GAVE_UP = /\bdisconnected code=4008\b/;
const registeredLine = (machine: string) => new RegExp(`agent connected machine="${machine}"`);

export async function restoreAfterOutage(settings: Settings, results: Results): Promise<void> {
  await using rig = await startLinkedRig();
  const client = await rig.clientOn("session");
  await callOk(client, "read_file", { path: rig.smallFile }); // the path works before anything is cut
  const blip = await callDuringBlip(rig, client, settings.restore.blipMs);
  results.record("13_blip", blip.figures);
  if (blip.error) results.notes.blip = `the call during the blip failed: ${blip.error}`;
  // Whatever the blip did to the link, the agent is back and answering before the outage begins.
  await callOk(client, "read_file", { path: rig.smallFile });
  const outage = await firstCallAfterOutage(rig, client, settings.restore);
  results.record("13_restore", outage.figures);
  if (outage.firstRefusal) results.notes.restore = `a call in the first moments after the restore was answered: ${outage.firstRefusal}`;
}

// --- a blip ---

interface CallOutcome {
  ok: boolean;
  endedAt: number;
  progress: number;
  error?: string;
}

/** read_file of the small file, counting the progress notifications it brings; never throws for an error result. */
async function readCountingProgress(client: BenchClient, file: string, timeoutMs: number): Promise<CallOutcome> {
  let progress = 0;
  try {
    const result = (await client.callTool({ name: "read_file", arguments: { path: file } }, undefined, {
      timeout: timeoutMs,
      onprogress: () => void progress++,
    })) as CallToolResult;
    const first = result.content?.[0];
    const error = result.isError ? (first?.type === "text" ? first.text : JSON.stringify(result.content)) : undefined;
    return { ok: !result.isError, endedAt: performance.now(), progress, error };
  } catch (e) {
    return { ok: false, endedAt: performance.now(), progress, error: e instanceof Error ? e.message : String(e) };
  }
}

/** When in a blip its two calls are sent, as fractions of it: one while the relay still takes the link for alive (it
 *  heard the agent at the cut, since a call had just been answered), one after the link has been silent for longer
 *  than the relay trusts (QUIET_LINK_MS in relay/agents.ts, 3 s: in a 5 s blip, 4 s in), when it waits to hear it. */
const BLIP_CALLS_AT = { early: 0.2, late: 0.8 };

/** Cuts the agent's link for `blipMs`, sends a read_file early in the cut and another late, and restores it. */
async function callDuringBlip(rig: LinkedRig, client: BenchClient, blipMs: number): Promise<{ figures: Figures; error?: string }> {
  const registered = registeredLine(rig.agent.machine);
  const registrations = () => rig.relay.stderr.lines.filter((l) => registered.test(l)).length;
  const before = registrations();
  rig.agentLink.cut();
  const cutAt = performance.now();
  const sendAt = async (fraction: number) => {
    await Bun.sleep(Math.max(0, cutAt + blipMs * fraction - performance.now()));
    return { sentAt: performance.now(), outcome: await readCountingProgress(client, rig.smallFile, BLIP_CALL_TIMEOUT_MS) };
  };
  const calls = { early: sendAt(BLIP_CALLS_AT.early), late: sendAt(BLIP_CALLS_AT.late) };
  await Bun.sleep(blipMs);
  rig.agentLink.restore();
  const restoredAt = performance.now();
  const early = await calls.early;
  const late = await calls.late;
  const figures: Figures = { blip_s: blipMs / 1000, calls_ok: [early, late].every((c) => c.outcome.ok) ? 1 : 0 };
  for (const [name, call] of [["early", early], ["late", late]] as const) {
    figures[`${name}_call_sent_at_s`] = round((call.sentAt - cutAt) / 1000, 1);
    figures[`${name}_call_after_restore_ms`] = round(call.outcome.endedAt - restoredAt);
    figures[`${name}_call_progress_notifications`] = call.outcome.progress;
  }
  figures.agent_reconnected = registrations() > before ? 1 : 0;
  return { figures, error: early.outcome.error ?? late.outcome.error };
}

// --- an outage ---

/** Milliseconds from `since` until `log` prints a line matching `pattern` (from line `from` on), or undefined when
 *  none comes within `timeoutMs`. */
function timeToLine(log: OutputLog, pattern: RegExp, from: number, since: number, timeoutMs: number): Promise<number | undefined> {
  return log.waitFor(pattern, timeoutMs, from).then(
    () => round(performance.now() - since),
    () => undefined,
  );
}

/** Cuts the agent's link for `outageMs`, restores it, then sends read_file calls one after another until one
 *  succeeds; fails the scenario if none does within `retryForMs`. */
async function firstCallAfterOutage(
  rig: LinkedRig,
  client: BenchClient,
  { outageMs, retryForMs }: Settings["restore"],
): Promise<{ figures: Figures; firstRefusal?: string }> {
  const { relay, agent, agentLink } = rig;
  const dialsBefore = agentLink.accepted;
  agentLink.cut();
  const cutAt = performance.now();
  const relayGaveUp = timeToLine(relay.stderr, RELAY_GAVE_UP, relay.stderr.lines.length, cutAt, outageMs);
  const agentGaveUp = timeToLine(agent.stderr, AGENT_GAVE_UP, agent.stderr.lines.length, cutAt, outageMs);
  await Bun.sleep(outageMs);
  const dialsDuringOutage = agentLink.accepted - dialsBefore;
  const registered = timeToLine(relay.stderr, registeredLine(agent.machine), relay.stderr.lines.length, performance.now(), retryForMs);
  agentLink.restore();
  const restoredAt = performance.now();
  const deadline = restoredAt + retryForMs;
  const refusals: string[] = [];
  for (;;) {
    const outcome = await readCountingProgress(client, rig.smallFile, Math.max(1, deadline - performance.now()));
    if (outcome.ok) break;
    refusals.push(outcome.error ?? "no message");
    if (performance.now() + RETRY_PAUSE_MS >= deadline) throw new Error(`no read_file succeeded within ${retryForMs} ms of the restore; the last: ${refusals.at(-1)}`);
    await Bun.sleep(RETRY_PAUSE_MS);
  }
  const figures: Figures = {
    outage_s: outageMs / 1000,
    restore_to_first_call_ms: round(performance.now() - restoredAt),
    failed_calls: refusals.length,
    agent_dials_during_outage: dialsDuringOutage,
  };
  // A link that outlived the cut brings no new registration: its line is not waited for beyond a moment.
  const registeredMs = await Promise.race([registered, Bun.sleep(LOG_SETTLE_MS).then(() => undefined)]);
  const found = { relay_found_dead_link_ms: await relayGaveUp, agent_found_dead_link_ms: await agentGaveUp, restore_to_registered_ms: registeredMs };
  for (const [name, ms] of Object.entries(found)) if (ms !== undefined) figures[name] = ms;
  return { figures, firstRefusal: refusals[0] };
}
