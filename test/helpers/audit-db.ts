// Reading the relay's audit database directly from a test, as an operator would with sqlite3: integrity, and each
// tool call with its outcome. Reads both layouts: the original `tool_calls` table (a row per call, completed in
// place) and the hash-chained `audit_events` (a call_started and a call_finished event per call). For the audit
// CLI (`bun run server.ts audit …`), see audit.ts beside this file.

import { Database } from "bun:sqlite";

export interface AuditedCall {
  tool: string;
  /** The arguments as stored (JSON text), for finding a call by a marker it carried. */
  arguments: string;
  /** "unfinished" until the call's end was recorded. */
  outcome: string;
  finished: boolean;
  error: string | null;
}

function withDatabase<T>(file: string, read: (db: Database) => T): T {
  // Read-write but only read: a read-only connection cannot replay a WAL left by a crashed writer.
  const db = new Database(file, { create: false });
  try {
    db.run("PRAGMA busy_timeout = 5000");
    return read(db);
  } finally {
    db.close();
  }
}

/** `PRAGMA integrity_check`: "ok", or what is wrong. */
export function integrityCheck(file: string): string {
  return withDatabase(file, (db) => (db.query("PRAGMA integrity_check").all() as { integrity_check: string }[]).map((r) => r.integrity_check).join("; "));
}

/** Every tool call recorded in the database at `file`, oldest first. */
export function auditedCalls(file: string): AuditedCall[] {
  return withDatabase(file, (db) => {
    const tables = new Set((db.query("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((t) => t.name));
    if (tables.has("audit_events")) {
      const rows = db
        .query(
          `SELECT s.data AS start_data, f.data AS end_data FROM audit_events s
           LEFT JOIN audit_events f ON f.call_id = s.call_id AND f.kind = 'call_finished'
           WHERE s.kind = 'call_started' ORDER BY s.seq`,
        )
        .all() as { start_data: string; end_data: string | null }[];
      return rows.map((r) => {
        const start = JSON.parse(r.start_data) as { tool: string; arguments?: unknown };
        const end = r.end_data ? (JSON.parse(r.end_data) as { outcome?: string; error?: string | null }) : null;
        return {
          tool: start.tool,
          arguments: JSON.stringify(start.arguments ?? {}),
          outcome: end?.outcome ?? "unfinished",
          finished: end !== null,
          error: end?.error ?? null,
        };
      });
    }
    if (tables.has("tool_calls")) {
      const rows = db.query("SELECT tool, arguments, outcome, finished_at, error FROM tool_calls ORDER BY id").all() as {
        tool: string;
        arguments: string;
        outcome: string;
        finished_at: string | null;
        error: string | null;
      }[];
      return rows.map((r) => ({ tool: r.tool, arguments: r.arguments, outcome: r.outcome, finished: r.finished_at !== null, error: r.error }));
    }
    throw new Error(`no audit table in ${file}: found ${[...tables].join(", ") || "none"}`);
  });
}

/** The recorded calls whose arguments contain `marker`. */
export const callsWith = (file: string, marker: string) => auditedCalls(file).filter((c) => c.arguments.includes(marker));
