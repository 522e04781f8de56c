// The load suite (`bun run test:load`): 64 MCP client sessions (48 Streamable HTTP, 16 legacy SSE) call a mix of
// tools on 4 agents through one relay for a fixed time, while slow clients hold sockets open against the same
// relay. Every answer is checked (not only "no error"), every latency is kept, the relay's memory is sampled
// through the run, and at the end the audit log must hold exactly one finished row per call made. Prints the
// figures and writes them to test-output/; exits 1 if any check fails.
//
//   bun run test:load                 the full run: 60 s (by hand)
//   bun run test:load --seconds 10    the short run CI does
//
// Everything runs on 127.0.0.1, bounded in time (the deadline) and in count (MAX_CALLS_PER_SESSION).

import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { auditedCalls, integrityCheck } from "../helpers/audit-db.ts";
import { MiB, rssBytes, sampleRss } from "../helpers/chaos.ts";
import { connectClient, ROOT, startAgent, startRelay, tempDir, type Agent, type TransportKind } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";
import { startSlowClients, type SlowClientFigures } from "./slow-clients.ts";

// --- the shape of the run ---

const SESSIONS = 64;
const SSE_SESSIONS = 16;
const AGENTS = 4;
/** A session never makes more calls than this, whatever the duration: the loop is bounded in count too. */
const MAX_CALLS_PER_SESSION = 20_000;
/** A call that takes longer than this is an error (the client gives up). */
const CALL_TIMEOUT_MS = 30_000;
/** The relay's per-client limits for this run. All 64 sessions use the owner's one token, so they share one
 *  client's limits, as a team's sessions behind one token would: a deployment expecting this load raises the
 *  in-flight limit above its session count (the default 32 would refuse half of them) and the rate above its
 *  peak with headroom (the default 1,200 a minute is 20 calls a second for everyone together). */
const RELAY_LIMITS = { CLIENT_MAX_CALLS_IN_FLIGHT: "128", CLIENT_CALLS_PER_MINUTE: "120000" };
/** The slow-client attack: connections of each kind held at once by our script (slowhttptest adds 2 × 200). */
const ATTACK = { halfOpen: 200, slowHeaders: 100, slowBodies: 32 };
/** Memory samples: how often, and how much the last third's floor may sit above the middle third's (a trend). */
const RSS_SAMPLE_MS = 1_000;
const RSS_TREND_LIMIT_BYTES = 32 * MiB;

const USAGE = `Usage: bun run test:load [--seconds N]

Runs ${SESSIONS} MCP sessions against ${AGENTS} agents through one relay on 127.0.0.1 for N seconds (default 60, at
most 600) while slow clients attack it; prints the figures, writes test-output/load-Ns.json, exits 1 on any failure.`;

function durationMs(argv: string[]): number {
  let flags: { seconds: string; help?: boolean };
  try {
    flags = parseArgs({ args: argv, options: { seconds: { type: "string", default: "60" }, help: { type: "boolean", short: "h" } } }).values;
  } catch (e) {
    console.error(`test:load: ${(e as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (flags.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const ms = Number(flags.seconds) * 1000;
  if (!Number.isFinite(ms) || ms < 1000 || ms > 600_000) {
    console.error(`test:load: --seconds must be between 1 and 600\n\n${USAGE}`);
    process.exit(2);
  }
  return ms;
}

const DURATION_MS = durationMs(Bun.argv.slice(2));

// --- one session ---

interface CallRecord {
  tool: string;
  ms: number;
  error?: string;
  /** A check across several calls (the followed output), not a call of its own. */
  check?: true;
}

/** Files a session owns in its machine's root, so no two sessions race on one file. */
function seedSession(root: string, n: number): string {
  const dir = path.join(root, `s${n}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "counter.txt"), "counter=0\n");
  fs.writeFileSync(path.join(dir, "notes.txt"), `notes of session ${n}\nneedle-${n}\n`);
  return dir;
}

