// Scenario 6: a relay of its own holding 1,000 agent connections (999 from load generator processes that speak
// the real protocol, plus one real agent) and 100 MCP sessions. Measures the relay's RSS at each step, and
// read_file latency from a random session to a random machine among the thousand (every one of them reads
// the file from disk), and to the real agent alone.

import * as path from "node:path";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { connectClient, spawnProgram, startAgent, startRelay, tempDir, type ChildProcess, type Relay } from "../../test/helpers/processes.ts";
import { MB, peakRssBytes, progress, round, rssBytes, sampleAlternating } from "../harness.ts";
import type { Results } from "../results.ts";
import { callOk, UNLIMITED_CLIENT, writeSmallFile } from "../rig.ts";
import type { Settings } from "../settings.ts";

const FAKE_AGENTS = path.join(import.meta.dir, "..", "load", "fake-agents.ts");
/** Generous: 250 connections per process over a busy loopback take a second or two. */
const GENERATORS_READY_TIMEOUT_MS = 60_000;
/** The generators stop by themselves after this, should the bench die without stopping them. */
const GENERATOR_LIFETIME_MS = 5 * 60 * 1000;
/** Sessions are opened this many at a time. */
const SESSION_BATCH = 10;

/** Starts the load generators, sharing `count` fake agents between them, and waits until all are welcomed. Their
 *  machines are named `<prefix>-<generator>-<n>`: a later batch of generators needs a prefix of its own. */
export async function startGenerators(relay: Relay, root: string, count: number, generators: number, prefix = "fake"): Promise<ChildProcess[]> {
  const share = Math.ceil(count / generators);
  const children = Array.from({ length: generators }, (_, g) =>
    spawnProgram([process.execPath, "run", FAKE_AGENTS], {
      env: {
        RELAY_URL: `ws://127.0.0.1:${relay.port}/ws/agent`,
        AGENT_TOKEN: relay.token,
        AGENT_COUNT: String(Math.max(0, Math.min(share, count - g * share))),
        NAME_PREFIX: `${prefix}-${g}`,
        ALLOWED_ROOT: root,
        LIFETIME_MS: String(GENERATOR_LIFETIME_MS),
      },
    }),
  );
  const lines = await Promise.all(children.map((c) => c.stdout.waitFor(/^(ready|failed)/, GENERATORS_READY_TIMEOUT_MS)));
  const failure = lines.find((line) => line.startsWith("failed"));
  if (failure) throw new Error(`load generator ${failure}`);
  return children;
}

/** The machine names the relay has registered (its /health, with the token). */
export async function registeredMachines(relay: Relay): Promise<string[]> {
  const response = await fetch(new URL("/health", relay.url), { headers: { Authorization: `Bearer ${relay.token}` } });
  return ((await response.json()) as { machines: string[] }).machines;
}

/** Opens `count` 2025 Streamable HTTP sessions with `token` (default: the owner's), SESSION_BATCH at a time. */
export async function openSessions(relay: Pick<Relay, "url" | "token">, count: number, token = relay.token): Promise<Client[]> {
  const sessions: Client[] = [];
  while (sessions.length < count) {
    const batch = Math.min(SESSION_BATCH, count - sessions.length);
    sessions.push(...(await Promise.all(Array.from({ length: batch }, () => connectClient(relay, "streamable-http", token)))));
  }
  return sessions;
}

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)]!;
export const mb = (bytes: number) => round(bytes / MB, 1);

export async function scale(settings: Settings, results: Results): Promise<void> {
  const { agents, generators: generatorCount, sessions: sessionCount, reads } = settings.scale;
  using dir = tempDir("cr-bench-scale-");
  using data = tempDir("cr-bench-db-");
  const file = writeSmallFile(dir.path);
  await using relay = await startRelay({ databasePath: path.join(data.path, "audit.db"), env: UNLIMITED_CLIENT });
  const pid = relay.proc.pid;
  const rss = { idle: rssBytes(pid), agents: 0, sessions: 0, reads: 0 };

  await using agent = await startAgent(relay, { machine: "real-agent", roots: [dir.path] });
  progress(`   connecting ${agents - 1} fake agents from ${generatorCount} processes`);
  const generators = await startGenerators(relay, dir.path, agents - 1, generatorCount);
  try {
    const machines = await registeredMachines(relay);
    if (machines.length !== agents) throw new Error(`the relay has ${machines.length} machines registered, expected ${agents}`);
    rss.agents = rssBytes(pid);

    progress(`   opening ${sessionCount} MCP sessions`);
    const sessions = await openSessions(relay, sessionCount);
    rss.sessions = rssBytes(pid);

    progress(`   read_file to random machines among ${machines.length}`);
    const read = (machine: string) => callOk(pick(sessions), "read_file", { path: file, machine });
    const measured = await sampleAlternating({ random: () => read(pick(machines)), real: () => read(agent.machine) }, reads);
    rss.reads = rssBytes(pid);
    const stillRegistered = (await registeredMachines(relay)).length;
    await Promise.all(sessions.map((s) => s.close()));

    results.record("6_scale", {
      agents: machines.length,
      still_registered: stillRegistered,
      sessions: sessions.length,
      rss_idle_mb: mb(rss.idle),
      rss_with_agents_mb: mb(rss.agents),
      rss_with_sessions_mb: mb(rss.sessions),
      rss_mb: mb(rss.reads),
      rss_peak_mb: mb(peakRssBytes(pid)),
      read_p50_ms: measured.random.p50_ms,
      read_p99_ms: measured.random.p99_ms,
      read_n: measured.random.n,
      real_agent_read_p50_ms: measured.real.p50_ms,
      real_agent_read_p99_ms: measured.real.p99_ms,
    });
  } finally {
    await Promise.all(generators.map((g) => g.stop()));
  }
}
