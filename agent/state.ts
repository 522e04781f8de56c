// The agent's state directory (one per machine name): agent.pid, the lock that makes this the only agent using
// it, and status.json, where the daemon records its connection for `code-remote-agent status`. Command records
// and output logs live there too (commands.ts).

import * as fs from "node:fs";
import * as path from "node:path";
import { ConfigError, type AgentConfig } from "./config.ts";
import { logger } from "../log.ts";

const log = logger("agent");

/** Makes this the only agent using `dir`: two agents sharing one state would kill each other's commands. */
export function lockStateDir(config: AgentConfig): void {
  fs.mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const lock = path.join(config.stateDir, "agent.pid");
  const holder = Number(fs.existsSync(lock) ? fs.readFileSync(lock, "utf8") : 0);
  if (holder && holder !== process.pid && isAgentProcess(holder)) {
    throw new ConfigError(
      `Another agent (pid ${holder}) is already running as '${config.machine}' on this machine, with state in ` +
        `${config.stateDir}. Stop it first, or give this one another MACHINE_NAME.`,
    );
  }
  fs.writeFileSync(lock, String(process.pid), { mode: 0o600 });
  process.on("exit", () => {
    if (fs.existsSync(lock) && Number(fs.readFileSync(lock, "utf8")) === process.pid) fs.rmSync(lock, { force: true });
  });
}

/** The file in the state directory where the daemon records its connection, for `code-remote-agent status`. */
const STATUS_FILE = "status.json";

export interface StatusRecord {
  state: "connecting" | "connected" | "disconnected" | "stopped";
  relay: string;
  machine: string;
  pid: number;
  /** When this state began (ISO 8601): a run of failed reconnects keeps the time of the first. */
  since: string;
  /** Why the last connection ended, as the relay put it. */
  reason?: string;
}

let lastRecorded: StatusRecord | undefined;

/** Rewrites status.json (temp file and rename, so a reader never sees half of it). A failure is logged, never
 *  thrown: the status file is a courtesy to `status`, and the agent keeps working without it. */
export function recordStatus(config: AgentConfig, state: StatusRecord["state"], reason?: string): void {
  const since = lastRecorded?.state === state ? lastRecorded.since : new Date().toISOString();
  const record: StatusRecord = { state, relay: config.relayUrl, machine: config.machine, pid: process.pid, since, reason };
  const file = path.join(config.stateDir, STATUS_FILE);
  try {
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(record) + "\n", { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
    lastRecorded = record;
  } catch (e) {
    log("warn", "could not write the status file", { file, error: (e as Error).message });
  }
}

/** Whether `pid` is alive and (where /proc tells) an agent, so a pid reused by something else does not block. */
function isAgentProcess(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("agent");
  } catch {
    return true; // no /proc (macOS): assume it is
  }
}

/** The pid of the agent running with this state directory (its lock file, agent.pid), if one is. */
export function runningAgent(stateDir: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(stateDir, "agent.pid"), "utf8"));
    return pid > 0 && isAgentProcess(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

export function readStatus(stateDir: string): StatusRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(stateDir, STATUS_FILE), "utf8")) as StatusRecord;
  } catch {
    return undefined;
  }
}

export async function waitForExit(stateDir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (runningAgent(stateDir) && Date.now() < deadline) await Bun.sleep(100);
}
