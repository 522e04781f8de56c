// The Code Remote agent: a daemon on each machine that dials out to the relay over a WebSocket (it opens no
// port), runs shell commands with Bun.spawn in their own process group, and reads and writes files inside an
// allowlist of directories. The allowlist confines the file tools only: run_shell_command runs anything the
// agent's user can run. Every frame from the relay is treated as untrusted input and validated with the
// schemas in protocol.ts. Compiled with `bun build --compile` into one executable per OS and architecture.
//
// This file is the entry point: the command line, the subcommands, and the daemon's start and stop. The parts
// live in agent/ (its README.md lists them in reading order).

import { CloseCode, VERSION } from "./protocol.ts";
import { Gatekeeper } from "./agent/approvals.ts";
import { Cancelled, describeArg, UsageError } from "./agent/cli.ts";
import { CommandRunner } from "./agent/commands.ts";
import { ConfigError, ENV_HELP, isLocalOrPrivate, loadConfig, type AgentConfig } from "./agent/config.ts";
import { configFilePath, withConfigFile } from "./agent/config-file.ts";
import { enrollOwner, ownerKeys } from "./agent/enroll.ts";
import { loadIdentity, type Identity } from "./agent/identity.ts";
import { runForever, type Runtime } from "./agent/link.ts";
import { installService, uninstallService } from "./agent/service.ts";
import { setup } from "./agent/setup.ts";
import { OwnerKeys } from "./agent/owner-keys.ts";
import { relayIdentity } from "./agent/passkeys.ts";
import { PolicySource } from "./agent/policy.ts";
import { lockStateDir, recordStatus } from "./agent/state.ts";
import { status } from "./agent/status.ts";
import { logToFile, logger } from "./log.ts";

const log = logger("agent");

/** A function, not a constant: it names the configuration file, which depends on the environment. */
const usage = () => `code-remote-agent ${VERSION}: lets an AI assistant run commands and edit files on this machine,
through a Code Remote relay. It dials out to the relay; it opens no port.

Usage:
  code-remote-agent [--log-file FILE]   run the agent (what the service runs)
  code-remote-agent setup               ask for the relay URL, token and machine name, check them, save them
  code-remote-agent install-service     keep the agent running: launchd (macOS) or a systemd user unit (Linux)
  code-remote-agent uninstall-service   stop and remove that service
  code-remote-agent status              installed? running? connected?
  code-remote-agent enroll-owner        pair your passkey with this machine, to sign approvals (approvals = "passkey")
  code-remote-agent owner-keys          list the passkeys enrolled here, or remove one
  code-remote-agent COMMAND --help      what a command does and its flags
  code-remote-agent --version

Getting started: code-remote-agent setup && code-remote-agent install-service && code-remote-agent status

Configuration: the file setup writes (KEY=value lines, mode 600), ${configFilePath(process.env)};
environment variables override it (and so does a .env file in the working directory, under bun run):
${ENV_HELP.map(([k, v]) => `  ${k.padEnd(24)} ${v}`).join("\n")}

Identity: at its first start the agent makes a key, identity.key in its state directory (AGENT_STATE_DIR). The
relay pins it to the machine name, and no other agent can take that name. If the key is lost (a reinstall), the
relay's owner gives the name back with: bun run server.ts machine-key unpin NAME

Policy: the owner decides here what an assistant may do: POLICY_FILE (policy.toml beside the settings file) says for
each call allow, ask (wait for the owner's approval on the relay's dashboard or API) or deny, by tool, by path and
by command; a file holding only preset = "ask-to-change" ("open", "read-only") is a whole policy. No file: open,
everything runs. setup writes one; it is re-read when it changes. docs/SETUP.md explains the format.

Security: run_shell_command runs anything this user can run, unless the policy holds it for approval or refuses
it. Only the file tools are confined to ALLOWED_ROOTS. Commands can read this agent's own credentials like any
secret of this user; for real isolation run the sandboxed Docker agent.`;

// --- subcommands ---

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  setup,
  "install-service": installService,
  "uninstall-service": uninstallService,
  status,
  "enroll-owner": enrollOwner,
  "owner-keys": ownerKeys,
};

const SUBCOMMANDS = Object.keys(COMMANDS);

/** Runs one subcommand and turns the errors it throws into a message and an exit status: 2 for usage and
 *  settings errors, 130 for a cancelled question. */
