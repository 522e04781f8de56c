// What one run measured: figures per scenario (flat name → number, units in the names), or the reason a
// scenario was skipped. The targets, the table and latest.json are all read from here, so every ratio comes
// from figures of the same run.

/** Figures of one scenario: `p50_ms`, `calls_per_s`, `rss_mb`, … */
export type Figures = Record<string, number>;

/** The two ways a client speaks MCP at /mcp, measured side by side: a 2025 Streamable HTTP session (the v1 SDK
 *  client, 1.32.2, as today's connectors) and the stateless 2026-07-28 revision (the v2 SDK client, 2.4.0, with
 *  automatic version negotiation: no session, each request stands alone). */
export type McpPath = "session" | "2026";
export const MCP_PATHS: readonly McpPath[] = ["session", "2026"];

/** The scenarios that run on both paths. Their keys name the session path's figures, as they did before the
 *  2026-07-28 path existed; the 2026-07-28 path's keys end in "_2026" (see onPath). */
export type PathScenario = "1_ping" | "2_read_file" | "3_read_file_concurrent" | "9_tools_list" | "12_links_read_file" | "12_links_first_progress";

export type ScenarioKey =
  | PathScenario
  | `${PathScenario}_2026`
  | "4_shell_tool"
  | "4_shell_direct"
  | "5_bulk"
  | "6_scale"
  | "7_compiled_agent"
  | "8_peer_read_text_file"
  | "8_peer_read_text_file_concurrent"
  | "10_cpu_sequential"
  | "10_cpu_concurrent"
  | "11_idle_memory"
  | "12_links_round_trip"
  | "12_links_bulk"
  | "13_blip"
  | "13_restore";

/** The key of a path scenario's figures on `path`. */
export const onPath = (key: PathScenario, path: McpPath): ScenarioKey => (path === "session" ? key : `${key}_2026`);

/** One line per scenario key, for the table. */
export const SCENARIO_TITLES: Record<ScenarioKey, string> = {
  "1_ping": "1. MCP ping, answered by the relay (no hop)",
  "1_ping_2026": "1. 2026-07-28: server/discover (it has no ping)",
  "2_read_file": "2. read_file 1 KiB, sequential",
  "2_read_file_2026": "2. 2026-07-28: read_file 1 KiB, sequential",
  "3_read_file_concurrent": "3. read_file 1 KiB, 32 in flight, 4 sessions",
  "3_read_file_concurrent_2026": "3. 2026-07-28: read_file, 32 in flight, 4 clients",
  "4_shell_tool": '4. run_shell_command "true"',
  "4_shell_direct": '4. Bun.spawn([shell, "-c", "true"]), direct',
  "5_bulk": "5. bulk file through write_file / read_file",
  "6_scale": "6. scale: agents + MCP sessions on one relay",
  "7_compiled_agent": "7. compiled agent",
  "8_peer_read_text_file": "8. peer read_text_file 1 KiB, sequential",
  "8_peer_read_text_file_concurrent": "8. peer read_text_file 1 KiB, 32 in flight",
  "9_tools_list": "9. tools/list, sequential",
  "9_tools_list_2026": "9. 2026-07-28: tools/list, sequential",
  "10_cpu_sequential": "10. CPU per call: relay, echo server, peer; sequential",
  "10_cpu_concurrent": "10. CPU per call: relay, echo server, peer; 32 in flight",
  "11_idle_memory": "11. idle agents and sessions: relay memory",
  "12_links_round_trip": "12. one 40 ms link alone: TCP echo round trip",
  "12_links_read_file": "12. read_file 1 KiB over 40 + 40 ms links",
  "12_links_read_file_2026": "12. 2026-07-28: read_file over 40 + 40 ms links",
  "12_links_first_progress": "12. first progress of a long command over the links",
  "12_links_first_progress_2026": "12. 2026-07-28: first progress over the links",
  "12_links_bulk": "12. bulk file over the links (scenario 5's calls)",
  "13_blip": "13. read_file calls sent during a cut of the agent's link",
  "13_restore": "13. outage of the agent's link: restore to first call",
};

export class Results {
  readonly figures: Partial<Record<ScenarioKey, Figures>> = {};
  readonly skipped: Partial<Record<ScenarioKey, string>> = {};
  /** Facts that are not figures: which shell, which peer runtime. */
  readonly notes: Record<string, string> = {};

  record(key: ScenarioKey, figures: Figures): void {
    this.figures[key] = figures;
  }

  skip(keys: ScenarioKey[], reason: string): void {
    for (const key of keys) this.skipped[key] = reason;
  }

  /** One figure, or undefined when its scenario did not run. */
  get(key: ScenarioKey, figure: string): number | undefined {
    return this.figures[key]?.[figure];
  }
}
