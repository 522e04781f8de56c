// Abuse limits on the relay. Penalties: each source address may fail authentication a few times (typos happen);
// after that it must wait, longer with every further failure (as OpenSSH's PerSourcePenalties), and is answered
// 429 with Retry-After until then, right token or not. The relay keeps two of them: one for tokens, and one for
// the owner secret (a password a person types, so the one worth guessing), which only the owner secret itself or
// time clears: a token holder's successful logins must not buy more guesses at it. Call limits: each client (a token's holder) has a number of
// tool calls in flight and a rate per minute, so a runaway loop cannot flood the machines. All state is in memory
// and bounded.

/** Failures an address may make before it has to wait. */
const FREE_FAILURES = 10;
/** The first wait, doubled with each further failure, up to the cap (OpenSSH caps at 600 s too). */
const FIRST_PENALTY_MS = 1_000;
const MAX_PENALTY_MS = 10 * 60 * 1000;
/** An address that has not failed for this long starts afresh. */
const FORGET_AFTER_MS = 60 * 60 * 1000;
/** Addresses remembered at most; the least recently failed are dropped first. */
const MAX_TRACKED_ADDRESSES = 10_000;

/** Sets `key` as the most recent entry of `map` (insertion order = least recent first), dropping the least recent
 *  one beyond MAX_TRACKED_ADDRESSES, so memory stays bounded whatever addresses come. */
function rememberLatest<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_TRACKED_ADDRESSES) map.delete(map.keys().next().value!);
}

interface Record {
  failures: number;
  blockedUntil: number;
  lastFailure: number;
}

export class Penalties {
  readonly #records = new Map<string, Record>(); // insertion order = least recently failed first

  /** Seconds `address` must still wait (0: it may try). */
  retryAfter(address: string, now = Date.now()): number {
    const record = this.#records.get(address);
    if (!record) return 0;
    if (now - record.lastFailure > FORGET_AFTER_MS) {
      this.#records.delete(address);
      return 0;
    }
    return Math.max(0, Math.ceil((record.blockedUntil - now) / 1000));
  }

  /** Counts a failed authentication from `address`. */
  failed(address: string, now = Date.now()): void {
    const record = this.#records.get(address) ?? { failures: 0, blockedUntil: 0, lastFailure: now };
    if (now - record.lastFailure > FORGET_AFTER_MS) record.failures = 0;
    record.failures++;
    record.lastFailure = now;
    const over = record.failures - FREE_FAILURES;
    if (over > 0) record.blockedUntil = now + Math.min(MAX_PENALTY_MS, FIRST_PENALTY_MS * 2 ** Math.min(over - 1, 30));
    rememberLatest(this.#records, address, record);
  }

  /** A success from `address` clears its record. */
  succeeded(address: string): void {
    this.#records.delete(address);
  }
}

/** Says whether something about `key` should be recorded again: once per `windowMs` per key. Keeps refusals that
 *  cost an attacker nothing (an agent dialing from outside the private network) from filling the audit log. */
export class OncePer {
  readonly #last = new Map<string, number>(); // insertion order = least recently recorded first

  constructor(readonly windowMs: number) {}

  due(key: string, now = Date.now()): boolean {
    const last = this.#last.get(key);
    if (last !== undefined && now - last < this.windowMs) return false;
    rememberLatest(this.#last, key, now);
    return true;
  }
}

/** A 429 answer: how long to wait, in the header and in words. */
export function tooManyAttempts(seconds: number, body: (message: string) => Response): Response {
  const response = body(`Too many failed attempts from this address; try again in ${seconds} s.`);
  response.headers.set("Retry-After", String(seconds));
  return response;
}

// --- tool call limits per client ---

export interface CallLimitOptions {
  /** Tool calls one client may have in flight. */
  maxInFlight: number;
  /** Tool calls one client may start per minute (0: no limit). */
  perMinute: number;
}

/** Per-client concurrency and rate (a token bucket refilled continuously). */
export class CallLimits {
  readonly #clients = new Map<string, { inFlight: number; tokens: number; refilledAt: number }>();
  constructor(readonly options: CallLimitOptions) {}

  /** Calls in flight across every client. */
  get inFlight(): number {
    let total = 0;
    for (const state of this.#clients.values()) total += state.inFlight;
    return total;
  }

  /** Takes a slot for one call of `client`: a release function, or a sentence saying why not. */
  acquire(client: string, now = Date.now()): (() => void) | string {
    const { maxInFlight, perMinute } = this.options;
    const state = this.#clients.get(client) ?? { inFlight: 0, tokens: perMinute, refilledAt: now };
    this.#clients.set(client, state);
    if (perMinute > 0) {
      state.tokens = Math.min(perMinute, state.tokens + ((now - state.refilledAt) / 60_000) * perMinute);
      state.refilledAt = now;
    }
    if (state.inFlight >= maxInFlight) {
      return `Too many calls in flight for this client (${maxInFlight}); wait for some to finish.`;
    }
    if (perMinute > 0 && state.tokens < 1) {
      return `Too many calls: this client may start ${perMinute} per minute; wait a few seconds and try again.`;
    }
    if (perMinute > 0) state.tokens -= 1;
    state.inFlight++;
    let released = false;
    return () => {
      if (!released) state.inFlight--;
      released = true;
    };
  }
}
