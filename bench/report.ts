// How a run is shown and kept: a plain table on stdout, latest.json (every figure, the ratios and the target
// checks) and latest.md beside it (the same tables in Markdown, for BENCHMARKS.md). Nothing here measures.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { round } from "./harness.ts";
import { SCENARIO_TITLES, type Figures, type Results, type ScenarioKey } from "./results.ts";
import type { TargetRow } from "./targets.ts";

export interface Machine {
  nproc: number;
  cpu: string;
  memory_gib: number;
  kernel: string;
  os: string;
  bun: string;
  /** 1, 5 and 15 minute load averages when the run began: on a shared machine, the context of every figure. */
  load_at_start: number[];
}

export function describeMachine(): Machine {
  return {
    nproc: os.availableParallelism(),
    cpu: os.cpus()[0]?.model ?? "unknown",
    memory_gib: round(os.totalmem() / 1024 ** 3, 1),
    kernel: `${os.type()} ${os.release()} ${os.machine()}`,
    os: readOsName(),
    bun: Bun.version,
    load_at_start: os.loadavg().map((x) => round(x, 2)),
  };
}

/** The commit measured, with "-dirty" when the working tree differs from it (git describe). */
export function describeRevision(cwd: string): string {
  const git = Bun.spawnSync(["git", "describe", "--always", "--dirty"], { cwd, stdout: "pipe", stderr: "pipe" });
  return git.exitCode === 0 ? git.stdout.toString().trim() : "unknown (not a git checkout)";
}

function readOsName(): string {
  try {
    return /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(fs.readFileSync("/etc/os-release", "utf8"))?.[1] ?? os.platform();
  } catch {
    return os.platform();
  }
}

export interface Report {
  mode: "full" | "quick";
  started_at: string;
  duration_s: number;
  command: string;
  revision: string;
  machine: Machine;
  /** Load averages when the run ended. */
  load_at_end: number[];
  results: Results;
  ratios: Record<string, number>;
  targets: TargetRow[];
}

/** `p50_ms: 0.76` reads "p50 0.76 ms"; `write_mb_per_s: 60` reads "write 60 MB/s". */
function renderFigure(name: string, value: number): string {
  const units: [string, string][] = [["_mb_per_s", " MB/s"], ["_per_s", "/s"], ["_ms", " ms"], ["_mb", " MB"], ["_kb", " kB"], ["_s", " s"]];
  const [suffix, unit] = units.find(([s]) => name.endsWith(s)) ?? ["", ""];
  return `${name.slice(0, name.length - suffix.length).replaceAll("_", " ")} ${value}${unit}`;
}

const renderFigures = (figures: Figures) => Object.entries(figures).map(([k, v]) => renderFigure(k, v)).join(" · ");

const verdict = (row: TargetRow) => (row.pass === undefined ? "not measured" : row.pass ? "pass" : "FAIL");

function scenarioLines(report: Report): [string, string][] {
  const { results } = report;
  const keys = Object.keys(SCENARIO_TITLES) as ScenarioKey[];
  return keys.flatMap((key): [string, string][] => {
    const figures = results.figures[key];
    if (figures) return [[SCENARIO_TITLES[key], renderFigures(figures)]];
    const skipped = results.skipped[key];
    return skipped ? [[SCENARIO_TITLES[key], `skipped: ${skipped}`]] : [];
  });
}

/** The plain-text report for a terminal. */
export function renderText(report: Report): string {
  const width = Math.max(...Object.values(SCENARIO_TITLES).map((t) => t.length)) + 2;
  const quick = report.mode === "quick" ? ": a smoke run, the figures mean nothing" : "";
  const load = `load ${report.machine.load_at_start.join(" / ")} → ${report.load_at_end.join(" / ")}`;
  const lines = [`Code Remote benchmarks (${report.mode}${quick}) at ${report.revision}, ${load}`, ""];
  for (const [title, figures] of scenarioLines(report)) lines.push(`${title.padEnd(width)}${figures}`);
  lines.push("", `ratios: ${Object.entries(report.ratios).map(([k, v]) => `${k} ${v}`).join(" · ") || "none"}`, "", "Targets");
  // Each column as wide as its longest entry (at least 40, 40, 20), so that a long one never runs into the next.
  const widest = (texts: string[], least: number) => Math.max(least, ...texts.map((t) => t.length + 2));
  const cols = [widest(report.targets.map((r) => r.scenario), 40), widest(report.targets.map((r) => r.target), 40), widest(report.targets.map((r) => r.measured), 20)];
  for (const row of report.targets) {
    lines.push(`  ${row.scenario.padEnd(cols[0]!)}${row.target.padEnd(cols[1]!)}${(row.measured || "-").padEnd(cols[2]!)}${verdict(row)}`);
  }
  const notes = Object.entries(report.results.notes).map(([k, v]) => `${k}: ${v}`);
  if (notes.length) lines.push("", ...notes);
  return lines.join("\n");
}

/** The same report as Markdown tables, to paste into BENCHMARKS.md. */
export function renderMarkdown(report: Report): string {
  const m = report.machine;
  const lines = [
    `Run of ${report.started_at} (${report.mode}, ${report.duration_s} s) at ${report.revision}: \`${report.command}\``,
    "",
    `Machine: ${m.nproc} cores (${m.cpu}), ${m.memory_gib} GiB, ${m.kernel}, ${m.os}, bun ${m.bun}; ` +
      `load average ${m.load_at_start.join(" / ")} at the start, ${report.load_at_end.join(" / ")} at the end.`,
    "",
    "| scenario | figures |",
    "|---|---|",
    ...scenarioLines(report).map(([title, figures]) => `| ${title} | ${figures} |`),
    "",
    "| target | goal | measured | result |",
    "|---|---|---|---|",
    ...report.targets.map((row) => `| ${row.scenario} | ${row.target} | ${row.measured || "-"} | ${verdict(row)} |`),
  ];
  return lines.join("\n");
}

/** The machine-readable report: every figure of the run, the ratios between them and the target checks. */
export function toJson(report: Report) {
  return {
    mode: report.mode,
    started_at: report.started_at,
    duration_s: report.duration_s,
    command: report.command,
    revision: report.revision,
    machine: report.machine,
    load_at_end: report.load_at_end,
    notes: report.results.notes,
    scenarios: report.results.figures,
    skipped: report.results.skipped,
    ratios: report.ratios,
    targets: report.targets,
  };
}

/** Writes `file` (JSON) and the Markdown beside it (same name, .md). */
export function writeReport(file: string, report: Report): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(toJson(report), null, 2)}\n`);
  fs.writeFileSync(file.replace(/\.json$/, "") + ".md", `${renderMarkdown(report)}\n`);
}