/** One session: connects, then runs its cycle of tools until the deadline, checking every answer. */
async function runSession(n: number, transport: TransportKind, relay: { url: URL; token: string }, agent: Agent, dir: string, deadline: number, calls: CallRecord[]) {
  const client = await connectClient(relay, transport);
  const machine = agent.machine;
  let counter = 0;
  let written = "";
  const timed = async (tool: string, args: Record<string, unknown>, check: (data: Record<string, any>) => string | undefined) => {
    const started = performance.now();
    let error: string | undefined;
    let data: Record<string, any> = {};
    try {
      const r = await call(client, tool, { ...args, machine }, { timeout: CALL_TIMEOUT_MS });
      data = r.data;
      error = r.isError ? r.text : check(r.data);
    } catch (e) {
      error = String(e);
    }
    calls.push({ tool, ms: performance.now() - started, error });
    return { data, error };
  };

  const cycle: (() => Promise<unknown>)[] = [
    () => timed("run_shell_command", { command: `echo s${n}-${calls.length}` }, (d) => (d.exit_code === 0 && /^s\d+-\d+\n$/.test(d.stdout) ? undefined : `shell: ${JSON.stringify(d)}`)),
    () => {
      written = `session ${n} wrote ${Math.random().toString(36).slice(2)}\n`.repeat(1 + (counter % 20));
      return timed("write_file", { path: `${dir}/data.txt`, content: written }, (d) => (d.bytes_written === written.length ? undefined : `write: ${JSON.stringify(d)}`));
    },
    () => timed("read_file", { path: `${dir}/data.txt` }, (d) => (d.content === written ? undefined : "read: not what was written")),
    () =>
      timed("edit_file", { path: `${dir}/counter.txt`, edits: [{ old_text: `counter=${counter}`, new_text: `counter=${counter + 1}` }] }, (d) =>
        d.replacements === 1 ? void counter++ : `edit: ${JSON.stringify(d)}`,
      ),
    () => timed("list_directory", { path: dir }, (d) => (["counter.txt", "data.txt", "notes.txt"].every((f) => d.entries?.some((e: { name: string }) => e.name === f)) ? undefined : "list: files missing")),
    () => timed("search_files", { path: dir, content: `needle-${n}` }, (d) => (d.matches?.length === 1 ? undefined : `search: ${JSON.stringify(d.matches)}`)),
    async () => {
      // A background command, followed with get_command_output until it ends.
      const started = await timed("run_shell_command", { command: "for i in 1 2 3; do echo tick $i; sleep 0.2; done", background: true }, (d) => (d.state === "running" || d.state === "exited" ? undefined : `background: ${d.state}`));
      if (started.error) return;
      let output = "";
      let offset = 0;
      for (let polls = 0; polls < 20 && Date.now() < deadline + CALL_TIMEOUT_MS; polls++) {
        const r = await timed("get_command_output", { command_id: started.data.command_id, offset, wait_seconds: 5 }, (d) => (d.offset === offset ? undefined : `output: offset ${d.offset} for ${offset}`));
        if (r.error) return;
        output += r.data.output;
        offset = r.data.next_offset;
        if (r.data.state !== "running" && r.data.state !== "queued" && !r.data.more) break;
      }
      if (output !== "tick 1\ntick 2\ntick 3\n") calls.push({ tool: "get_command_output", ms: 0, error: `followed output was ${JSON.stringify(output)}`, check: true });
    },
  ];
  try {
    for (let i = 0; i < MAX_CALLS_PER_SESSION && Date.now() < deadline; i++) await cycle[i % cycle.length]!();
  } finally {
    await client.close();
  }
}

// --- figures ---

const percentile = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : 0);
const mib = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** Least-squares slope of the samples, in bytes per minute. */
function slopePerMinute(samples: number[], everyMs: number): number {
  const n = samples.length;
  if (n < 2) return 0;
  const xs = samples.map((_, i) => (i * everyMs) / 60_000);
  const mx = mean(xs);
  const my = mean(samples);
  const num = xs.reduce((s, x, i) => s + (x - mx) * (samples[i]! - my), 0);
  const den = xs.reduce((s, x) => s + (x - mx) ** 2, 0);
  return num / den;
}

// --- the run ---

