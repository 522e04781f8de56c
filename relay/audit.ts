// The relay's audit log: an append-only chain of events in SQLite. Each event has a sequence number, the hash of
// the event before it and its own hash (SHA-256 over a canonical encoding of all its fields), so changing,
// deleting or reordering an event breaks the chain at that event, which `audit verify` finds. A tool call is two
// events, written when it starts and when it ends, so a crash leaves a call visibly unfinished rather than missing
// (the next relay to start closes it as interrupted).
// Secrets are never stored: tools.ts redacts file contents and typed input to size and hash, and environment
// values to their names. Old events are pruned after AUDIT_RETENTION_DAYS; the chain stays verifiable from an
// anchor (the last pruned event's hash) that the chain itself confirms.
//
// What the chain does not do: someone who can rewrite the whole database can recompute every hash. The relay
// logs the chain's head now and then, so a rewritten history disagrees with the logs kept elsewhere.

import type { Database } from "bun:sqlite";
import { createHash, randomBytes } from "node:crypto";
import { logger } from "../log.ts";

const log = logger("server");

/** The hash before the first event. */
const GENESIS = "0".repeat(64);
/** Every this many events, the head of the chain goes to the log (evidence kept outside the database). */
const LOG_HEAD_EVERY = 1_000;
/** Rows a query returns at most. */
export const MAX_QUERY_ROWS = 500;

/** "unfinished": no end recorded yet; "interrupted": the relay stopped (a crash, kill -9) before the call ended, so
 *  its result is unknown, and the next relay to start recorded that. */
/** "refused": the machine's policy refused the call, or the owner did not approve it. */
export type CallOutcome = "unfinished" | "ok" | "error" | "timed_out" | "cancelled" | "interrupted" | "refused";

/** The error an interrupted call is closed with: what is known, and what is not. */
const INTERRUPTED_ERROR = "the relay stopped (crashed or was killed) before this call ended; whether it completed is unknown";

interface CallStart {
  tool: string;
  machine: string | null;
  arguments: Record<string, unknown>;
  client: string;
  session: string | null;
  /** The MCP protocol revision the call came in on (2026-07-28, a 2025 session's, 2024-11-05 on /sse). */
  protocol: string | null;
}

interface CallEnd {
  outcome: CallOutcome;
  machine?: string;
  exitCode?: number | null;
  error?: string;
  /** Characters of the result returned to the client. */
  outputBytes?: number;
}

/** One stored event. `data` is the canonical JSON of its details. */
interface EventRow {
  seq: number;
  at: string;
  kind: string;
  machine: string | null;
  client: string | null;
  call_id: string | null;
  data: string;
  prev_hash: string;
  hash: string;
}

/** A tool call as the audit shows it: its start and end events joined. */
export interface CallRecord {
  call_id: string;
  started_at: string;
  finished_at: string | null;
  tool: string;
  machine: string | null;
  client: string | null;
  session: string | null;
  /** Null for calls recorded before the relay noted it. */
  protocol: string | null;
  arguments: Record<string, unknown>;
  outcome: CallOutcome;
  exit_code: number | null;
  duration_ms: number | null;
  output_bytes: number | null;
  error: string | null;
}

/** Anything else: a connection, a refusal, a token made or revoked. */
export interface EventRecord {
  seq: number;
  at: string;
  kind: string;
  machine: string | null;
  detail: Record<string, unknown>;
}

export interface AuditFilter {
  machine?: string;
  tool?: string;
  /** ISO time: only what happened at or after it. */
  since?: string;
  limit?: number;
}

/** Filters for the audit, from query parameters or command-line flags; a string says what is wrong. */
export function auditFilter(params: URLSearchParams): AuditFilter | string {
  const since = params.get("since");
  const sinceIso = since === null ? undefined : parseSince(since);
  if (sinceIso === null) return "since must be a duration such as 30m, 1h or 7d, or an ISO time.";
  const limit = params.get("limit") === null ? undefined : Number(params.get("limit"));
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) return "limit must be a whole number of at least 1.";
  return { machine: params.get("machine") ?? undefined, tool: params.get("tool") ?? undefined, since: sinceIso, limit };
}

/** "30m", "1h", "7d" (ago) or an ISO time, as an ISO time; null when it is neither. A duration longer than the
 *  time since 1970 means the whole log (a Date that far back does not exist). */
