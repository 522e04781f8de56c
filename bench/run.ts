// `bun run bench`: the benchmark suite of issue 7. Starts a real relay and agent on loopback (as the tests do),
// drives them with the SDKs' clients over Streamable HTTP (scenarios 1-3 and 9 on both MCP paths: a 2025 session
// and 2026-07-28, side by side), runs the peer (supergateway + server-filesystem) side
// by side when it is installed, prints a table and writes bench/results/latest.json (+ .md). Everything stays
// on 127.0.0.1 and every loop is bounded in count and time. A benchmark, not a test: `bun test` only runs a
// --quick smoke run of it (test/bench.test.ts).

import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "../test/helpers/processes.ts";
import { progress, round } from "./harness.ts";
import { peerUnavailable, startPeer, type Peer } from "./peer.ts";
import { describeMachine, describeRevision, renderText, writeReport, type Report } from "./report.ts";
import { Results, type ScenarioKey } from "./results.ts";
import { startRig, type Rig } from "./rig.ts";
import { bulkTransfer } from "./scenarios/bulk.ts";
import { compiledAgent } from "./scenarios/footprint.ts";
import { concurrentCalls, sequentialCalls, shellOverhead, toolsList } from "./scenarios/latency.ts";
import { scale } from "./scenarios/scale.ts";
import { cpuAgainstBaselines } from "./scenarios/cpu.ts";
import { idleMemory } from "./scenarios/idle-memory.ts";
import { overLinks } from "./scenarios/links.ts";
import { restoreAfterOutage } from "./scenarios/restore.ts";
import { FULL, QUICK, type Settings } from "./settings.ts";
import { checkTargets, ratios } from "./targets.ts";

const DEFAULT_OUT = path.join(import.meta.dir, "results", "latest.json");

const USAGE = `Usage: bun run bench [--quick] [--only N,N,...] [--out FILE.json]

Starts a relay and an agent on 127.0.0.1 and measures them against direct execution and a peer (see BENCHMARKS.md).
Scenarios 1-3 and 9 run on both MCP paths side by side: a 2025 session (the v1 SDK client) and 2026-07-28 (the v2
client, no session); the others on the session. Prints a table with the ratios between the paths and the relay's
CPU per call; writes JSON and Markdown reports. A full run takes a few minutes, two of them for scenarios 12 and 13
(13 waits out a 60 s outage).

  --quick      a smoke run of the harness: a few iterations of everything, numbers not meaningful
  --only       run only these scenarios (1-13); scenario 8 (the peer) needs \`bun run bench:peers\` first
               1 ping / server/discover   2 read_file     3 read_file, 32 in flight   4 run_shell_command
               5 bulk transfer            6 scale         7 compiled agent            8 the peer   9 tools/list
               10 CPU per call: relay and agent against a bare SDK echo server and the peer (when installed)
               11 memory per idle agent and session, 1,000 and 5,000 agents
               12 over emulated 40 ms links (client-relay, relay-agent): read_file, first progress, bulk
               13 the agent's link cut: a call during a 5 s blip; restore to first successful call after 60 s
  --out        where to write the JSON report (default bench/results/latest.json; a .md goes beside it)`;

const ALL_SCENARIOS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

interface Options {
  help: boolean;
  quick: boolean;
  only: Set<number>;
  out: string;
}

function parseOptions(argv: string[]): Options {
  const options: Options = { help: false, quick: false, only: new Set(ALL_SCENARIOS), out: DEFAULT_OUT };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") options.help = true;
    else if (arg === "--quick") options.quick = true;
    else if (arg === "--only") options.only = new Set((argv[++i] ?? "").split(",").map(Number));
    else if (arg === "--out") options.out = path.resolve(argv[++i] ?? DEFAULT_OUT);
    else throw new UsageError(`unknown argument '${arg}'`);
  }
  if ([...options.only].some((n) => !ALL_SCENARIOS.includes(n))) throw new UsageError(`--only takes scenario numbers 1-${ALL_SCENARIOS.length}`);
  return options;
}

