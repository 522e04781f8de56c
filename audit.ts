// The relay's audit log in SQLite (WAL): one row per tool call, written when it starts and completed when it
// ends (so a crash leaves an "unfinished" row rather than nothing), and events for agent connections and refused
// authentications. It never holds a token; tools.ts redacts file contents and typed input before they get here.

import type { Database } from "bun:sqlite";

export type CallOutcome = "unfinished" | "ok" | "error" | "timed_out" | "cancelled";

interface CallStart {
  tool: string;
  machine: string | null;
  arguments: Record<string, unknown>;
  client: string;
  session: string | null;
}

interface CallEnd {
  outcome: CallOutcome;
  machine?: string;
  exitCode?: number | null;
  error?: string;
}

/** The audit log in SQLite (WAL). A tool call's row is written when it starts and completed when it ends, so a
 *  crash leaves an "unfinished" row rather than nothing. Written file contents are kept as size + SHA-256 only. */
export class AuditLog {
  readonly #db: Database;
  readonly #insertCall;
  readonly #finishCall;
  readonly #insertEvent;

  constructor(db: Database) {
    this.#db = db;
    this.#db.run(`CREATE TABLE IF NOT EXISTS tool_calls (
      id INTEGER PRIMARY KEY,
      started_at TEXT NOT NULL,
      finished_at TEXT,
      client TEXT NOT NULL,
      session TEXT,
      machine TEXT,
      tool TEXT NOT NULL,
      arguments TEXT NOT NULL,
      outcome TEXT NOT NULL DEFAULT 'unfinished',
      exit_code INTEGER,
      duration_ms INTEGER,
      error TEXT)`);
    this.#db.run(`CREATE TABLE IF NOT EXISTS events (
      id INTEGER PRIMARY KEY,
      at TEXT NOT NULL,
      kind TEXT NOT NULL,
      machine TEXT,
      address TEXT,
      detail TEXT)`);
    this.#insertCall = this.#db.prepare(
      `INSERT INTO tool_calls (started_at, client, session, machine, tool, arguments)
       VALUES ($started_at, $client, $session, $machine, $tool, $arguments) RETURNING id`,
    );
    this.#finishCall = this.#db.prepare(
      `UPDATE tool_calls SET finished_at = $finished_at, outcome = $outcome, machine = coalesce($machine, machine),
       exit_code = $exit_code, duration_ms = $duration_ms, error = $error WHERE id = $id`,
    );
    this.#insertEvent = this.#db.prepare(
      "INSERT INTO events (at, kind, machine, address, detail) VALUES ($at, $kind, $machine, $address, $detail)",
    );
  }

  /** Records the start of a tool call; returns a function that records its end. */
  begin(call: CallStart): (end: CallEnd) => void {
    const started = performance.now();
    const row = this.#insertCall.get({
      started_at: new Date().toISOString(),
      client: call.client,
      session: call.session,
      machine: call.machine,
      tool: call.tool,
      arguments: JSON.stringify(call.arguments),
    }) as { id: number };
    return (end) =>
      this.#finishCall.run({
        id: row.id,
        finished_at: new Date().toISOString(),
        outcome: end.outcome,
        machine: end.machine ?? null,
        exit_code: end.exitCode ?? null,
        duration_ms: Math.round(performance.now() - started),
        error: end.error?.slice(0, 2000) ?? null,
      });
  }

  /** Records an event: agent connects and disconnects, refused authentications. */
  event(kind: string, fields: { machine?: string; address?: string; detail?: string }): void {
    this.#insertEvent.run({
      at: new Date().toISOString(),
      kind,
      machine: fields.machine ?? null,
      address: fields.address ?? null,
      detail: fields.detail ?? null,
    });
  }
}
