// `code-remote-agent install-service` and `uninstall-service`: keep the agent running, now and after every login
// or reboot, under launchd (macOS) or a systemd user unit (Linux), with the settings setup saved. The service
// definitions are built by pure functions (serviceSpec, systemdUnit, launchdPlist), so tests can read them.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isCompiled, parseFlags, selfCommand, shellQuote, UsageError } from "./cli.ts";
import { ConfigError, loadConfig } from "./config.ts";
import { configFilePath, fileOnly, readSettingsFile, xdgConfigHome, xdgStateHome, type Env, type Settings } from "./config-file.ts";
import { runningAgent, waitForExit } from "./state.ts";

/** The launchd job's label (reverse DNS, as launchd expects) and the systemd unit's name. */
export const LAUNCHD_LABEL = "dev.code-remote.agent";
export const SYSTEMD_UNIT = "code-remote-agent.service";
/** systemd restarts a dead agent after this long (launchd's own floor is 10 s). */
const RESTART_DELAY_S = 5;
/** How long systemd waits after SIGTERM before killing what is left: the agent needs 2 s to stop its commands. */
const STOP_TIMEOUT_S = 10;
/** How long install-service waits for an old agent to exit before launchd starts the new one. */
const OLD_AGENT_EXIT_MS = 10_000;
/** A service's PATH when the installer's own is unknown; launchd's default lacks Homebrew. Commands the
 *  assistant runs inherit the service's PATH. */
const FALLBACK_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/** Where the service definition goes on this platform. */
export function serviceFilePath(env: Env, platform = process.platform): string {
  return platform === "darwin"
    ? path.join(os.homedir(), "Library", "LaunchAgents", `${LAUNCHD_LABEL}.plist`)
    : path.join(xdgConfigHome(env), "systemd", "user", SYSTEMD_UNIT);
}

/** Where the service's agent logs: ~/Library/Logs/code-remote on macOS, beside the agent's state on Linux. */
export function defaultLogFile(env: Env, platform = process.platform): string {
  return platform === "darwin" ? path.join(os.homedir(), "Library", "Logs", "code-remote", "agent.log") : path.join(xdgStateHome(env), "code-remote", "agent.log");
}

// --- service definitions ---

/** What a service runs, wherever it is installed. */
export interface ServiceSpec {
  /** The agent and its arguments: the executable (or bun and the script), then --log-file. */
  programArguments: string[];
  workingDirectory: string;
  /** PATH (commands the assistant runs inherit it) and the XDG directories, so the service finds the same
   *  configuration and state as the user who installed it. Never the token: that stays in the configuration file. */
  environment: Record<string, string>;
  /** The agent's own log, rotated by size. */
  logFile: string;
  /** launchd only: where the process's stdout and stderr go, which is only ever a startup error or a crash, since
   *  the agent writes its log to logFile. */
  outputFile: string;
}

/** How to start this same agent again: the compiled executable itself, or bun with the absolute script path and
 *  --no-env-file (a service's settings come from the configuration file, not a .env where it starts). */
export function agentCommand(): string[] {
  return isCompiled() ? [process.execPath] : [process.execPath, "--no-env-file", path.resolve(Bun.main)];
}

export function serviceSpec(env: Env, settings: Settings, platform = process.platform, command = agentCommand()): ServiceSpec {
  const logFile = settings.LOG_FILE ? path.resolve(settings.LOG_FILE) : defaultLogFile(env, platform);
  const environment: Record<string, string> = { PATH: env.PATH || FALLBACK_PATH };
  for (const name of ["XDG_CONFIG_HOME", "XDG_STATE_HOME"]) if (env[name]) environment[name] = env[name];
  return {
    programArguments: [...command, "--log-file", logFile],
    workingDirectory: os.homedir(),
    environment,
    logFile,
    outputFile: path.join(path.dirname(logFile), "agent.out.log"),
  };
}

/** A systemd user unit. Arguments are double-quoted with `\` and `"` escaped, `%` doubled (systemd specifiers) and,
 *  in ExecStart, `$` doubled (systemd expands $VAR there). */