class UsageError extends Error {}

interface Context {
  settings: Settings;
  results: Results;
  /** The relay, agent and sessions most scenarios share (scenario 6 starts its own relay). */
  rig: () => Promise<Rig>;
  /** Started when scenario 8 or 10 is selected (and the peer is installed). */
  peer?: Peer;
  only: Set<number>;
}

/** The peer, for the steps that measure it as scenario 8 only when 8 was asked for (10 may have started it). */
const peerAs8 = (ctx: Context) => (ctx.only.has(8) ? ctx.peer : undefined);

/** A unit of work: the scenarios it measures, and the figures it records (marked failed if it throws). */
interface Step {
  scenarios: number[];
  title: string;
  keys: ScenarioKey[];
  run: (ctx: Context) => Promise<void>;
}

const STEPS: Step[] = [
  {
    scenarios: [1, 2, 8],
    title: "1, 2, 8: ping / server/discover and read_file on both paths, and the peer's read_text_file, one at a time, in alternating blocks",
    keys: ["1_ping", "1_ping_2026", "2_read_file", "2_read_file_2026", "8_peer_read_text_file"],
    run: async (ctx) => sequentialCalls(await ctx.rig(), peerAs8(ctx), ctx.settings, ctx.results),
  },
  {
    scenarios: [3, 8],
    title: "3, 8: read_file on both paths and the peer's read_text_file, 32 in flight from 4 clients, in alternating windows",
    keys: ["3_read_file_concurrent", "3_read_file_concurrent_2026", "8_peer_read_text_file_concurrent"],
    run: async (ctx) => concurrentCalls(await ctx.rig(), peerAs8(ctx), ctx.settings, ctx.results),
  },
  {
    scenarios: [9],
    title: "9: tools/list on both paths, one at a time, in alternating blocks",
    keys: ["9_tools_list", "9_tools_list_2026"],
    run: async (ctx) => toolsList(await ctx.rig(), ctx.settings, ctx.results),
  },
  {
    scenarios: [4],
    title: '4: run_shell_command "true" against a direct spawn of the same shell',
    keys: ["4_shell_tool", "4_shell_direct"],
    run: async (ctx) => {
      ctx.results.notes.shell = await shellOverhead(await ctx.rig(), ctx.settings, ctx.results);
    },
  },
  {
    scenarios: [5],
    title: "5: bulk write and read of a file through the tools",
    keys: ["5_bulk"],
    run: async (ctx) => bulkTransfer(await ctx.rig(), ctx.settings, ctx.results),
  },
  {
    scenarios: [6],
    title: "6: agents and sessions at scale, on a relay of its own",
    keys: ["6_scale"],
    run: (ctx) => scale(ctx.settings, ctx.results),
  },
  {
    scenarios: [10],
    title: "10: CPU per call of the relay and the agent beside a bare SDK echo server and the peer, sequential and 32 in flight",
    keys: ["10_cpu_sequential", "10_cpu_concurrent"],
    run: async (ctx) => {
      ctx.results.notes.echo = await cpuAgainstBaselines(await ctx.rig(), ctx.peer, ctx.settings, ctx.results);
    },
  },
  {
    scenarios: [11],
    title: "11: memory per idle agent and session at 1,000 and 5,000 agents, on a relay of its own",
    keys: ["11_idle_memory"],
    run: (ctx) => idleMemory(ctx.settings, ctx.results),
  },
  {
    scenarios: [12],
    title: "12: read_file, the first progress of a long command and bulk transfer over emulated 40 ms links, on a relay of its own",
    keys: ["12_links_round_trip", "12_links_read_file", "12_links_read_file_2026", "12_links_first_progress", "12_links_first_progress_2026", "12_links_bulk"],
    run: (ctx) => overLinks(ctx.settings, ctx.results),
  },
  {
    scenarios: [13],
    title: "13: the agent's link cut, a blip and then an outage: calls through it, and the restore to the first successful call",
    keys: ["13_blip", "13_restore"],
    run: (ctx) => restoreAfterOutage(ctx.settings, ctx.results),
  },
  {
    scenarios: [7],
    title: "7: the compiled agent's start and idle footprint",
    keys: ["7_compiled_agent"],
    run: async (ctx) => compiledAgent(await ctx.rig(), ctx.settings, ctx.results),
  },
];

