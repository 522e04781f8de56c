// What the agent's subcommands (setup, install-service, uninstall-service, status) share: their errors, flag
// parsing, and how to name this agent in the commands they print.

import * as path from "node:path";

/** A mistake in how a subcommand was called: printed with a pointer to its --help, exit code 2. */
export class UsageError extends Error {}

/** The user pressed Ctrl-C or Ctrl-D at a question. */
export class Cancelled extends Error {}

type FlagKinds = Record<string, "value" | "switch">;

/** `--name value`, `--name=value` and `--switch`, checked against `kinds`. */
export function parseFlags(args: string[], kinds: FlagKinds): Map<string, string | true> {
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

/** An unknown argument as it may be shown: a word or a flag's name, but never text that could be a token typed
 *  in the wrong place. */
export function describeArg(arg: string): string {
  if (/^(--?[a-z][a-z-]*|[a-z][a-z-]{0,30})(=|$)/.test(arg)) return `'${arg.replace(/=.*/s, "=…")}'`;
  return "(not shown, in case it is a secret)";
}

/** A path or word as it can be pasted into a shell. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./~-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** How the user can run this same agent again, for the commands we print. */
export function selfCommand(): string {
  if (!isCompiled()) {
    const script = path.relative(process.cwd(), Bun.main);
    return `bun run ${shellQuote(script.startsWith("..") ? Bun.main : script)}`;
  }
  const name = path.basename(process.execPath);
  return Bun.which(name) === process.execPath ? name : shellQuote(process.execPath);
}

/** A compiled executable runs its code from Bun's embedded file system. */
export const isCompiled = () => Bun.main.startsWith("/$bunfs/");
