// A smoke run of the benchmark harness (`bun run bench --quick`): a few iterations of every scenario that needs
// nothing beyond this repository, checking that each produces numbers and that the report is written. It never
// looks at how fast anything was: timings belong to `bun run bench`, not to a test. Scenario 8 (the peer) is
// left out because it needs `bun run bench:peers`, which CI does not run.

import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { ROOT, tempDir } from "./helpers/processes.ts";

/** Every scenario but the peer: compiling the agent (scenario 7) takes about a second of this. Scenario 10 compares
 *  with the peer too when it is installed (`bun run bench:peers`), and runs without it otherwise. */
const SCENARIOS = "1,2,3,4,5,6,7,9,10,11,12,13";
/** The targets that need the peer: never measured here for scenarios 2 and 3 (scenario 8 is not run), measured for
 *  scenario 10 only where the peer is installed. */
const PEER_TARGETS = ["2. read_file p50 vs peer", "3. 32 concurrent read_file", "10. CPU per call vs the peer's tree", "10. … 32 in flight"];
const SMOKE_TIMEOUT_MS = 60_000;

interface BenchJson {
  mode: string;
  scenarios: Record<string, Record<string, number>>;
  skipped: Record<string, string>;
  ratios: Record<string, number>;
  targets: { scenario: string; measured: string; pass?: boolean }[];
}

test(
  "bun run bench --quick measures every scenario and writes the JSON and Markdown reports",
  async () => {
    using dir = tempDir("cr-bench-smoke-");
    const out = path.join(dir.path, "smoke.json");
    const bench = Bun.spawn([process.execPath, "run", path.join(ROOT, "bench", "run.ts"), "--quick", "--only", SCENARIOS, "--out", out], {
      cwd: ROOT,
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, stdout, stderr] = await Promise.all([bench.exited, new Response(bench.stdout).text(), new Response(bench.stderr).text()]);
    expect(code, `bench failed:\n${stderr}`).toBe(0);
    expect(stdout).toContain("Targets");

    const report = JSON.parse(fs.readFileSync(out, "utf8")) as BenchJson;
    expect(report.mode).toBe("quick");
    expect(report.skipped).toEqual({});
    // Scenarios 1-3 and 9 on both MCP paths: the 2025 session and 2026-07-28 (_2026).
    const onBothPaths = ["1_ping", "2_read_file", "3_read_file_concurrent", "9_tools_list"].flatMap((key) => [key, `${key}_2026`]);
    const expected = [...onBothPaths, "4_shell_tool", "4_shell_direct", "5_bulk", "6_scale", "7_compiled_agent", "10_cpu_sequential", "10_cpu_concurrent", "11_idle_memory",
      ...["12_links_read_file", "12_links_first_progress"].flatMap((key) => [key, `${key}_2026`]), "12_links_round_trip", "12_links_bulk", "13_blip", "13_restore"];
    expect(Object.keys(report.scenarios).sort()).toEqual(expected.sort());
    for (const [key, figures] of Object.entries(report.scenarios)) {
      for (const [name, value] of Object.entries(figures)) expect(Number.isFinite(value), `${key}.${name} = ${value}`).toBe(true);
    }
    expect(report.scenarios["2_read_file"]!.p50_ms).toBeGreaterThan(0);
    for (const key of onBothPaths) expect(report.scenarios[key]!.relay_cpu_per_call_ms, `${key}.relay_cpu_per_call_ms`).toBeGreaterThan(0);
    expect(report.scenarios["6_scale"]!.still_registered).toBe(report.scenarios["6_scale"]!.agents);
    // Scenario 10 charges each side with its own processes' CPU, from /proc.
    for (const key of ["10_cpu_sequential", "10_cpu_concurrent"]) {
      for (const clock of ["relay", "agent", "echo"]) expect(report.scenarios[key]![`${clock}_cpu_per_call_ms`], `${key}: ${clock}`).toBeGreaterThan(0);
      expect(report.scenarios[key]!.relay_own_work_per_call_ms, key).toBeDefined();
    }
    expect(report.scenarios["11_idle_memory"]!.agents).toBeGreaterThan(0);
    expect(report.scenarios["11_idle_memory"]!.sessions).toBeGreaterThan(0);
    expect(Object.keys(report.ratios)).toEqual(
      expect.arrayContaining(["relay_hop_p50_ms", "shell_overhead_p50_ms", "read_relay_cpu_2026_over_session", "concurrent_calls_per_s_2026_over_session", "tools_list_relay_cpu_2026_over_session"]),
    );
    // Every target but those that compare with the peer has a measured value (pass or fail is not our business).
    const unmeasured = report.targets.filter((t) => t.pass === undefined).map((t) => t.scenario);
    expect(unmeasured).toEqual(expect.arrayContaining(PEER_TARGETS.slice(0, 2)));
    for (const target of unmeasured) expect(PEER_TARGETS, `${target} was not measured`).toContain(target);
    expect(fs.readFileSync(out.replace(/\.json$/, ".md"), "utf8")).toContain("| target | goal | measured | result |");
  },
  SMOKE_TIMEOUT_MS,
);
