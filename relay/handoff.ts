// A per-machine token for an agent the relay's own setup starts beside it: `bun run dev`'s local agent, and the
// compose sandbox (PROVISION_AGENT_TOKEN). The relay makes the token itself and leaves it in a file that agent
// reads, so the person running it sets AUTH_TOKEN and nothing else, and that agent never holds a token that
// admits any other machine. The file is kept across restarts: a token it holds that the database still knows
// is used again; otherwise (first start, a wiped database, a revoked token) a new one replaces it.

import * as fs from "node:fs";
import * as path from "node:path";
import { AuditLog } from "./audit.ts";
import { ConfigError } from "./config.ts";
import { AgentTokens } from "./credentials.ts";
import { openDatabase } from "./storage.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** Returns the token `file` holds for `machine` if the database at `databasePath` still admits it with it, else
 *  makes a new one (revoking any older token of that machine, whose clear text nobody can read back) and writes
 *  it to `file` with `mode`. */
export function keepAgentToken(databasePath: string, machine: string, file: string, mode: number): string {
  const kept = readToken(file);
  const db = openDatabase(databasePath);
  try {
    const tokens = new AgentTokens(db);
    if (kept && tokens.verify(kept)?.machine === machine) return kept;
    const replaced = tokens.revoke(machine);
    const token = tokens.create(machine);
    writeToken(file, token, mode);
    new AuditLog(db).event("agent_token_created", { machine, detail: `for the agent beside the relay, in ${file}` });
    log("info", replaced ? "replaced the agent token of the agent beside the relay" : "made an agent token for the agent beside the relay", { machine, file });
    return token;
  } finally {
    db.close();
  }
}

function readToken(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8").trim() || undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read the agent token file ${file}: ${(e as Error).message}`);
  }
}

/** Writes the token so a reader never sees half of it: a fresh temp file beside it, given exactly `mode` (the
 *  umask may have taken bits off), then renamed over the old one. */
function writeToken(file: string, token: string, mode: number): void {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(temp, `${token}\n`, { mode, flag: "wx" });
    fs.chmodSync(temp, mode);
    fs.renameSync(temp, file);
  } catch (e) {
    fs.rmSync(temp, { force: true });
    throw new ConfigError(`cannot write the agent token file ${file}: ${(e as Error).message}. The relay's user must be able to write to ${path.dirname(file)}.`);
  }
}
