// Installing and configuring the agent, not running it: the subcommands of code-remote-agent that replace the
// original's setup.sh, run.sh and hand-edited launchd plist. `setup` asks for the relay URL, token and machine
// name, proves them with one real connection and saves them in a file only this user can read; `install-service`
// hands the agent to launchd (macOS) or a systemd user unit (Linux); `status` reads what the running agent
// records in its state directory. agent.ts imports this module for main()'s dispatch and the configuration file,
// and this module imports agent.ts for its config loader and connection check (the daemon's own code): a cycle
// that is safe because neither module uses the other while it loads.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MachineName } from "./protocol.ts";
import {
  ConfigError,
  ENV_HELP,
  STATUS_FILE,
  checkConnection,
  defaultMachineName,
  describeArg,
  defaultStateDir,
  isAgentProcess,
  loadConfig,
  parseRelayUrl,
  type AgentConfig,
  type CheckResult,
  type StatusRecord,
} from "./agent.ts";

// --- constants ---

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

type Env = Record<string, string | undefined>;
type Settings = Record<string, string>;

/** A mistake in how a subcommand was called: printed with a pointer to its --help, exit code 2. */
class UsageError extends Error {}
/** The user pressed Ctrl-C or Ctrl-D at a question. */
class Cancelled extends Error {}

// --- paths ---

/** XDG_CONFIG_HOME when it is set and absolute (the XDG spec ignores a relative one), else ~/.config. */
const xdgConfigHome = (env: Env) => (env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(os.homedir(), ".config"));
const xdgStateHome = (env: Env) => (env.XDG_STATE_HOME && path.isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : path.join(os.homedir(), ".local", "state"));

/** Where setup saves the agent's settings and the daemon reads them: ~/.config/code-remote/agent.env. */
export const configFilePath = (env: Env) => path.join(xdgConfigHome(env), "code-remote", "agent.env");

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

/** A path or word as it can be pasted into a shell. */
function shellQuote(word: string): string {
  return /^[\w@%+=:,./~-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** How the user can run this same agent again, for the commands we print. */
function selfCommand(): string {
  if (!isCompiled()) {
    const script = path.relative(process.cwd(), Bun.main);
    return `bun run ${shellQuote(script.startsWith("..") ? Bun.main : script)}`;
  }
  const name = path.basename(process.execPath);
  return Bun.which(name) === process.execPath ? name : shellQuote(process.execPath);
}

/** A compiled executable runs its code from Bun's embedded file system. */
const isCompiled = () => Bun.main.startsWith("/$bunfs/");

// --- the configuration file ---

/** Settings the file may hold: the agent's own (agent.ts's ENV_HELP), and AUTH_TOKEN, AGENT_TOKEN's older name. */
const knownSettings = () => [...ENV_HELP.map(([name]) => name), "AUTH_TOKEN"];

/** Parses KEY=value lines: `#` comments and blank lines are skipped, a value may be 'single-quoted' (literal) or
 *  "double-quoted" (\" and \\ escapes), and an unquoted value ends at ` #`. Nothing is expanded or evaluated (the
 *  original sourced its .env with a shell). Errors name the line and key, never a value: it may be the token. */
export function parseSettings(text: string, file: string): Settings {
  const settings: Settings = {};
  const known = knownSettings();
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const where = `${file}, line ${index + 1}`;
    const match = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!match) throw new ConfigError(`${where}: expected KEY=value.`);
    const [, key, rest] = match as unknown as [string, string, string];
    if (!known.includes(key)) throw new ConfigError(`${where}: unknown setting '${key}'. Known: ${known.join(", ")}.`);
    const value = parseValue(rest);
    if (value === undefined) throw new ConfigError(`${where}: the value of ${key} has an unclosed quote or text after its closing quote.`);
    settings[key] = value;
  });
  return settings;
}

