// The agent's settings: read once at start from the environment (over the configuration file that setup writes,
// see config-file.ts), checked, and turned into an AgentConfig. The allowed roots are resolved with realpath here,
// once (/tmp is /private/tmp on macOS). A setting that is wrong is a ConfigError whose message says what to fix.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MachineName } from "../protocol.ts";
import { MIN_LOG_BYTES, logger } from "../log.ts";

const log = logger("agent");

/** Log file rotation: 10 MB × 5 files is at most 50 MB of logs, days of a busy agent's calls. */
const LOG_MAX_BYTES = 10 * 1024 * 1024;
const LOG_FILES = 5;

export type Env = Record<string, string | undefined>;

/** XDG_CONFIG_HOME when it is set and absolute (the XDG spec ignores a relative one), else ~/.config. */
export const xdgConfigHome = (env: Env) => (env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(os.homedir(), ".config"));
export const xdgStateHome = (env: Env) => (env.XDG_STATE_HOME && path.isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : path.join(os.homedir(), ".local", "state"));

/** Where setup saves the agent's settings and the daemon reads them: ~/.config/code-remote/agent.env. */
export const configFilePath = (env: Env) => path.join(xdgConfigHome(env), "code-remote", "agent.env");

/** The owner's enrolled passkeys (owner-keys.ts), beside agent.env: `owner-keys` finds them without the other settings. */
export const ownerKeysFilePath = (env: Env) => path.join(path.dirname(configFilePath(env)), "owner-keys.json");

export interface AgentConfig {
  relayUrl: string;
  token: string;
  machine: string;
  /** Real paths of the allowed roots (resolved once at start: /tmp is /private/tmp on macOS). */
  roots: string[];
  home: string;
  shell: string;
  maxConcurrentCommands: number;
  maxBackgroundCommands: number;
  /** Where command records and output logs are kept (one directory per machine name). */
  stateDir: string;
  /** The log file (absolute), rotated by size while running; unset: stderr. */
  log: { file?: string; maxBytes: number; files: number };
  /** The owner's policy (absolute; policy.ts), which may not exist: then everything runs, as before policies. */
  policyFile: string;
  /** The owner's enrolled passkeys (owner-keys.json beside agent.env), which approvals = "passkey" checks against. */
  ownerKeysFile: string;
}

/** Settings the agent reads, from the environment or its configuration file; `--help` prints this table. */
export const ENV_HELP: [string, string][] = [
  ["RELAY_URL", "The relay's agent address, wss://relay.example.com/ws/agent, or its origin (required; not …/mcp)"],
  ["AGENT_TOKEN", "This machine's token (agent-token create NAME on the relay), or the shared one; AUTH_TOKEN if unset (required)"],
  ["MACHINE_NAME", "Name the assistant uses for this machine (default: the host name)"],
  ["ALLOWED_ROOTS", "Directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)"],
  ["MAX_CONCURRENT_COMMANDS", "Foreground commands run at once; more wait in a queue (default 8)"],
  ["MAX_BACKGROUND_COMMANDS", "Background commands run at once; more are refused (default 16)"],
  ["AGENT_STATE_DIR", "Command output and records, and identity.key (default ~/.local/state/code-remote/<machine>; macOS: ~/Library/Application Support/…)"],
  ["SHELL", "Shell for run_shell_command, an absolute path (default: the login shell's $SHELL, else /bin/sh)"],
  ["LOG_FILE", "Log to this file instead of stderr, rotated by size (the service sets it; --log-file FILE too)"],
  ["LOG_MAX_BYTES", `Size at which LOG_FILE is rotated, in bytes (default ${LOG_MAX_BYTES}, at least ${MIN_LOG_BYTES})`],
  ["LOG_FILES", `Log files kept, LOG_FILE included: LOG_FILE.1 is the newest old one (default ${LOG_FILES})`],
  ["POLICY_FILE", "What an assistant may do here: a preset, rules, approvals (default policy.toml beside agent.env; none: everything runs)"],
];

export class ConfigError extends Error {}

/** Reads the agent configuration from the environment. Throws ConfigError with a message that says what to fix. */
export function loadConfig(env: Record<string, string | undefined>): AgentConfig {
  const relayUrl = parseRelayUrl(env.RELAY_URL);
  const token = env.AGENT_TOKEN || env.AUTH_TOKEN;
  if (!token) throw new ConfigError("AGENT_TOKEN (or AUTH_TOKEN) is not set: use the token the relay gave you.");
  const home = os.homedir();
  const machine = env.MACHINE_NAME || defaultMachineName();
  if (!MachineName.safeParse(machine).success) {
    throw new ConfigError(`MACHINE_NAME '${machine}' is not valid: use 1-64 letters, digits, '.', '_' or '-'.`);
  }
  const roots = resolveRoots(env.ALLOWED_ROOTS ? env.ALLOWED_ROOTS.split(":") : [home, "/tmp", "/var/tmp"], home);
  return {
    relayUrl,
    token,
    machine,
    roots,
    home,
    shell: pickShell(env.SHELL),
    maxConcurrentCommands: positiveInteger(env, "MAX_CONCURRENT_COMMANDS", 8),
    maxBackgroundCommands: positiveInteger(env, "MAX_BACKGROUND_COMMANDS", 16),
    stateDir: env.AGENT_STATE_DIR || defaultStateDir(env, home, machine),
    log: {
      file: env.LOG_FILE ? path.resolve(expandHome(env.LOG_FILE, home)) : undefined,
      maxBytes: positiveInteger(env, "LOG_MAX_BYTES", LOG_MAX_BYTES, MIN_LOG_BYTES),
      files: positiveInteger(env, "LOG_FILES", LOG_FILES),
    },
    policyFile: env.POLICY_FILE ? path.resolve(expandHome(env.POLICY_FILE, home)) : path.join(path.dirname(configFilePath(env)), "policy.toml"),
    ownerKeysFile: ownerKeysFilePath(env),
  };
}