function parseSince(value: string, now = Date.now()): string | null {
  const relative = /^(\d+)([smhd])$/.exec(value);
  if (relative) return new Date(Math.max(0, now - Number(relative[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[relative[2] as "s"])).toISOString();
  const time = Date.parse(value);
  return Number.isNaN(time) ? null : new Date(time).toISOString();
}

export type VerifyResult =
  | { ok: true; events: number; head: { seq: number; hash: string } | null; anchor: number | null }
  | { ok: false; events: number; seq: number; reason: string };

/** JSON with object keys sorted at every level: the same value always encodes to the same text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

/** The hash of an event: every stored field but the hash itself, in a fixed order. The fields are numbers, strings and
 *  nulls (`data` is already canonical text), so plain JSON of the array is canonical: the same text canonicalJson
 *  gives, without its replacer's call per element on every event of every tool call. */
export function eventHash(row: Omit<EventRow, "hash">): string {
  const fields = [row.seq, row.at, row.kind, row.machine, row.client, row.call_id, row.data, row.prev_hash];
  return createHash("sha256").update(JSON.stringify(fields)).digest("hex");
}

export class AuditLog {
  readonly #db: Database;
  readonly #last;
  readonly #insert;
  readonly #anchor;
  #appended = 0;

  constructor(db: Database) {
    this.#db = db;
    db.run(`CREATE TABLE IF NOT EXISTS audit_events (
      seq INTEGER PRIMARY KEY,
      at TEXT NOT NULL,
      kind TEXT NOT NULL,
      machine TEXT,
      client TEXT,
      call_id TEXT,
      data TEXT NOT NULL,
      prev_hash TEXT NOT NULL,
      hash TEXT NOT NULL)`);
    // call_id joins a call's two events; no index on time: each one costs every write (the hot path of every tool
    // call), and time filters scan backwards from the newest event, which is where they look anyway.
    db.run("CREATE INDEX IF NOT EXISTS audit_events_call ON audit_events (call_id)");
    // The last pruned event, from which the remaining chain continues (one row, or none before any pruning).
    db.run(`CREATE TABLE IF NOT EXISTS audit_anchor (
      id INTEGER PRIMARY KEY CHECK (id = 1),
      through_seq INTEGER NOT NULL,
      through_hash TEXT NOT NULL)`);
    this.#last = db.query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1");
    this.#anchor = db.query("SELECT through_seq, through_hash FROM audit_anchor WHERE id = 1");
    this.#insert = db.query(
      "INSERT INTO audit_events (seq, at, kind, machine, client, call_id, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
  }

  /** The last event's sequence number and hash, kept to avoid reading it back for every event. */
  #tail: { seq: number; hash: string } | null = null;

  /** Appends one event to the chain with a single insert. Another process writing the same database (the
   *  agent-token command) may have extended the chain meanwhile: then our sequence number is taken, the insert
   *  fails on the primary key, and the tail is read again, so the chain never forks. */
  #append(kind: string, fields: { machine?: string | null; client?: string | null; call_id?: string | null; data: Record<string, unknown> }): void {
    const data = canonicalJson(fields.data);
    for (let attempt = 1; ; attempt++) {
      const tail = this.#tail ?? this.#readTail();
      const row = { seq: tail.seq + 1, at: new Date().toISOString(), kind, machine: fields.machine ?? null, client: fields.client ?? null, call_id: fields.call_id ?? null, data, prev_hash: tail.hash };
      const hash = eventHash(row);
      try {
        this.#insert.run(row.seq, row.at, kind, row.machine, row.client, row.call_id, data, row.prev_hash, hash);
      } catch (e) {
        this.#tail = null;
        if (attempt < 5 && (e as { code?: string }).code === "SQLITE_CONSTRAINT_PRIMARYKEY") continue;
        throw e;
      }
      this.#tail = { seq: row.seq, hash };
      if (++this.#appended % LOG_HEAD_EVERY === 0) log("info", "audit chain head", this.#tail);
      return;
    }
  }

  #readTail(): { seq: number; hash: string } {
    return (this.#last.get() as { seq: number; hash: string } | null) ?? this.#anchorRow();
  }

  #anchorRow(): { seq: number; hash: string } {
    const anchor = this.#anchor.get() as { through_seq: number; through_hash: string } | null;
    return anchor ? { seq: anchor.through_seq, hash: anchor.through_hash } : { seq: 0, hash: GENESIS };
  }

  /** Records the start of a tool call; returns a function that records its end. */
  begin(call: CallStart): (end: CallEnd) => void {
    const started = performance.now();
    const call_id = randomBytes(8).toString("hex");
    this.#append("call_started", {
      machine: call.machine,
      client: call.client,
      call_id,
      data: { tool: call.tool, session: call.session, protocol: call.protocol, arguments: call.arguments },
    });
    return (end) => this.#finish({ call_id, machine: end.machine ?? call.machine, client: call.client }, end, Math.round(performance.now() - started));
  }

  /** Appends a call's end; `durationMs` is null when nobody timed it (an interrupted call). */
  #finish(call: { call_id: string; machine: string | null; client: string | null }, end: CallEnd, durationMs: number | null): void {
    this.#append("call_finished", {
      ...call,
      data: {
        outcome: end.outcome,
        exit_code: end.exitCode ?? null,
        duration_ms: durationMs,
        output_bytes: end.outputBytes ?? null,
        error: end.error?.slice(0, 2000) ?? null,
      },
    });
  }

  /** Calls started and never finished, oldest first. */
  #openCalls(): { seq: number; call_id: string; machine: string | null; client: string | null }[] {
    return this.#db
      .query(`SELECT s.seq, s.call_id, s.machine, s.client FROM audit_events s
              LEFT JOIN audit_events f ON f.call_id = s.call_id AND f.kind = 'call_finished'
              WHERE s.kind = 'call_started' AND f.seq IS NULL ORDER BY s.seq`)
      .all() as never;
  }

  /** Closes every call an earlier relay left open as `interrupted`, by appending its end (the chain stays intact).
   *  Only a relay that has just started and bound its port may call this: nothing is in flight in it yet, so an open
   *  call can only be one a predecessor never finished (it crashed or was killed). Left open, the oldest such call
   *  would hold pruning back for ever. */
  closeInterrupted(): void {
    const open = this.#openCalls();
    for (const { call_id, machine, client } of open) this.#finish({ call_id, machine, client }, { outcome: "interrupted", error: INTERRUPTED_ERROR }, null);
    if (open.length > 0) log("warn", "calls left open by a relay that stopped without finishing them are recorded as interrupted", { calls: open.length });
  }

  /** Records an event: agent connections, refused authentications, path denials, tokens made or revoked. */
  event(kind: string, fields: { machine?: string; address?: string; detail?: string; client?: string }): void {
    const data: Record<string, unknown> = {};
    if (fields.address !== undefined) data.address = fields.address;
    if (fields.detail !== undefined) data.detail = fields.detail;
    this.#append(kind, { machine: fields.machine, client: fields.client, data });
  }

  /** Tool calls, newest first, with their outcome ("unfinished" when no end was recorded). */
  calls(filter: AuditFilter = {}): CallRecord[] {
    const where = ["s.kind = 'call_started'"];
    const params: (string | number)[] = [];
    if (filter.machine) (where.push("coalesce(f.machine, s.machine) = ?"), params.push(filter.machine));
    if (filter.tool) (where.push("json_extract(s.data, '$.tool') = ?"), params.push(filter.tool));
    if (filter.since) (where.push("s.at >= ?"), params.push(filter.since));
    const rows = this.#db
      .query(
        `SELECT s.call_id, s.at AS started_at, f.at AS finished_at, coalesce(f.machine, s.machine) AS machine, s.client,
                s.data AS start_data, f.data AS end_data
         FROM audit_events s LEFT JOIN audit_events f ON f.call_id = s.call_id AND f.kind = 'call_finished'
         WHERE ${where.join(" AND ")} ORDER BY s.seq DESC LIMIT ?`,
      )
      .all(...params, limitOf(filter)) as { call_id: string; started_at: string; finished_at: string | null; machine: string | null; client: string | null; start_data: string; end_data: string | null }[];
    return rows.map((r) => {
      const start = JSON.parse(r.start_data);
      const end = r.end_data ? JSON.parse(r.end_data) : {};
      return {
        call_id: r.call_id,
        started_at: r.started_at,
        finished_at: r.finished_at,
        tool: start.tool,
        machine: r.machine,
        client: r.client,
        session: start.session ?? null,
        protocol: start.protocol ?? null,
        arguments: start.arguments ?? {},
        outcome: end.outcome ?? "unfinished",
        exit_code: end.exit_code ?? null,
        duration_ms: end.duration_ms ?? null,
        output_bytes: end.output_bytes ?? null,
        error: end.error ?? null,
      };
    });
  }

  /** Events other than tool calls, newest first. */
  events(filter: AuditFilter = {}): EventRecord[] {
    const where = ["kind NOT IN ('call_started', 'call_finished')"];
    const params: (string | number)[] = [];
    if (filter.machine) (where.push("machine = ?"), params.push(filter.machine));
    if (filter.since) (where.push("at >= ?"), params.push(filter.since));
    const rows = this.#db
      .query(`SELECT seq, at, kind, machine, data FROM audit_events WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT ?`)
      .all(...params, limitOf(filter)) as { seq: number; at: string; kind: string; machine: string | null; data: string }[];
    return rows.map((r) => ({ seq: r.seq, at: r.at, kind: r.kind, machine: r.machine, detail: JSON.parse(r.data) }));
  }

  /** Walks the whole chain: the first event that is missing, out of order or changed, or the head if all is well. */
  verify(): VerifyResult {
    const anchor = this.#anchor.get() as { through_seq: number; through_hash: string } | null;
    let expected = anchor ? { seq: anchor.through_seq + 1, prev: anchor.through_hash } : { seq: 1, prev: GENESIS };
    let events = 0;
    let anchorConfirmed = !anchor;
    let head: { seq: number; hash: string } | null = null;
    for (const row of this.#db.query("SELECT * FROM audit_events ORDER BY seq").iterate() as IterableIterator<EventRow>) {
      events++;
      if (row.seq !== expected.seq) return broken(events, expected.seq, `event ${expected.seq} is missing (the next one stored is ${row.seq})`);
      if (row.prev_hash !== expected.prev) return broken(events, row.seq, `event ${row.seq} does not follow event ${row.seq - 1}: one of them was changed, removed or moved`);
      if (eventHash(row) !== row.hash) return broken(events, row.seq, `event ${row.seq} was changed after it was written`);
      if (anchor && row.kind === "audit_pruned") anchorConfirmed ||= prunedThrough(row, anchor.through_seq, anchor.through_hash);
      expected = { seq: row.seq + 1, prev: row.hash };
      head = { seq: row.seq, hash: row.hash };
    }
    if (!anchorConfirmed) return broken(events, anchor!.through_seq, "the pruning anchor is not confirmed by an audit_pruned event in the chain");
    return { ok: true, events, head, anchor: anchor?.through_seq ?? null };
  }

  /** Deletes events older than `days` days; the chain goes on from an anchor (the last deleted event's hash), which
   *  an audit_pruned event records in the chain itself. A call is never cut in half: only events before the oldest
   *  unfinished call's start go. Returns how many were deleted. */
  prune(days: number, now = Date.now()): number {
    const cutoff = new Date(now - days * 86_400_000).toISOString();
    const oldestOpen = this.#openCalls()[0]?.seq ?? Number.MAX_SAFE_INTEGER;
    const through = this.#db
      .query("SELECT seq, hash FROM audit_events WHERE at < ? AND seq < ? ORDER BY seq DESC LIMIT 1")
      .get(cutoff, oldestOpen) as { seq: number; hash: string } | null;
    if (!through) return 0;
    const deleted = this.#db
      .transaction(() => {
        const count = this.#db.query("DELETE FROM audit_events WHERE seq <= ?").run(through.seq).changes;
        this.#db.query("INSERT OR REPLACE INTO audit_anchor (id, through_seq, through_hash) VALUES (1, ?, ?)").run(through.seq, through.hash);
        return count;
      })
      .immediate();
    this.#append("audit_pruned", { data: { through_seq: through.seq, through_hash: through.hash, deleted, retention_days: days } });
    log("info", "audit events pruned", { deleted, through_seq: through.seq, retention_days: days });
    return deleted;
  }
}

const limitOf = (filter: AuditFilter) => Math.min(Math.max(1, filter.limit ?? 50), MAX_QUERY_ROWS);

const broken = (events: number, seq: number, reason: string): VerifyResult => ({ ok: false, events, seq, reason });

function prunedThrough(row: EventRow, seq: number, hash: string): boolean {
  const data = JSON.parse(row.data) as { through_seq?: number; through_hash?: string };
  return data.through_seq === seq && data.through_hash === hash;
}