function parseValue(rest: string): string | undefined {
  const quote = rest[0];
  if (quote !== '"' && quote !== "'") return rest.replace(/\s+#.*$/, "").trim();
  const body = quote === "'" ? /^'([^']*)'(.*)$/.exec(rest) : /^"((?:[^"\\]|\\.)*)"(.*)$/.exec(rest);
  if (!body || !/^(\s+#.*|\s*)$/.test(body[2]!)) return undefined;
  return quote === "'" ? body[1]! : body[1]!.replace(/\\(.)/g, "$1");
}

/** Lines for parseSettings, in the order of --help; values quoted only when they need it. */
export function formatSettings(settings: Settings): string {
  const lines = [
    "# Code Remote agent settings, written by `code-remote-agent setup`. This file holds the agent's token: keep it",
    "# readable only by you (chmod 600). Environment variables of the same names override these lines.",
  ];
  for (const key of knownSettings()) {
    const value = settings[key];
    if (value === undefined) continue;
    if (/[\r\n]/.test(value)) throw new ConfigError(`${key} must fit on one line.`);
    lines.push(`${key}=${/^[\w@%+=:,./~-]*$/.test(value) ? value : `"${value.replace(/[\\"]/g, "\\$&")}"`}`);
  }
  return lines.join("\n") + "\n";
}

/** Reads the configuration file, or undefined when there is none. A file other users can read or change is
 *  refused (it holds the token), unless `requirePrivate` is off: setup reads an old file only to rewrite it. */
export function readSettingsFile(file: string, requirePrivate = true): Settings | undefined {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
  if (!stat.isFile()) throw new ConfigError(`${file} is not a regular file.`);
  if (requirePrivate && (stat.mode & 0o077) !== 0) {
    throw new ConfigError(
      `${file} can be read or changed by other users (mode ${(stat.mode & 0o777).toString(8)}), and it holds the agent's ` +
        `token. Make it private (chmod 600 ${shellQuote(file)}) and start again.`,
    );
  }
  return parseSettings(fs.readFileSync(file, "utf8"), file);
}

/** The settings a service's agent gets: the file's, and the state directory the service passes on (serviceSpec). */
const fileOnly = (settings: Settings): Env => ({ ...settings, XDG_STATE_HOME: process.env.XDG_STATE_HOME });

/** The daemon's settings: the configuration file, with every setting the environment sets (non-empty) on top. */
export function withConfigFile(env: Env): Env {
  const fromFile = readSettingsFile(configFilePath(env));
  if (!fromFile) return env;
  return { ...fromFile, ...Object.fromEntries(Object.entries(env).filter(([, value]) => value)) };
}

/** Writes the file so that it is never readable by others and never half-written: the directory 0700, a fresh
 *  temp file created 0600 beside it (O_EXCL), flushed to disk, then renamed over the old file. */
export function writeSettingsFile(file: string, settings: Settings): void {
  const text = formatSettings(settings);
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700); // our own directory: an older, looser one is tightened
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    const fd = fs.openSync(temp, "wx", 0o600);
    try {
      fs.writeSync(fd, text);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
  } catch (e) {
    fs.rmSync(temp, { force: true });
    throw e;
  }
}

// --- the running agent ---

/** The pid of the agent running with this state directory (agent.ts's lock file), if one is. */
function runningAgent(stateDir: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(stateDir, "agent.pid"), "utf8"));
    return pid > 0 && isAgentProcess(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

function readStatus(stateDir: string): StatusRecord | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(stateDir, STATUS_FILE), "utf8")) as StatusRecord;
  } catch {
    return undefined;
  }
}

async function waitForExit(stateDir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (runningAgent(stateDir) && Date.now() < deadline) await Bun.sleep(100);
}

// --- setup ---

const SETUP_FLAGS = { "relay-url": "value", "token-file": "value", "token-stdin": "switch", machine: "value", "allowed-roots": "value", "no-check": "switch", force: "switch", help: "switch" } as const;

const SETUP_HELP = `Usage: code-remote-agent setup [flags]

Saves the agent's settings in ${configFilePath(process.env)} (mode 600, as KEY=value lines), after
checking them by connecting once to the relay as this machine. In a terminal it asks for what the flags leave
out, showing the defaults (the token is read without echo); otherwise the flags must say it all.

  --relay-url URL        the relay's WebSocket URL, wss://relay.example.com/ws/agent (https:// works too)
  --token-file FILE      read the agent token (the relay's AGENT_TOKEN) from FILE
  --token-stdin          read the agent token from standard input
  --machine NAME         the name the assistant uses for this machine (default: the host name)
  --allowed-roots DIRS   directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)
  --no-check             save without connecting to the relay first
  --force                replace an existing file without asking (settings not given are kept from it)

There is no flag for the token itself: command lines are visible to every user of the machine (ps).
Exit status: 0 saved, 1 the check failed (nothing saved), 2 a usage or settings error.`;

