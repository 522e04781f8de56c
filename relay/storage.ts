// The relay's one SQLite database (bun:sqlite): the audit log and the credentials it issued. Opened once, in WAL
// mode, shared by the modules that keep tables in it (audit.ts, credentials.ts); each creates its own tables.

import { Database } from "bun:sqlite";
import * as fs from "node:fs";
import * as path from "node:path";

/** Opens (creating if needed) the database at `file`, its directory readable by this user only. */
export function openDatabase(file: string): Database {
  if (file !== ":memory:") fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
  const db = new Database(file, { create: true, strict: true });
  db.run("PRAGMA journal_mode = WAL");
  db.run("PRAGMA busy_timeout = 5000"); // another process (the agent-token CLI) may hold the write lock briefly
  db.run("PRAGMA synchronous = NORMAL"); // WAL + NORMAL survives a process crash; only power loss can drop the tail
  return db;
}