async function main(): Promise<number> {
  const startedAt = Date.now();
  console.log(`test:load: ${SESSIONS} sessions (${SESSIONS - SSE_SESSIONS} Streamable HTTP, ${SSE_SESSIONS} SSE) × ${AGENTS} agents × ${DURATION_MS / 1000} s, with slow clients`);
  const relay = await startRelay({ env: RELAY_LIMITS });
  const roots = Array.from({ length: AGENTS }, () => tempDir("cr-load-root-"));
  const states = Array.from({ length: AGENTS }, () => tempDir("cr-load-state-"));
  const agents: Agent[] = [];
  try {
    for (let i = 0; i < AGENTS; i++) agents.push(await startAgent(relay, { machine: `load-${i + 1}`, roots: [roots[i]!.path], stateDir: states[i]!.path }));
    const dirs = Array.from({ length: SESSIONS }, (_, n) => seedSession(roots[n % AGENTS]!.path, n));
    await Bun.sleep(1_000); // let the relay settle before the first memory sample
    const rssBefore = rssBytes(relay.proc.pid);

    const calls: CallRecord[] = [];
    const attack = startSlowClients({ port: relay.port, token: relay.token, ...ATTACK, durationMs: DURATION_MS });
    const rss = sampleRss(relay.proc.pid, RSS_SAMPLE_MS);
    const loadStart = performance.now();
    const deadline = Date.now() + DURATION_MS;
    const sessions = await Promise.allSettled(
      Array.from({ length: SESSIONS }, (_, n) =>
        runSession(n, n < SSE_SESSIONS ? "sse" : "streamable-http", relay, agents[n % AGENTS]!, dirs[n]!, deadline, calls),
      ),
    );
    const loadSeconds = (performance.now() - loadStart) / 1000;
    const samples = rss.stop();
    const attackFigures: SlowClientFigures = await attack.stop();
    await Bun.sleep(3_000); // idle after the load: what the relay keeps
    const rssAfter = rssBytes(relay.proc.pid);

    // --- checks ---
    const sessionErrors = sessions.flatMap((s) => (s.status === "rejected" ? [String(s.reason)] : []));
    const errors = calls.filter((c) => c.error);
    const made = calls.filter((c) => !c.check);
    const completed = made.length;
    const rows = auditedCalls(relay.databasePath);
    const unfinished = rows.filter((r) => !r.finished).length;
    const integrity = integrityCheck(relay.databasePath);
    // The trend: after a warm-up (the first fifth), the floor the heap returns to after each collection, in the
    // middle third against the last third. Peaks are garbage not yet collected; a leak raises the floor.
    const steady = samples.slice(Math.max(1, Math.floor(samples.length / 5)));
    const third = Math.floor(steady.length / 3);
    const middleFloor = Math.min(...steady.slice(third, 2 * third));
    const lastFloor = Math.min(...steady.slice(2 * third));
    const latencies = made.map((c) => c.ms).sort((a, b) => a - b);
    const byTool = Object.fromEntries(
      [...new Set(calls.map((c) => c.tool))].sort().map((tool) => {
        const ms = made.filter((c) => c.tool === tool).map((c) => c.ms).sort((a, b) => a - b);
        return [tool, { calls: ms.length, p50_ms: Math.round(percentile(ms, 50)), p99_ms: Math.round(percentile(ms, 99)) }];
      }),
    );

    const figures = {
      when: new Date().toISOString(),
      duration_s: DURATION_MS / 1000,
      sessions: SESSIONS,
      agents: AGENTS,
      relay_limits: RELAY_LIMITS,
      calls_completed: completed,
      calls_per_s: Math.round(completed / loadSeconds),
      errors: errors.length,
      p50_ms: Math.round(percentile(latencies, 50) * 10) / 10,
      p99_ms: Math.round(percentile(latencies, 99) * 10) / 10,
      max_ms: Math.round(latencies.at(-1) ?? 0),
      by_tool: byTool,
      relay_rss_mib: { before: mib(rssBefore), peak: mib(Math.max(...samples)), after: mib(rssAfter), samples: samples.map(mib) },
      relay_rss_floor_mib: { middle_third: mib(middleFloor), last_third: mib(lastFloor) },
      relay_rss_slope_after_warmup_mib_per_min: mib(slopePerMinute(steady, RSS_SAMPLE_MS)),
      audit_rows: rows.length,
      audit_unfinished: unfinished,
      audit_integrity: integrity,
      attack: attackFigures,
      wall_s: Math.round((Date.now() - startedAt) / 1000),
    };

    const checks: [string, boolean][] = [
      ["every session ran to the end", sessionErrors.length === 0],
      ["errors == 0", errors.length === 0],
      ["calls completed > 0", completed > 0],
      ["audit rows == calls completed", rows.length === completed],
      ["no audit row unfinished", unfinished === 0],
      ["audit integrity_check ok", integrity === "ok"],
      [`relay RSS: no growth trend (floor of the last third within ${mib(RSS_TREND_LIMIT_BYTES)} MiB of the middle third's)`, lastFloor - middleFloor < RSS_TREND_LIMIT_BYTES],
      ["the slow clients held their connections", attackFigures.peakOpen >= (ATTACK.halfOpen + ATTACK.slowHeaders + ATTACK.slowBodies) / 2],
      ...attackFigures.slowhttptest.map((run): [string, boolean] => [
        `slowhttptest ${run.mode} ran and its probe always found the service available`,
        run.runs > 0 && run.serviceAvailable.length > 0 && run.serviceAvailable.every((s) => s === "YES"),
      ]),
    ];

    console.log(JSON.stringify({ ...figures, relay_rss_mib: { ...figures.relay_rss_mib, samples: undefined } }, null, 2));
    for (const e of [...sessionErrors, ...errors.slice(0, 10).map((c) => `${c.tool}: ${c.error}`)]) console.log(`  error: ${e.slice(0, 300)}`);
    for (const [name, ok] of checks) console.log(`  ${ok ? "pass" : "FAIL"}  ${name}`);
    const out = path.join(ROOT, "test-output", `load-${DURATION_MS / 1000}s.json`);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify({ ...figures, checks: Object.fromEntries(checks) }, null, 2) + "\n");
    const failed = checks.filter(([, ok]) => !ok).length;
    console.log(`test:load: ${checks.length - failed} passed, ${failed} failed (figures in ${path.relative(ROOT, out)})`);
    return failed === 0 ? 0 : 1;
  } finally {
    for (const agent of agents) await agent[Symbol.asyncDispose]();
    await relay[Symbol.asyncDispose]();
    for (const dir of [...roots, ...states]) dir[Symbol.dispose]();
    fs.rmSync(path.dirname(relay.databasePath), { recursive: true, force: true });
  }
}

process.exit(await main());