/** Runs the selected steps in order; a step that throws is reported and the others still run. */
async function runSteps(options: Options, ctx: Context): Promise<boolean> {
  let ok = true;
  for (const step of STEPS.filter((s) => s.scenarios.some((n) => options.only.has(n)))) {
    const started = performance.now();
    progress(`▶ ${step.title}`);
    try {
      await step.run(ctx);
      progress(`  done in ${round((performance.now() - started) / 1000, 1)} s`);
    } catch (e) {
      ok = false;
      const message = e instanceof Error ? e.message : String(e);
      progress(`  FAILED: ${message}`);
      ctx.results.skip(step.keys.filter((k) => !ctx.results.figures[k]), `failed: ${message.split("\n")[0]}`);
    }
  }
  return ok;
}

async function main(argv: string[]): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`bench: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  const startedAt = new Date();
  const machine = describeMachine();
  const results = new Results();
  results.notes.units =
    "MB = 10^6 bytes; latencies are wall time at the client, one call at a time unless marked in flight; relay cpu per call is " +
    "the relay process's CPU time (all threads) over the blocks or windows of that kind of call, divided by their calls";
  results.notes.paths =
    "scenarios 1-3 and 9 run on a 2025 Streamable HTTP session (@modelcontextprotocol/sdk 1.32.2 client) and, as *_2026, on 2026-07-28 " +
    "(@modelcontextprotocol/client 2.4.0, versionNegotiation auto: no session); the others on the session";
  await using live = new AsyncDisposableStack();
  let rig: Promise<Rig> | undefined;
  const ctx: Context = {
    settings: options.quick ? QUICK : FULL,
    results,
    rig: () => (rig ??= startRig().then((r) => live.use(r))),
    only: options.only,
  };
  progress(`Code Remote benchmarks (${options.quick ? "quick" : "full"}): scenarios ${[...options.only].sort().join(", ")}`);
  if (options.only.has(8) || options.only.has(10)) ctx.peer = await preparePeer(ctx, live, options);
  const ok = await runSteps(options, ctx);

  const ratioFigures = ratios(results);
  const report: Report = {
    mode: options.quick ? "quick" : "full",
    started_at: startedAt.toISOString(),
    duration_s: round((Date.now() - startedAt.getTime()) / 1000, 1),
    command: ["bun run bench", ...argv].join(" "),
    revision: describeRevision(ROOT),
    machine,
    load_at_end: os.loadavg().map((x) => round(x, 2)),
    results,
    ratios: ratioFigures,
    targets: checkTargets(results, ratioFigures),
  };
  console.log(`\n${renderText(report)}\n`);
  writeReport(options.out, report);
  progress(`wrote ${path.relative(process.cwd(), options.out)} and its .md`);
  return ok ? 0 : 1;
}

/** Starts the peer next to the rig, or records why not: scenario 8 is then skipped, and scenario 10 runs without it. */
async function preparePeer(ctx: Context, live: AsyncDisposableStack, options: Options): Promise<Peer | undefined> {
  let reason = peerUnavailable();
  if (!reason) {
    try {
      const peer = live.use(await startPeer((await ctx.rig()).root));
      ctx.results.notes.peer = peer.description;
      progress(`  peer: ${peer.description}`);
      return peer;
    } catch (e) {
      reason = `the peer did not start: ${e instanceof Error ? e.message : String(e)}`;
    }
  }
  progress(`  peer skipped: ${reason}`);
  ctx.results.notes.peer = `not run: ${reason}`;
  if (options.only.has(8)) ctx.results.skip(["8_peer_read_text_file", "8_peer_read_text_file_concurrent"], reason);
  return undefined;
}

process.exitCode = await main(process.argv.slice(2));
