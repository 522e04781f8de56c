// `code-remote-agent status`: whether the settings are saved, the service installed, the agent running (its lock
// file) and connected (the status file it keeps), each in one line, from files and the service manager only.

import * as fs from "node:fs";
import * as os from "node:os";
import { parseFlags, selfCommand } from "./cli.ts";
import { ConfigError, defaultMachineName, defaultStateDir, loadConfig, type AgentConfig } from "./config.ts";
import { configFilePath, withConfigFile } from "./config-file.ts";
import { defaultLogFile, firstLine, LAUNCHD_LABEL, run, serviceFilePath, SYSTEMD_UNIT } from "./service.ts";
import { readStatus, runningAgent, type StatusRecord } from "./state.ts";

const STATUS_HELP = `Usage: code-remote-agent status

Says whether the agent's settings are saved, whether its service is installed, whether the agent is running (its
lock file in the state directory), and whether it is connected to the relay (the status file it keeps there).
Exit status: 0 when the agent is running and connected, 1 otherwise.`;

export async function status(args: string[]): Promise<number> {
  const flags = parseFlags(args, { help: "switch" });
  if (flags.has("help")) return (console.log(STATUS_HELP), 0);
  const env = process.env;
  const rows: [string, string][] = [];
  const configFile = configFilePath(env);
  let config: AgentConfig | undefined;
  const saved = fs.existsSync(configFile);
  try {
    config = loadConfig(withConfigFile(env));
    rows.push(["Settings", `${saved ? configFile : `from the environment (no ${configFile})`}: machine '${config.machine}', relay ${config.relayUrl}`]);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    rows.push(["Settings", saved ? e.message : `none saved (no ${configFile}): run ${selfCommand()} setup`]);
  }
  const stateDir = config?.stateDir ?? env.AGENT_STATE_DIR ?? defaultStateDir(env, os.homedir(), env.MACHINE_NAME || defaultMachineName());

  const platform = process.platform === "darwin" ? "darwin" : "linux";
  const serviceFile = serviceFilePath(env, platform);
  const installed = fs.existsSync(serviceFile);
  rows.push(["Service", installed ? `installed: ${serviceFile}${serviceManagerState(platform)}` : `not installed (${selfCommand()} install-service)`]);

  const pid = runningAgent(stateDir);
  rows.push(["Agent", pid ? `running (pid ${pid})` : "not running"]);
  const record = readStatus(stateDir);
  const connected = pid !== undefined && record?.pid === pid && record.state === "connected";
  rows.push(["Connection", describeConnection(pid, record)]);
  rows.push(["Log", config?.log.file ?? (installed ? defaultLogFile(env, platform) : "stderr of wherever it was started")]);
  for (const [label, text] of rows) console.log(`${label.padEnd(12)} ${text}`);
  return connected ? 0 : 1;
}

function describeConnection(pid: number | undefined, record: StatusRecord | undefined): string {
  if (!pid) {
    if (!record) return "none";
    if (record.state === "stopped") return `none: the agent stopped ${at(record.since)}`;
    return `none: the agent ended without stopping (it was ${record.state} ${at(record.since)}); its log may say why`;
  }
  if (record?.pid !== pid) return "unknown: the agent has not recorded one yet";
  const where = `as '${record.machine}' to ${record.relay}`;
  if (record.state === "connected") return `connected ${where}, ${at(record.since)}`;
  if (record.state === "connecting") return `connecting ${where}, ${at(record.since)}`;
  return `disconnected from ${record.relay} ${at(record.since)}, retrying${record.reason ? ` (last: ${record.reason})` : ""}`;
}

/** "at 2025-01-01T10:00:00.000Z (3 min ago)" */
function at(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return `at ${iso} (${s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`} ago)`;
}

/** What systemd or launchd says about the service, when it can be asked. */
function serviceManagerState(platform: "darwin" | "linux"): string {
  if (platform === "darwin") {
    const r = run(["launchctl", "print", `gui/${process.getuid!()}/${LAUNCHD_LABEL}`]);
    return r.ok ? ` (launchd: ${/^\s*state = (\S+)/m.exec(r.output)?.[1] ?? "loaded"})` : " (launchd: not loaded)";
  }
  const r = run(["systemctl", "--user", "is-active", SYSTEMD_UNIT]);
  const state = firstLine(r.output);
  return /^(active|inactive|failed|activating|deactivating|reloading)$/.test(state) ? ` (systemd: ${state})` : " (systemd: not reachable)";
}
