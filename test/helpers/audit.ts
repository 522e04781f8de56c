// The audit log as a user reads it: `bun run server.ts audit …` against a relay's database (and the relay's other
// subcommands, run the same way).

import * as path from "node:path";
import { NEUTRAL_CWD, ROOT } from "./processes.ts";

export const auditCli = (databasePath: string, ...args: string[]) => relayCommand(databasePath, "audit", ...args);

/** One of the relay's subcommands (audit, oauth-clients, …) against the database at `databasePath`, as the owner runs it. */
export function relayCommand(databasePath: string, ...argv: string[]) {
  const result = Bun.spawnSync([process.execPath, "run", path.join(ROOT, "server.ts"), ...argv], {
    cwd: NEUTRAL_CWD,
    env: { PATH: process.env.PATH!, DATABASE_PATH: databasePath },
  });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

/** Recent tool calls (newest first), as `audit --json` gives them. */
export const callsOf = (databasePath: string, ...args: string[]) => JSON.parse(auditCli(databasePath, "--json", "--limit", "500", ...args).stdout).calls as any[];

/** Recent events other than calls (newest first), as `audit --json --events` gives them. */
export const eventsOf = (databasePath: string, ...args: string[]) => JSON.parse(auditCli(databasePath, "--json", "--events", "--limit", "500", ...args).stdout).events as any[];