async function setup(args: string[]): Promise<number> {
  const flags = parseFlags(args, SETUP_FLAGS);
  if (flags.has("help")) return (console.log(SETUP_HELP), 0);
  const file = configFilePath(process.env);
  const existing = readExisting(file, flags.has("force"));
  let relay = flags.get("relay-url") as string | undefined;
  let machine = flags.get("machine") as string | undefined;
  let token = await tokenFromFlags(flags);
  // Ask only in a terminal, and only for what the flags left out; a script gets an error instead of a question.
  const interactive = process.stdin.isTTY === true && !flags.has("token-stdin") && (!relay || !machine || !token);
  if (existing && !interactive && !flags.has("force")) {
    throw new UsageError(`${file} already exists. Pass --force to replace it (settings you do not give are kept).`);
  }
  const terminal = interactive ? new Terminal() : undefined;
  if (terminal) {
    console.log(existing ? `Updating ${file}. Press Enter to keep the value in brackets.` : `The agent's settings will be saved in ${file}, readable only by you.`);
    relay ??= await terminal.askValid("Relay URL (wss://host/ws/agent)", existing?.RELAY_URL ?? process.env.RELAY_URL, parseRelayUrl);
    token ??= await askToken(terminal, existing?.AGENT_TOKEN ?? existing?.AUTH_TOKEN);
    machine ??= await terminal.askValid("Machine name", existing?.MACHINE_NAME ?? process.env.MACHINE_NAME ?? defaultMachineName(), checkMachineName);
  }
  relay ??= existing?.RELAY_URL;
  token ??= existing?.AGENT_TOKEN ?? existing?.AUTH_TOKEN;
  machine ??= existing?.MACHINE_NAME ?? defaultMachineName();
  if (!relay) throw new UsageError("No relay URL: pass --relay-url wss://relay.example.com/ws/agent.");
  if (!token) throw new UsageError("No token: pass --token-file FILE or --token-stdin (the relay's AGENT_TOKEN).");

  const settings: Settings = { ...existing, RELAY_URL: parseRelayUrl(relay), AGENT_TOKEN: token, MACHINE_NAME: machine };
  delete settings.AUTH_TOKEN; // written as AGENT_TOKEN
  const roots = flags.get("allowed-roots") as string | undefined;
  if (roots) settings.ALLOWED_ROOTS = roots;
  else if (roots === "") delete settings.ALLOWED_ROOTS; // back to the default
  const config = loadConfig(fileOnly(settings)); // what the daemon will make of them; throws ConfigError with the fix

  if (!flags.has("no-check")) {
    const checked = await check(config);
    if (!checked && !(terminal && (await terminal.confirm("Save these settings anyway?")))) {
      console.error(`Nothing was saved. Fix that${terminal ? "" : ", or pass --no-check to save these settings anyway"}.`);
      return 1;
    }
  }
  writeSettingsFile(file, settings);
  console.log(`Saved ${file} (mode 600: only you can read it).`);
  if (fs.existsSync(serviceFilePath(process.env))) {
    console.log(`A running service still has the old settings; restart it with: ${selfCommand()} install-service`);
  } else {
    console.log(`Next: ${selfCommand()} install-service   keeps the agent running, now and after every login or reboot`);
    console.log(`  or: ${selfCommand()}                   runs it in this terminal`);
  }
  return 0;
}

/** The saved settings, as defaults (read even when too open: setup rewrites the file private). With --force, a
 *  file that cannot be parsed is replaced instead of stopping setup. */
function readExisting(file: string, force: boolean): Settings | undefined {
  try {
    return readSettingsFile(file, false);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    if (!force) throw new ConfigError(`${e.message} Fix that, or pass --force to replace the whole file.`);
    console.log(`Replacing ${file}, which cannot be read (${e.message}).`);
    return undefined;
  }
}

async function tokenFromFlags(flags: Map<string, string | true>): Promise<string | undefined> {
  const file = flags.get("token-file");
  if (typeof file === "string") {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      throw new UsageError(`Cannot read the token file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}.`);
    }
    return checkToken(text, `The token file ${file}`);
  }
  if (flags.has("token-stdin")) {
    // Typed at a terminal, the token would be echoed: there, setup asks for it without echo instead.
    if (process.stdin.isTTY) throw new UsageError("--token-stdin reads a pipe or a file; in a terminal, leave it out and setup asks for the token without echoing it.");
    return checkToken(await Bun.stdin.text(), "Standard input");
  }
  return undefined;
}

