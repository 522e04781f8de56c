// What one run measured: figures per scenario (flat name → number, units in the names), or the reason a
// scenario was skipped. The targets, the table and latest.json are all read from here, so every ratio comes
// from figures of the same run.

/** Figures of one scenario: `p50_ms`, `calls_per_s`, `rss_mb`, … */
export type Figures = Record<string, number>;

export type ScenarioKey =
  | "1_ping"
  | "2_read_file"
  | "3_read_file_concurrent"
  | "4_shell_tool"
  | "4_shell_direct"
  | "5_bulk"
  | "6_scale"
  | "7_compiled_agent"
  | "8_peer_read_text_file"
  | "8_peer_read_text_file_concurrent";

/** One line per scenario key, for the table. */
export const SCENARIO_TITLES: Record<ScenarioKey, string> = {
  "1_ping": "1. MCP ping, answered by the relay (no hop)",
  "2_read_file": "2. read_file 1 KiB, sequential",
  "3_read_file_concurrent": "3. read_file 1 KiB, 32 in flight, 4 sessions",
  "4_shell_tool": '4. run_shell_command "true"',
  "4_shell_direct": '4. Bun.spawn([shell, "-c", "true"]), direct',
  "5_bulk": "5. bulk file through write_file / read_file",
  "6_scale": "6. scale: agents + MCP sessions on one relay",
  "7_compiled_agent": "7. compiled agent",
  "8_peer_read_text_file": "8. peer read_text_file 1 KiB, sequential",
  "8_peer_read_text_file_concurrent": "8. peer read_text_file 1 KiB, 32 in flight",
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
