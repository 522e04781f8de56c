// Scenario 11: what an idle agent connection and an idle client session cost the relay in memory, and so how many
// of each a 512 MB relay holds. A relay of its own is grown in steps (1,000 agents, then 250 sessions; 5,000
// agents, then 500 sessions), its RSS read after each once it has settled; each connection's cost is the RSS
// it added over how many were added, at that step (the marginal cost: the relay's fixed start-up memory is not in
// it). The agents are scenario 6's load generators (bench/load/fake-agents.ts: hello, heartbeats, nothing else
// here); the sessions are 2025 Streamable HTTP sessions (the v1 SDK client), the kind that holds state on the relay,
// held by processes of their own (bench/load/idle-sessions.ts).

import * as path from "node:path";
import { spawnProgram, startRelay, tempDir, type ChildProcess, type Relay } from "../../test/helpers/processes.ts";
import { obtainGrant } from "../../test/helpers/oauth.ts";
import { MB, progress, round, rssBytes } from "../harness.ts";
import type { Figures, Results } from "../results.ts";
import { UNLIMITED_CLIENT } from "../rig.ts";
import type { Settings } from "../settings.ts";
import { mb, registeredMachines, startGenerators } from "./scale.ts";

/** The relay keeps at most 256 sessions per client (relay/transports.ts MAX_SESSIONS_PER_CLIENT) and closes the
 *  least recently used beyond that: each principal (the owner, then OAuth clients) opens fewer than that. */
const SESSIONS_PER_PRINCIPAL = 250;
/** The memory a relay is given, for the extrapolation. */
const RELAY_BUDGET_BYTES = 512 * MB;

/** The relay as measured at one point: how many agents and sessions it held, and its RSS. */
interface Point {
  agents: number;
  sessions: number;
  rss: number;
}

/** Bearer tokens of enough principals for `sessions` sessions: the owner's, then OAuth grants approved by hand. */
async function principals(relay: Relay, sessions: number): Promise<string[]> {
  const tokens = [relay.token];
  while (tokens.length * SESSIONS_PER_PRINCIPAL < sessions) {
    tokens.push((await obtainGrant(relay.url, relay.token, { name: `bench principal ${tokens.length}` })).access);
  }
  return tokens;
}

const SESSION_HOLDER = path.join(import.meta.dir, "..", "load", "idle-sessions.ts");
/** Opening 250 sessions takes a few seconds on a quiet machine. */
const SESSIONS_READY_TIMEOUT_MS = 120_000;
/** The holders stop by themselves after this, should the bench die without stopping them. */
const HOLDER_LIFETIME_MS = 10 * 60 * 1000;

/** Opens sessions from `open` up to `total`, in holder processes (bench/load/idle-sessions.ts) of at most
 *  SESSIONS_PER_PRINCIPAL sessions each, every principal's filled in turn; returns the total open. */
async function openSessionsUpTo(relay: Relay, tokens: string[], holders: ChildProcess[], open: number, total: number): Promise<number> {
  while (open < total) {
    const principal = Math.floor(open / SESSIONS_PER_PRINCIPAL);
    const count = Math.min(total, (principal + 1) * SESSIONS_PER_PRINCIPAL) - open;
    const holder = spawnProgram([process.execPath, "run", SESSION_HOLDER], {
      env: { RELAY_URL: relay.url.toString(), TOKEN: tokens[principal]!, SESSION_COUNT: String(count), LIFETIME_MS: String(HOLDER_LIFETIME_MS) },
    });
    holders.push(holder);
    const line = await holder.stdout.waitFor(/^(ready|failed)/, SESSIONS_READY_TIMEOUT_MS);
    if (line.startsWith("failed")) throw new Error(`session holder ${line}`);
    open += count;
  }
  return open;
}

/** Bytes each added connection cost between two points, in kB (10^3 bytes). */
const kbEach = (from: Point, to: Point, added: number) => round((to.rss - from.rss) / added / 1000, 1);

/** Every point's RSS, each step's cost per agent and per session, and the extrapolation from the last point. */
function figuresOf(points: Point[]): Figures {
  const figures: Figures = { rss_start_mb: mb(points[0]!.rss) };
  let perAgent = Number.NaN;
  let perSession = Number.NaN;
  for (let i = 1; i < points.length; i++) {
    const [before, now] = [points[i - 1]!, points[i]!];
    if (now.agents > before.agents) {
      perAgent = kbEach(before, now, now.agents - before.agents);
      figures[`rss_${now.agents}_agents_mb`] = mb(now.rss);
      figures[`agent_to_${now.agents}_kb`] = perAgent;
    } else {
      perSession = kbEach(before, now, now.sessions - before.sessions);
      figures[`rss_${now.agents}_agents_${now.sessions}_sessions_mb`] = mb(now.rss);
      figures[`session_to_${now.sessions}_kb`] = perSession;
    }
  }
  const last = points.at(-1)!;
  return { agents: last.agents, sessions: last.sessions, ...figures, rss_mb: mb(last.rss), agent_kb: perAgent, session_kb: perSession, ...extrapolated(last, perAgent, perSession) };
}

/** Linear from the last point at the last step's marginal costs: the agents a 512 MB relay holds beside that many
 *  sessions, and the sessions beside that many agents. Left out when a cost came out at zero or below (GC freed more
 *  than the step added: at --quick's tiny sizes), where a line says nothing. */
function extrapolated(last: Point, agentKb: number, sessionKb: number): Figures {
  const roomKb = (RELAY_BUDGET_BYTES - last.rss) / 1000;
  return {
    ...(agentKb > 0 ? { agents_a_512_mb_relay_holds: Math.floor(last.agents + roomKb / agentKb) } : {}),
    ...(sessionKb > 0 ? { sessions_a_512_mb_relay_holds: Math.floor(last.sessions + roomKb / sessionKb) } : {}),
  };
}

export async function idleMemory(settings: Settings, results: Results): Promise<void> {
  const { steps, generators, settleMs } = settings.idleMemory;
  using dir = tempDir("cr-bench-idle-");
  using data = tempDir("cr-bench-db-");
  await using relay = await startRelay({ databasePath: path.join(data.path, "audit.db"), env: UNLIMITED_CLIENT });
  const tokens = await principals(relay, Math.max(...steps.map((s) => s.sessions)));
  const measure = async (agents: number, sessions: number): Promise<Point> => {
    await Bun.sleep(settleMs);
    return { agents, sessions, rss: rssBytes(relay.proc.pid) };
  };
  const points = [await measure(0, 0)];
  const children: ChildProcess[] = [];
  try {
    for (const [i, step] of steps.entries()) {
      const before = points.at(-1)!;
      progress(`   ${step.agents} agents (${step.agents - before.agents} more, from ${generators} processes)`);
      children.push(...(await startGenerators(relay, dir.path, step.agents - before.agents, generators, `idle${i}`)));
      points.push(await measure(step.agents, before.sessions));
      progress(`   ${step.sessions} sessions`);
      points.push(await measure(step.agents, await openSessionsUpTo(relay, tokens, children, before.sessions, step.sessions)));
    }
    const registered = (await registeredMachines(relay)).length;
    if (registered !== points.at(-1)!.agents) throw new Error(`the relay has ${registered} machines registered, expected ${points.at(-1)!.agents}`);
    results.record("11_idle_memory", { ...figuresOf(points), settle_s: settleMs / 1000 });
  } finally {
    await Promise.all(children.map((child) => child.stop()));
  }
}