function checkToken(text: string, from: string): string {
  const token = text.trim();
  if (!token) throw new UsageError(`${from} is empty; it should hold the agent token (the relay's AGENT_TOKEN).`);
  if (/\s/.test(token)) throw new UsageError(`${from} holds more than one word; it should hold only the agent token.`);
  return token;
}

function checkMachineName(name: string): string {
  if (!MachineName.safeParse(name).success) throw new ConfigError(`'${name}' is not a machine name: use 1-64 letters, digits, '.', '_' or '-'.`);
  return name;
}

async function askToken(terminal: Terminal, current: string | undefined): Promise<string> {
  for (;;) {
    const answer = await terminal.ask(`Agent token (the relay's AGENT_TOKEN; typing is hidden)${current ? " [keep the current one]" : ""}: `, true);
    if (!answer && current) return current;
    try {
      return checkToken(answer, "The token");
    } catch (e) {
      console.log((e as Error).message);
    }
  }
}

/** Connects once as the daemon would and says how it went. Never prints the token. */
async function check(config: AgentConfig): Promise<boolean> {
  const running = runningAgent(config.stateDir);
  if (running) {
    console.log(`Note: the agent already running as '${config.machine}' (pid ${running}) gives way to this check and reconnects within a minute.`);
  }
  console.log(`Checking: connecting to ${config.relayUrl} as '${config.machine}'…`);
  const result = await checkConnection(config);
  if (result.ok) {
    console.log(`Connected as '${result.machine}' (relay ${result.serverVersion}).`);
    return true;
  }
  console.error(explainCheck(result, config));
  return false;
}

/** One or two sentences per way the check can fail, each saying what to do. */
export function explainCheck(result: Exclude<CheckResult, { ok: true }>, config: Pick<AgentConfig, "relayUrl" | "machine">): string {
  const url = config.relayUrl;
  const health = new URL("/health", url.replace(/^ws/, "http")).toString();
  switch (result.problem) {
    case "refused":
      return (
        `The relay refused the token (${result.detail}). Use the agent token the relay's owner gave you, exactly as given: ` +
        "the relay's AGENT_TOKEN, or a token made for this one machine, which works only with the machine name it was made for."
      );
    case "unreachable":
      return `Could not reach the relay at ${url} (${result.detail}). Check the address, and that the relay is up: curl ${health}`;
    case "replaced":
      return `Another agent connected as '${config.machine}' during the check (${result.detail}). Every machine needs its own name: pass another with --machine.`;
    case "timeout":
      return `The relay at ${url} accepted the connection but never welcomed this agent (${result.detail}). Is it a Code Remote relay?`;
    case "rejected":
      return `The relay turned the connection away (${result.detail}). Is ${url} a Code Remote relay's /ws/agent address, and does any proxy in front of it pass WebSocket upgrades?`;
  }
}

// --- questions on the terminal ---

/** Questions on the terminal, in raw mode so that a hidden answer (the token) is never echoed; the few editing
 *  keys a one-line answer needs are handled here. Text typed or pasted ahead is kept for the next question. */
class Terminal {
  #ahead = "";