export function systemdUnit(spec: ServiceSpec): string {
  const quote = (value: string, dollars = false) => {
    let escaped = value.replace(/[\\"]/g, "\\$&").replace(/%/g, "%%");
    if (dollars) escaped = escaped.replace(/\$/g, "$$$$");
    return `"${escaped}"`;
  };
  return `# The Code Remote agent, written by \`code-remote-agent install-service\` (uninstall-service removes it).
# Its settings, token included, are in ${configFilePath(spec.environment)}, never in this file.
[Unit]
Description=Code Remote agent
# No network target to wait for: the agent retries with backoff until the relay answers.

[Service]
Type=simple
ExecStart=${spec.programArguments.map((arg) => quote(arg, true)).join(" ")}
WorkingDirectory=${quote(spec.workingDirectory)}
${Object.entries(spec.environment).map(([k, v]) => `Environment=${quote(`${k}=${v}`)}`).join("\n")}
Restart=always
RestartSec=${RESTART_DELAY_S}
# SIGTERM to the agent alone: it stops its commands' process groups itself (TERM, then KILL), then exits.
KillMode=mixed
TimeoutStopSec=${STOP_TIMEOUT_S}

[Install]
WantedBy=default.target
`;
}

/** A launchd agent (an XML property list): started at login and restarted whenever it exits. */
export function launchdPlist(spec: ServiceSpec, label = LAUNCHD_LABEL): string {
  const xml = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const str = (text: string) => `<string>${xml(text)}</string>`;
  const env = Object.entries(spec.environment).map(([k, v]) => `\t\t<key>${xml(k)}</key>\n\t\t${str(v)}`);
  return `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- The Code Remote agent, written by code-remote-agent install-service (uninstall-service removes it).
     Its settings, token included, are in its configuration file, never in this one. -->
<plist version="1.0">
<dict>
\t<key>Label</key>
\t${str(label)}
\t<key>ProgramArguments</key>
\t<array>
${spec.programArguments.map((arg) => `\t\t${str(arg)}`).join("\n")}
\t</array>
\t<key>WorkingDirectory</key>
\t${str(spec.workingDirectory)}
\t<key>EnvironmentVariables</key>
\t<dict>
${env.join("\n")}
\t</dict>
\t<key>RunAtLoad</key>
\t<true/>
\t<key>KeepAlive</key>
\t<true/>
\t<key>StandardOutPath</key>
\t${str(spec.outputFile)}
\t<key>StandardErrorPath</key>
\t${str(spec.outputFile)}
</dict>
</plist>
`;
}

// --- install-service, uninstall-service ---

const INSTALL_HELP = `Usage: code-remote-agent install-service

Keeps the agent running, now and after every login or reboot, with the settings setup saved in
${configFilePath(process.env)}. It runs this same executable (${agentCommand().join(" ")}).
  macOS: writes ~/Library/LaunchAgents/${LAUNCHD_LABEL}.plist (RunAtLoad, KeepAlive) and loads it with
         launchctl bootstrap; the agent logs to ~/Library/Logs/code-remote/agent.log.
  Linux: writes a systemd user unit, ~/.config/systemd/user/${SYSTEMD_UNIT} (Restart=always), and runs
         systemctl --user daemon-reload, enable and restart; the agent logs to ~/.local/state/code-remote/agent.log.
Logs rotate at LOG_MAX_BYTES (10 MB) keeping LOG_FILES (5) files. Running it again rewrites the service and
restarts the agent (after setup changed its settings, say). When systemd or launchd cannot be reached, the file
is written and the command to start it is printed.`;

const UNINSTALL_HELP = `Usage: code-remote-agent uninstall-service

Stops the agent's service and removes its launchd plist (macOS) or systemd user unit (Linux). The settings in
${configFilePath(process.env)} and the logs are kept.`;

interface Ran {
  ok: boolean;
  output: string;
}

export function run(argv: string[]): Ran {
  if (!Bun.which(argv[0]!)) return { ok: false, output: `${argv[0]} is not installed` };
  const r = Bun.spawnSync(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, output: `${r.stdout.toString()}${r.stderr.toString()}`.trim() };
}

export const firstLine = (text: string) => text.split("\n").find((l) => l.trim())?.trim() ?? "";

export async function installService(args: string[]): Promise<number> {
  const flags = parseFlags(args, { help: "switch" });
  if (flags.has("help")) return (console.log(INSTALL_HELP), 0);
  const platform = supportedPlatform();
  const configFile = configFilePath(process.env);
  const settings = readSettingsFile(configFile);
  if (!settings) throw new ConfigError(`There are no settings in ${configFile} yet: run ${selfCommand()} setup first.`);
  // The service sees the file and not this shell's variables, so the file alone must make a working agent.
  const config = loadConfig(fileOnly(settings));
  const spec = serviceSpec(process.env, settings, platform);
  const file = serviceFilePath(process.env, platform);
  const running = runningAgent(config.stateDir);
  if (running && !fs.existsSync(file)) {
    console.log(`Note: an agent is already running as '${config.machine}' (pid ${running}), not as a service. Stop it: the service's agent waits until it is gone.`);
  }
  if (isCompiled() && (process.execPath.startsWith(os.tmpdir()) || process.execPath.includes("/Downloads/"))) {
    console.log(`Note: the service will run ${process.execPath}; moving or deleting that file breaks it. A lasting place: install -m 755 ${shellQuote(process.execPath)} ~/.local/bin/code-remote-agent`);
  }
  fs.mkdirSync(path.dirname(spec.logFile), { recursive: true, mode: 0o700 });
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, platform === "darwin" ? launchdPlist(spec) : systemdUnit(spec), { mode: 0o644 });
  console.log(`Wrote ${file}`);
  console.log(`  runs: ${spec.programArguments.map(shellQuote).join(" ")}`);
  const started = platform === "darwin" ? await loadLaunchd(file, config.stateDir) : startSystemd();
  if (!started) return 1;
  console.log(`Check it with: ${selfCommand()} status`);
  return 0;
}

/** daemon-reload, enable, restart (so a rewritten unit or new settings take effect). systemd not reachable is
 *  not a failure: the unit is written, and the commands to start it are printed. */
function startSystemd(): boolean {
  const lingerHint = () => {
    if (!fs.existsSync(`/var/lib/systemd/linger/${os.userInfo().username}`)) {
      console.log(`To keep it running while you are logged out, and to start it at boot: loginctl enable-linger "$USER"`);
    }
  };
  const reload = run(["systemctl", "--user", "daemon-reload"]);
  if (!reload.ok) {
    console.log(`The service is installed but not started: systemd is not running for this user here (${firstLine(reload.output)}).`);
    console.log(`Where systemd runs, start it with:\n  systemctl --user daemon-reload && systemctl --user enable --now ${SYSTEMD_UNIT}`);
    console.log(`Without systemd, run the agent yourself: ${selfCommand()}`);
    lingerHint();
    return true;
  }
  for (const step of [["enable", SYSTEMD_UNIT], ["restart", SYSTEMD_UNIT]]) {
    const r = run(["systemctl", "--user", ...step]);
    if (!r.ok) {
      console.error(`systemctl --user ${step.join(" ")} failed: ${r.output}\nSee: journalctl --user -u ${SYSTEMD_UNIT}`);
      return false;
    }
  }
  console.log(`Started: systemctl --user enable ${SYSTEMD_UNIT} && systemctl --user restart ${SYSTEMD_UNIT}`);
  lingerHint();
  return true;
}

/** launchctl bootout (an older copy, if loaded), then bootstrap into this user's GUI domain; launchctl load -w on
 *  macOS before 10.10 (Darwin 14), which has no bootstrap. */
async function loadLaunchd(plist: string, stateDir: string): Promise<boolean> {
  const domain = `gui/${process.getuid!()}`;
  if (!Bun.which("launchctl")) {
    console.log(`The service is written but not loaded: launchctl is not available here. On the Mac, load it with:\n  launchctl bootstrap ${domain} ${shellQuote(plist)}`);
    return true;
  }
  const legacy = Number(os.release().split(".")[0]) < 14;
  const unload = legacy ? ["launchctl", "unload", plist] : ["launchctl", "bootout", `${domain}/${LAUNCHD_LABEL}`];
  if (run(unload).ok) await waitForExit(stateDir, OLD_AGENT_EXIT_MS); // launchd would start the new one while the old still holds the lock
  const load = legacy ? ["launchctl", "load", "-w", plist] : ["launchctl", "bootstrap", domain, plist];
  const r = run(load);
  if (!r.ok) {
    console.error(`${load.join(" ")} failed: ${r.output}\nlaunchd's view of it: launchctl print ${domain}/${LAUNCHD_LABEL}`);
    return false;
  }
  console.log(`Loaded: ${load.map(shellQuote).join(" ")}`);
  return true;
}

export async function uninstallService(args: string[]): Promise<number> {
  const flags = parseFlags(args, { help: "switch" });
  if (flags.has("help")) return (console.log(UNINSTALL_HELP), 0);
  const platform = supportedPlatform();
  const file = serviceFilePath(process.env, platform);
  if (!fs.existsSync(file)) {
    console.log(`No service is installed (there is no ${file}).`);
    return 0;
  }
  if (platform === "darwin") {
    // bootout, or unload before macOS 10.10; whichever this macOS lacks simply fails.
    if (!run(["launchctl", "bootout", `gui/${process.getuid!()}/${LAUNCHD_LABEL}`]).ok) run(["launchctl", "unload", file]);
    fs.rmSync(file);
  } else {
    const stop = run(["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT]);
    fs.rmSync(file);
    if (stop.ok) run(["systemctl", "--user", "daemon-reload"]);
    else console.log(`systemd could not be reached (${firstLine(stop.output)}), so nothing was stopped. Where it runs: systemctl --user disable --now ${SYSTEMD_UNIT}`);
  }
  console.log(`Removed ${file}. The settings (${configFilePath(process.env)}) and logs are kept.`);
  return 0;
}

function supportedPlatform(): "darwin" | "linux" {
  if (process.platform === "darwin" || process.platform === "linux") return process.platform;
  throw new UsageError(`Services are supported on macOS (launchd) and Linux (systemd), not ${process.platform}.`);
}
