// The agent's configuration file, ~/.config/code-remote/agent.env: KEY=value lines that setup writes (mode 600,
// never half-written) and the daemon reads under its environment. It holds the agent's token, so a file other
// users can read is refused, and no error message ever shows a value.

import * as fs from "node:fs";
import * as path from "node:path";
import { shellQuote } from "./cli.ts";
import { ConfigError, ENV_HELP, configFilePath, type Env } from "./config.ts";

// Where the file is (configFilePath) is decided in config.ts, which also places the policy beside it; it is
// exported from here too, with the file's other helpers.
export { configFilePath, xdgConfigHome, xdgStateHome, type Env } from "./config.ts";
export type Settings = Record<string, string>;

/** Settings the file may hold: the agent's own (ENV_HELP in config.ts), and AUTH_TOKEN, AGENT_TOKEN's older name. */
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
export const fileOnly = (settings: Settings): Env => ({ ...settings, XDG_STATE_HOME: process.env.XDG_STATE_HOME });

/** The daemon's settings: the configuration file, with every setting the environment sets (non-empty) on top. */
export function withConfigFile(env: Env): Env {
  const fromFile = readSettingsFile(configFilePath(env));
  if (!fromFile) return env;
  return { ...fromFile, ...Object.fromEntries(Object.entries(env).filter(([, value]) => value)) };
}

/** Writes the file so that it is never readable by others and never half-written: the directory 0700, a fresh
 *  temp file created 0600 beside it (O_EXCL), flushed to disk, then renamed over the old file. */
export function writeSettingsFile(file: string, settings: Settings): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700); // our own directory: an older, looser one is tightened
  writePrivately(file, formatSettings(settings));
}

/** Replaces `file` with `text` as one step: a fresh temp file created 0600 beside it (O_EXCL), flushed to disk, then
 *  renamed over the old file, so a reader sees the old file or the new one, never half of it. The directory must exist. */
export function writePrivately(file: string, text: string): void {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
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