  ask(question: string, hidden = false): Promise<string> {
    const out = (text: string) => process.stdout.write(text);
    const stdin = process.stdin;
    stdin.setRawMode(true); // before the question: whatever is typed once it shows is never echoed by the terminal
    out(question);
    let answer = "";
    return new Promise<string>((resolve, reject) => {
      const done = (error?: Error) => {
        stdin.off("data", onData).off("end", onEnd);
        stdin.setRawMode(false);
        stdin.pause();
        out("\n"); // out of raw mode, the terminal turns it into a line break
        if (error) reject(error);
        else resolve(answer.trim());
      };
      const drain = () => {
        while (this.#ahead) {
          const escape = /^\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|.)?/s.exec(this.#ahead); // arrow keys and the like: ignored
          const key = escape ? escape[0] : this.#ahead[0]!;
          this.#ahead = this.#ahead.slice(key.length);
          if (key === "\r" || key === "\n") {
            if (key === "\r" && this.#ahead.startsWith("\n")) this.#ahead = this.#ahead.slice(1);
            return done();
          }
          if (key === "\x03" || (key === "\x04" && !answer)) return done(new Cancelled()); // Ctrl-C; Ctrl-D on an empty line
          if (key === "\x7f" || key === "\b") {
            if (answer && !hidden) out("\b \b");
            answer = [...answer].slice(0, -1).join("");
          } else if (key === "\x15") {
            if (!hidden) out("\b \b".repeat([...answer].length)); // Ctrl-U: clear the line
            answer = "";
          } else if (key >= " ") {
            answer += key;
            if (!hidden) out(key);
          }
        }
      };
      const onData = (chunk: Buffer) => {
        this.#ahead += chunk.toString("utf8");
        drain();
      };
      const onEnd = () => done(new Cancelled());
      stdin.on("data", onData).on("end", onEnd);
      stdin.resume();
      drain();
    });
  }

  /** Asks until `parse` accepts the answer (Enter takes the default), then returns what it returned. */
  async askValid(label: string, fallback: string | undefined, parse: (answer: string) => string): Promise<string> {
    for (;;) {
      const answer = (await this.ask(`${label}${fallback ? ` [${fallback}]` : ""}: `)) || fallback;
      if (!answer) {
        console.log(`${label.replace(/ \(.*\)$/, "")} is required.`);
        continue;
      }
      try {
        return parse(answer);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        console.log(e.message);
      }
    }
  }

  async confirm(question: string): Promise<boolean> {
    return /^y(es)?$/i.test(await this.ask(`${question} [y/N] `));
  }
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

function run(argv: string[]): Ran {
  if (!Bun.which(argv[0]!)) return { ok: false, output: `${argv[0]} is not installed` };
  const r = Bun.spawnSync(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, output: `${r.stdout.toString()}${r.stderr.toString()}`.trim() };
}

const firstLine = (text: string) => text.split("\n").find((l) => l.trim())?.trim() ?? "";

async function installService(args: string[]): Promise<number> {
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

async function uninstallService(args: string[]): Promise<number> {
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

// --- status ---

const STATUS_HELP = `Usage: code-remote-agent status

Says whether the agent's settings are saved, whether its service is installed, whether the agent is running (its
lock file in the state directory), and whether it is connected to the relay (the status file it keeps there).
Exit status: 0 when the agent is running and connected, 1 otherwise.`;

async function status(args: string[]): Promise<number> {
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

// --- command line ---

type FlagKinds = Record<string, "value" | "switch">;

/** `--name value`, `--name=value` and `--switch`, checked against `kinds`. */
function parseFlags(args: string[], kinds: FlagKinds): Map<string, string | true> {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "-h") {
      flags.set("help", true);
      continue;
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
    const name = match?.[1] ?? "";
    if (name === "token") {
      throw new UsageError("There is no --token: a command line is visible to every user of this machine (ps). Use --token-file FILE or --token-stdin.");
    }
    const kind = kinds[name];
    if (!match || !kind) throw new UsageError(`Unknown argument ${describeArg(arg)}.`);
    if (kind === "switch") {
      if (match[2] !== undefined) throw new UsageError(`--${name} takes no value.`);
      flags.set(name, true);
      continue;
    }
    const value = match[2] ?? args[++i];
    if (value === undefined) throw new UsageError(`--${name} needs a value.`);
    flags.set(name, value);
  }
  return flags;
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  setup,
  "install-service": installService,
  "uninstall-service": uninstallService,
  status,
};

/** What main() in agent.ts hands over to this module. */
export const SUBCOMMANDS = Object.keys(COMMANDS);

/** Runs one subcommand and turns the errors it throws into a message and an exit status: 2 for usage and
 *  settings errors, 130 for a cancelled question. */
export async function runSubcommand(name: string, args: string[]): Promise<number> {
  const prefix = `code-remote-agent ${name}`;
  try {
    return await COMMANDS[name]!(args);
  } catch (e) {
    if (e instanceof Cancelled) {
      console.error("Cancelled; nothing was changed.");
      return 130;
    }
    if (e instanceof UsageError) console.error(`${prefix}: ${e.message} See: ${prefix} --help`);
    else if (e instanceof ConfigError) console.error(`${prefix}: ${e.message}`);
    else throw e;
    return 2;
  }
}