async function runSubcommand(name: string, args: string[]): Promise<number> {
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

// --- the daemon ---

/** Stops cleanly: running commands are killed (TERM, then KILL to each whole group), the socket is closed. */
async function shutdown(rt: Runtime, signal: string): Promise<never> {
  log("info", "stopping", { signal, running_commands: rt.commands.running });
  rt.stopping.abort();
  recordStatus(rt.config, "stopped");
  await rt.commands.stopAll();
  rt.closeConnection?.(CloseCode.normal, "agent stopping");
  process.exit(0);
}

/** A process that starts an agent as its child and wants it gone with it (`bun run dev`, the test helpers) puts its
 *  own pid in CODE_REMOTE_PARENT_PID: if that parent dies without stopping the agent (kill -9, a crash), the agent
 *  stops too instead of lingering and holding the machine's name. */
function stopWithParent(rt: Runtime, parent: number): void {
  if (!Number.isInteger(parent) || parent <= 0) return;
  const watch = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(watch);
    void shutdown(rt, "the dev server exited");
  }, 1_000);
  watch.unref();
}

/** The daemon's only flag, `--log-file FILE` (or `--log-file=FILE`), as the setting it overrides; or what is
 *  wrong with the arguments. */
function parseDaemonArgs(argv: string[]): { LOG_FILE?: string } | string {
  const settings: { LOG_FILE?: string } = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const inline = arg.startsWith("--log-file=") ? arg.slice("--log-file=".length) : undefined;
    if (arg !== "--log-file" && inline === undefined) return `unknown argument ${describeArg(arg)}.`;
    const file = inline ?? argv[++i];
    if (!file) return "--log-file needs a file.";
    settings.LOG_FILE = file;
  }
  return settings;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command && SUBCOMMANDS.includes(command)) return runSubcommand(command, rest);
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(usage());
    return 0;
  }
  if (argv.includes("--version")) {
    console.log(VERSION);
    return 0;
  }
  const flags = parseDaemonArgs(argv);
  if (typeof flags === "string") {
    console.error(`code-remote-agent: ${flags} See --help.`);
    return 2;
  }
  let config: AgentConfig;
  try {
    // The file setup wrote, under the environment: a variable that is set wins, and --log-file wins over both.
    config = loadConfig({ ...withConfigFile(process.env), ...flags });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote-agent: ${e.message} See --help.`);
    return 2;
  }
  if (config.log.file) {
    try {
      logToFile(config.log.file, config.log);
    } catch (e) {
      console.error(`code-remote-agent: cannot write the log file ${config.log.file}: ${(e as Error).message}`);
      return 2;
    }
    // The last line on stderr, so whoever started it by hand knows where the rest went.
    console.error(`code-remote-agent: logging to ${config.log.file}`);
  }
  if (config.relayUrl.startsWith("ws:") && !isLocalOrPrivate(config.relayUrl)) {
    log("warn", "RELAY_URL is ws:// to a public host: the token travels unencrypted; use wss://");
  }
  let commands: CommandRunner;
  let identity: Identity;
  let gate: Gatekeeper;
  try {
    gate = new Gatekeeper(new PolicySource(config.policyFile, config.home), config.machine, { keys: new OwnerKeys(config.ownerKeysFile), relay: relayIdentity(config.relayUrl) });
    lockStateDir(config);
    identity = await loadIdentity(config.stateDir);
    commands = new CommandRunner({
      stateDir: config.stateDir,
      machine: config.machine,
      maxForeground: config.maxConcurrentCommands,
      maxBackground: config.maxBackgroundCommands,
    });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    console.error(`code-remote-agent: ${e.message}`);
    return 2;
  }
  if (identity.created) log("info", "made this machine's identity key; the relay pins it to the machine name at the first connection", { state_dir: config.stateDir });
  log("info", "starting", { version: VERSION, machine: config.machine, roots: config.roots, shell: config.shell, policy: gate.summary().preset, public_key: identity.publicKey });
  recordStatus(config, "connecting");
  const recovered = commands.recover();
  if (recovered.commandsLost > 0) {
    log("warn", "commands left running by a previous agent were killed", { commands: recovered.commandsLost, processes: recovered.orphansKilled });
  }
  const rt: Runtime = { config, identity, commands, gate, stopping: new AbortController() };
  process.on("SIGINT", () => void shutdown(rt, "SIGINT"));
  process.on("SIGTERM", () => void shutdown(rt, "SIGTERM"));
  stopWithParent(rt, Number(process.env.CODE_REMOTE_PARENT_PID));
  await runForever(rt);
  return 0;
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
