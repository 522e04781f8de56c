// Scenario 7: the agent as users get it, one executable from `bun build --compile`. Measures the time from
// spawning it to the relay logging it as connected (the relay's own view, read from its log), and its RSS
// once it has sat idle on the connection for a while.

import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { ROOT, spawnProgram, tempDir } from "../../test/helpers/processes.ts";
import { MB, median, progress, round, rssBytes } from "../harness.ts";
import type { Results } from "../results.ts";
import type { Rig } from "../rig.ts";
import type { Settings } from "../settings.ts";

/** The compiled agent must be connected well within this, or the run has failed. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Builds the agent as a release would: one executable that reads no .env or bunfig.toml from where it runs. */
function compileAgent(outfile: string): { ms: number; bytes: number } {
  const started = performance.now();
  const build = Bun.spawnSync(
    [process.execPath, "build", "--compile", path.join(ROOT, "agent.ts"), "--outfile", outfile, "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig"],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe" },
  );
  if (build.exitCode !== 0) throw new Error(`bun build --compile failed:\n${build.stderr.toString()}`);
  return { ms: performance.now() - started, bytes: fs.statSync(outfile).size };
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Starts the binary once: milliseconds until the relay logs it connected, and its RSS after `idleMs`. */
async function startOnce(rig: Rig, binary: string, idleMs: number): Promise<{ connectMs: number; rss: number }> {
  const machine = `compiled-${randomBytes(3).toString("hex")}`;
  const connected = new RegExp(`agent connected machine="${escapeRegExp(machine)}"`);
  const from = rig.relay.stderr.lines.length;
  const started = performance.now();
  await using agent = spawnProgram([binary], {
    env: {
      RELAY_URL: `ws://127.0.0.1:${rig.relay.port}/ws/agent`,
      AGENT_TOKEN: rig.relay.token,
      MACHINE_NAME: machine,
      ALLOWED_ROOTS: rig.root,
      SHELL: "/bin/sh",
    },
  });
  await rig.relay.stderr.waitFor(connected, CONNECT_TIMEOUT_MS, from);
  const connectMs = performance.now() - started;
  await Bun.sleep(idleMs);
  return { connectMs, rss: rssBytes(agent.proc.pid) };
}

export async function compiledAgent(rig: Rig, settings: Settings, results: Results): Promise<void> {
  using dir = tempDir("cr-bench-compile-");
  const binary = path.join(dir.path, "code-remote-agent");
  const build = compileAgent(binary);
  progress(`   compiled in ${Math.round(build.ms)} ms, ${round(build.bytes / MB, 1)} MB`);
  const connectMs: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < settings.footprint.starts; i++) {
    const run = await startOnce(rig, binary, settings.footprint.idleMs);
    connectMs.push(run.connectMs);
    rss.push(run.rss);
  }
  results.record("7_compiled_agent", {
    starts: connectMs.length,
    connect_p50_ms: round(median(connectMs), 1),
    connect_max_ms: round(Math.max(...connectMs), 1),
    idle_rss_mb: round(median(rss) / MB, 1),
    idle_rss_max_mb: round(Math.max(...rss) / MB, 1),
    idle_s: settings.footprint.idleMs / 1000,
    binary_mb: round(build.bytes / MB, 1),
    compile_ms: Math.round(build.ms),
  });
}