function positiveInteger(env: Record<string, string | undefined>, name: string, fallback: number, min = 1): number {
  const value = Number(env[name]?.trim() || fallback); // an empty value (LOG_FILES= in agent.env) is unset
  if (!Number.isInteger(value) || value < min) throw new ConfigError(`${name} must be a whole number of at least ${min}.`);
  return value;
}

const expandHome = (entry: string, home: string) => (entry === "~" ? home : entry.startsWith("~/") ? path.join(home, entry.slice(2)) : entry);

/** Per machine name, so two agents with different names on one host keep their commands apart. */
export function defaultStateDir(env: Record<string, string | undefined>, home: string, machine: string): string {
  const base =
    process.platform === "darwin"
      ? path.join(home, "Library", "Application Support")
      : env.XDG_STATE_HOME || path.join(home, ".local", "state");
  return path.join(base, "code-remote", machine);
}

/** Paths of the relay's MCP endpoints: an address ending in one is what clients use, never what an agent dials. */
const CLIENT_PATHS = /\/(mcp|sse|messages)\/?$/;
const AGENT_PATH = "/ws/agent";

/** Checks RELAY_URL and returns the WebSocket URL to dial. ws:// and wss:// are taken as they are (the origin alone
 *  gets /ws/agent); an http(s):// URL only as the relay's origin or its /ws/agent address, turned into ws(s)://.
 *  A client's address (…/mcp, …/sse) is refused with the right one, not dialled: the relay would answer it with a
 *  401 that reads like a wrong token. */
export function parseRelayUrl(raw: string | undefined): string {
  if (!raw) throw new ConfigError("RELAY_URL is not set: e.g. RELAY_URL=ws://127.0.0.1:8080/ws/agent");
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError("RELAY_URL is not a URL: e.g. RELAY_URL=wss://relay.example.com/ws/agent");
  }
  const web = url.protocol === "https:" || url.protocol === "http:";
  if (!web && url.protocol !== "ws:" && url.protocol !== "wss:") throw new ConfigError("RELAY_URL must start with wss:// (or ws:// on a private network).");
  // A credential in the URL ends up in proxy and server logs; the token travels only in the Authorization header.
  if (url.search || url.username || url.password) {
    throw new ConfigError("RELAY_URL must not carry a query or credentials; the token goes in AGENT_TOKEN.");
  }
  const origin = url.pathname === "/" || url.pathname === "";
  if (CLIENT_PATHS.test(url.pathname) || (web && !origin && !url.pathname.endsWith(AGENT_PATH))) {
    throw new ConfigError(
      `RELAY_URL ${raw} is not the relay's agent address${CLIENT_PATHS.test(url.pathname) ? " (MCP clients use that one)" : ""}: ` +
        `agents connect to /ws/agent over a WebSocket. Use RELAY_URL=${agentAddress(url)}`,
    );
  }
  if (web) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (origin) url.pathname = AGENT_PATH;
  return url.toString();
}

/** The agent address of the relay that `url` (a client's address, or any page of the relay) belongs to. */
function agentAddress(url: URL): string {
  const wsUrl = new URL(url);
  wsUrl.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
  wsUrl.pathname = CLIENT_PATHS.test(url.pathname) ? url.pathname.replace(CLIENT_PATHS, AGENT_PATH) : AGENT_PATH;
  return wsUrl.toString();
}

export function defaultMachineName(): string {
  const name = os.hostname().replace(/\.local$/, "").replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "");
  return name.slice(0, 64) || "machine";
}

/** Resolves each root with realpath once; a root that does not exist is skipped, and none at all is an error. */
function resolveRoots(raw: string[], home: string): string[] {
  const roots: string[] = [];
  for (const entry of raw.map((r) => r.trim()).filter(Boolean)) {
    const expanded = expandHome(entry, home);
    if (!path.isAbsolute(expanded)) throw new ConfigError(`ALLOWED_ROOTS entry '${entry}' is not an absolute path.`);
    try {
      const real = fs.realpathSync(expanded);
      if (!roots.includes(real)) roots.push(real);
    } catch {
      log("warn", "allowed root does not exist; skipped", { root: entry });
    }
  }
  if (roots.length === 0) throw new ConfigError("None of ALLOWED_ROOTS exists; name at least one existing directory.");
  return roots;
}

function pickShell(shell: string | undefined): string {
  if (shell && path.isAbsolute(shell)) {
    try {
      fs.accessSync(shell, fs.constants.X_OK);
      return shell;
    } catch {
      log("warn", "SHELL is not executable; using /bin/sh", { shell });
    }
  }
  return "/bin/sh";
}

/** Whether a relay host is on this machine or a private network (a compose service name, 10/8, 192.168/16,
 *  172.16/12, Tailscale's 100.64/10), where plain ws:// is expected and not worth a warning. */
export function isLocalOrPrivate(url: string): boolean {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  if (host === "localhost" || host === "::1" || !host.includes(".") && !host.includes(":")) return true;
  const [a, b] = host.split(".").map(Number) as [number, number];
  return a === 127 || a === 10 || (a === 192 && b === 168) || (a === 172 && b >= 16 && b <= 31) || (a === 100 && b >= 64 && b <= 127);
}
