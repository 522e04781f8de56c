// Reading the relay's audit database directly from a test, as an operator would with sqlite3: integrity, and each
// tool call with its outcome. Reads both layouts: the original `tool_calls` table (a row per call, completed in
// place) and the hash-chained `audit_events` (a call_started and a call_finished event per call). For the audit
// CLI (`bun run server.ts audit …`), see audit.ts beside this file.

import { Database } from "bun:sqlite";
import { createHash } from "node:crypto";

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

/** Makes every audit event of a chain never pruned `days` days old, rehashing it as the relay would have written it
 *  then (so `audit verify` still passes): how a test gets events that retention must prune. Returns how many there are. */
export function ageEvents(file: string, days: number): number {
  return withDatabase(file, (db) => {
    const rows = db.query("SELECT seq, kind, machine, client, call_id, data FROM audit_events ORDER BY seq").all() as {
      seq: number;
      kind: string;
      machine: string | null;
      client: string | null;
      call_id: string | null;
      data: string;
    }[];
    const old = new Date(Date.now() - days * 86_400_000).toISOString();
    let prev = "0".repeat(64);
    for (const row of rows) {
      // The relay's eventHash: SHA-256 of these fields as a JSON array (relay/audit.ts).
      const fields = [row.seq, old, row.kind, row.machine, row.client, row.call_id, row.data, prev];
      const hash = createHash("sha256").update(JSON.stringify(fields)).digest("hex");
      db.query("UPDATE audit_events SET at = ?, prev_hash = ?, hash = ? WHERE seq = ?").run(old, prev, hash, row.seq);
      prev = hash;
    }
    return rows.length;
  });
}
