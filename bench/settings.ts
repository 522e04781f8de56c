// How much each scenario samples, for a full run (the figures in BENCHMARKS.md; a few minutes on 2 cores) and
// for --quick (a smoke run of the harness in seconds: the numbers it prints mean nothing). Every loop is
// bounded by a count and a time; sizes and counts carry their unit in the name.

import { MAX_READ_BASE64_BYTES, MAX_WRITE_BYTES } from "../protocol.ts";
import { MiB, type Budget } from "./harness.ts";

export interface Settings {
  /** Scenarios 1, 2 and 8 (sequential): ping (server/discover on 2026-07-28) and read_file on each MCP path, and
   *  the peer's read_text_file, in alternating blocks. */
  sequential: Budget;
  /** Scenarios 3 and 8 (concurrent): each side (the relay on each path, the peer) is measured in `rounds`
   *  alternating windows of this budget. */
  concurrent: Budget & { rounds: number };
  /** Scenario 9: tools/list on each path, in alternating blocks. */
  list: Budget;
  /** Scenario 4: run_shell_command "true" and a direct spawn of the same shell, in alternating blocks. */
  shell: Budget;
  /** Scenario 5: file size, and how many write-then-read rounds (the median round is reported). */
  bulk: { fileBytes: number; rounds: number };
  /** Scenario 6: fake agents (one real agent is added), load generator processes, MCP sessions, reads. */
  scale: { agents: number; generators: number; sessions: number; reads: Budget };
  /** Scenario 7: compiled agent starts, and how long each sits idle before its RSS is read. */
  footprint: { starts: number; idleMs: number };
  /** Scenario 11: the relay is grown to each step's agents, then its sessions (totals, not increments), from
   *  `generators` load generator processes per step; its RSS is read `settleMs` after each. Scenario 10 uses the
   *  sequential and concurrent budgets above. */
  idleMemory: { steps: { agents: number; sessions: number }[]; generators: number; settleMs: number };
  /** Scenario 12, over emulated links (LINK_ONE_WAY_MS each way, client to relay and relay to agent): round trips of
   *  an echo through one link alone; `warmupCalls` of read_file and of run_shell_command "true" on each MCP path,
   *  LINK_WARMUP_IN_FLIGHT at a time (one at a time they would take minutes: each costs 80 ms here, and a relay or
   *  agent whose code the JIT has not compiled yet costs milliseconds more a call); read_file on each path in
   *  alternating blocks; calls of LONG_COMMAND on each path timed to their first progress; scenario 5's bulk
   *  transfer. */
  links: { roundTrips: number; warmupCalls: number; read: Budget; progressCalls: number; bulk: Settings["bulk"] };
  /** Scenario 13: how long the relay-agent link is cut for a call sent in the middle of the cut (a blip) and then for
   *  an outage, and for how long calls are retried after the outage before the run gives up. */
  restore: { blipMs: number; outageMs: number; retryForMs: number };
}

export const FULL: Settings = {
  // Five kinds of call in alternation since the 2026-07-28 path joined: about 15 s at the counts, on a quiet machine.
  sequential: { warmup: 200, count: 2_000, maxMs: 40_000 },
  concurrent: { warmup: 200, count: 3_000, maxMs: 3_000, rounds: 3 },
  list: { warmup: 50, count: 1_000, maxMs: 20_000 },
  shell: { warmup: 20, count: 300, maxMs: 15_000 },
  bulk: { fileBytes: 8 * MiB, rounds: 5 },
  scale: { agents: 1_000, generators: 4, sessions: 100, reads: { warmup: 50, count: 1_000, maxMs: 10_000 } },
  // Past the first heartbeat (5 s), so the RSS includes a full connection cycle, not just the startup.
  footprint: { starts: 5, idleMs: 6_000 },
  // The two sizes; its target is the last step (5,000 agents + 500 sessions). Settled past two heartbeats.
  idleMemory: { steps: [{ agents: 1_000, sessions: 250 }, { agents: 5_000, sessions: 500 }], generators: 4, settleMs: 5_000 },
  // About 55 s: a read_file over the links takes 80 ms and a LONG_COMMAND 1.6 s; the bulk rounds 2-4 s each. The
  // warm-up matches scenario 2's 200 sequential calls on loopback, twice over (two kinds of call).
  links: {
    roundTrips: 50,
    warmupCalls: 400,
    read: { warmup: 10, count: 120, maxMs: 30_000 },
    progressCalls: 4,
    bulk: { fileBytes: 8 * MiB, rounds: 3 },
  },
  // The figures: a 5 s blip, and the restore "after a 60 s outage" (past the relay's 30 s reconnect grace).
  restore: { blipMs: 5_000, outageMs: 60_000, retryForMs: 30_000 },
};

export const QUICK: Settings = {
  sequential: { warmup: 3, count: 20, maxMs: 1_000 },
  concurrent: { warmup: 8, count: 64, maxMs: 1_000, rounds: 1 },
  list: { warmup: 2, count: 10, maxMs: 1_000 },
  shell: { warmup: 1, count: 5, maxMs: 1_000 },
  bulk: { fileBytes: 256 * 1024, rounds: 1 },
  scale: { agents: 20, generators: 2, sessions: 4, reads: { warmup: 2, count: 20, maxMs: 1_000 } },
  footprint: { starts: 1, idleMs: 200 },
  idleMemory: { steps: [{ agents: 25, sessions: 5 }, { agents: 50, sessions: 10 }], generators: 1, settleMs: 0 },
  links: { roundTrips: 5, warmupCalls: 8, read: { warmup: 1, count: 5, maxMs: 2_000 }, progressCalls: 1, bulk: { fileBytes: 256 * 1024, rounds: 1 } },
  restore: { blipMs: 1_000, outageMs: 2_000, retryForMs: 10_000 },
};

/** Scenario 3: 32 calls in flight from 4 client sessions (8 each), as the issue asks (4 clients on 2026-07-28). */
export const CONCURRENT_CALLS = 32;
export const CONCURRENT_SESSIONS = 4;

/** Scenario 5: bytes per write_file and per read_file call (each tool's per-call cap, as a script copying a file
 *  would ask for), and read calls kept in flight (a client reading a file of known size can ask for several ranges
 *  at once). */
export const BULK_WRITE_CHUNK_BYTES = MAX_WRITE_BYTES;
export const BULK_READ_CHUNK_BYTES = MAX_READ_BASE64_BYTES;
export const BULK_READ_WINDOW = 8;

/** The small file of scenarios 2, 3, 6 and 8: 1 KiB of text in 16 lines. */
export const SMALL_FILE_BYTES = 1024;

/** Scenarios 12 and 13: each emulated link delays each direction by this much, so a round trip through one takes
 *  40 ms, as issue 17 asks (client to relay, and relay to agent). */
export const LINK_ONE_WAY_MS = 20;

/** Scenario 12's warm-up calls in flight at once: few enough for the agent's command slots (run_shell_command beyond
 *  them queues, up to 64), enough that 400 calls of 80 ms take about 2 s. */
export const LINK_WARMUP_IN_FLIGHT = 16;

/** Scenario 12's long command: long enough for the agent's first progress (sent once the command has run for 1 s,
 *  PROGRESS_INTERVAL_MS in agent/commands.ts), short enough to sample a few times. */
export const LONG_COMMAND = "sleep 1.5";
