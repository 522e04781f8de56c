// The relay's one SQLite database (bun:sqlite): the audit log and the credentials it issued. Opened once, in WAL
// mode, shared by the modules that keep tables in it (audit.ts, credentials.ts); each creates its own tables.

import { Database } from "bun:sqlite";
import * as fs from "node:fs";
import * as path from "node:path";

/** Opens (creating if needed) the database at `file`: its directory and its files readable by this user only. */
export function openDatabase(file: string): Database {
  if (file !== ":memory:") makePrivate(file);
  const db = new Database(file, { create: true, strict: true });
  db.run("PRAGMA journal_mode = WAL");
  db.run("PRAGMA busy_timeout = 5000"); // another process (the agent-token CLI) may hold the write lock briefly
  db.run("PRAGMA synchronous = NORMAL"); // WAL + NORMAL survives a process crash; only power loss can drop the tail
  if (file !== ":memory:") for (const companion of [`${file}-wal`, `${file}-shm`]) narrowIfPresent(companion);
  return db;
}

/** The database holds the audit log and credential hashes, so it is 0600 whatever the umask or the directory: it is
 *  made (or narrowed) before SQLite opens it, since SQLite gives the -wal and -shm files it creates the database
 *  file's own mode. Companions left wider by an older relay are narrowed after the open. */
function makePrivate(file: string): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
  fs.closeSync(fs.openSync(file, "a", 0o600));
  fs.chmodSync(file, 0o600); // the umask may have taken bits off (or the file was older and wider)
}

function narrowIfPresent(file: string): void {
  try {
    fs.chmodSync(file, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}
