// Abuse limits on the relay. Penalties: each source address may fail authentication a few times (typos happen);
// after that its failures must wait, longer with every further one (as OpenSSH's PerSourcePenalties), and are
// answered 429 with Retry-After until then. An IPv6 address counts as its whole /64 (addressKey), which one home or
// one server holds. The relay keeps two kinds. For tokens (AUTH_TOKEN, OAuth and agent tokens: too long to guess),
// a right token is checked first and always served: the wait slows only the failures, so one misconfigured client
// behind the owner's address locks nobody out. For the owner secret (a password a person types, so the one worth
// guessing), a waiting address is refused before its guess is looked at; only the right secret or time clears the
// wait (a token holder's successful logins must not buy more guesses), and a global limit stops an attacker with
// many addresses: once too many guesses fail from everywhere together, an address that has failed lately must wait
// until they die down, while one that has not (the owner) still gets its try. Failures are logged and audited as
// counts (FailureRecords), not one row per guess. Call limits: each client (a token's holder) has a number of
// tool calls in flight and a rate per minute, so a runaway loop cannot flood the machines. All state is in memory
// and bounded.

import type { AuditLog } from "./audit.ts";
import { addressBytes } from "./networks.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** Failures an address may make before it has to wait. */
const FREE_FAILURES = 10;
/** The first wait, doubled with each further failure, up to the cap (OpenSSH caps at 600 s too). */
const FIRST_PENALTY_MS = 1_000;
const MAX_PENALTY_MS = 10 * 60 * 1000;
/** An address that has not failed for this long starts afresh. */
const FORGET_AFTER_MS = 60 * 60 * 1000;
/** Addresses remembered at most; the least recently failed are dropped first. */
const MAX_TRACKED_ADDRESSES = 10_000;

/** The owner secret's global limit: this many wrong guesses from all addresses together within the window put every
 *  address that has failed lately on hold until the window has passed since the oldest of them. One address alone
 *  cannot reach it (its own waits allow about twenty failures in that time), so a typing owner never trips it. */
export const OWNER_SECRET_GLOBAL_LIMIT: GlobalLimit = { failures: 30, windowMs: 15 * 60 * 1000 };

/** The key per-address limits count under: an IPv4 address as it is, an IPv6 address as its /64 (a home, a phone or
 *  a cloud server is given a whole /64 and may use any address in it), anything else (no address) as it is. */
export function addressKey(address: string): string {
  const bytes = addressBytes(address);
  if (!bytes) return address;
  if (bytes.length === 4) return bytes.join(".");
  const words = [0, 2, 4, 6].map((i) => ((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return `${words.join(":")}::/64`;
}

/** Sets `key` as the most recent entry of `map` (insertion order = least recent first), dropping the least recent
 *  ones beyond `maxEntries` (MAX_TRACKED_ADDRESSES by default), so memory stays bounded whatever keys come. */
export function rememberLatest<V>(map: Map<string, V>, key: string, value: V, maxEntries = MAX_TRACKED_ADDRESSES): void {
  map.delete(key);
  map.set(key, value);
  while (map.size > maxEntries) map.delete(map.keys().next().value!);
}

interface Record {
  failures: number;
  blockedUntil: number;
  lastFailure: number;
}

/** Failures from all addresses together, beyond which those that failed lately must wait (see Penalties). */
export interface GlobalLimit {
  failures: number;
  windowMs: number;
}

/** What failed, for the log and the audit: the route and why. */
export interface Failure {
  path: string;
  reason: string;
}

export class Penalties {
  readonly #byAddress = new Map<string, Record>(); // by addressKey; insertion order = least recently failed first
  /** When the last `global.failures` failures happened, oldest first (only with a global limit). */
  readonly #latestFailures: number[] = [];

  constructor(
    readonly records: FailureRecords,
    readonly global?: GlobalLimit,
  ) {}

  /** Seconds `address` must still wait (0: it may try). An address with no recent failure never waits. */
  retryAfter(address: string, now = Date.now()): number {
    const record = this.#current(addressKey(address), now);
    if (!record) return 0;
    return Math.max(0, Math.ceil(Math.max(record.blockedUntil - now, this.#globalWaitMs(now)) / 1000));
  }

  /** A failed authentication from `address`: recorded, and counted unless the address is already waiting (a failure
   *  then does not lengthen its wait). Returns the seconds it must still wait: 0 means answer 401, more means 429. */
  failed(address: string, what: Failure, now = Date.now()): number {
    this.records.record(address, what, now);
    const wait = this.retryAfter(address, now);
    if (wait === 0) this.#count(addressKey(address), now);
    return wait;
  }

  /** The right owner secret from `address` clears its record. */
  succeeded(address: string): void {
    this.#byAddress.delete(addressKey(address));
  }

  #count(key: string, now: number): void {
    const record = this.#current(key, now) ?? { failures: 0, blockedUntil: 0, lastFailure: now };
    record.failures++;
    record.lastFailure = now;
    const over = record.failures - FREE_FAILURES;
    if (over > 0) record.blockedUntil = now + Math.min(MAX_PENALTY_MS, FIRST_PENALTY_MS * 2 ** Math.min(over - 1, 30));
    rememberLatest(this.#byAddress, key, record);
    if (this.global) {
      this.#latestFailures.push(now);
      if (this.#latestFailures.length > this.global.failures) this.#latestFailures.shift();
    }
  }

  /** The record of `key`, unless it has not failed for FORGET_AFTER_MS (then it is forgotten). */
  #current(key: string, now: number): Record | undefined {
    const record = this.#byAddress.get(key);
    if (!record || now - record.lastFailure <= FORGET_AFTER_MS) return record;
    this.#byAddress.delete(key);
    return undefined;
  }

  /** How long the global limit still holds: until the oldest of the last `failures` failures leaves the window. */
  #globalWaitMs(now: number): number {
    if (!this.global || this.#latestFailures.length < this.global.failures) return 0;
    return this.#latestFailures[0]! + this.global.windowMs - now;
  }
}

/** How often repeated failures are written as counts (FailureRecords.flush), and how long after an address's failure
 *  of one kind is written on its own line and row the next of that kind from it is only counted. */
export const FAILURE_SUMMARY_MS = 10 * 60 * 1000;
/** Failures written on their own line and row per FAILURE_SUMMARY_MS at most; beyond that they are counted together. */
const OWN_ROWS_PER_SUMMARY = 200;

/** Failures of one kind counted since the last flush: from one address, or from those not written one by one. */
interface Repeats extends Failure {
  /** The addressKey, or undefined for the addresses beyond OWN_ROWS_PER_SUMMARY. */
  from?: string;
  count: number;
  since: number;
  /** The addresses they came from (for those not written one by one), up to MAX_TRACKED_ADDRESSES. */
  addresses: Set<string>;
}

/** How failed authentications reach the log and the audit log without a row per guess: the first failure of a kind
 *  (route and reason) from an address gets its own line and `auth_refused` row; the next ones of that kind from it in
 *  FAILURE_SUMMARY_MS are counted, and flush() (every FAILURE_SUMMARY_MS, and when the relay stops) writes one
 *  `auth_refused_repeated` line and row per address and kind: "N more in the last M min". At most
 *  OWN_ROWS_PER_SUMMARY rows of their own are written per period; failures beyond them are counted per kind, with
 *  how many addresses they came from. So the log stays honest (every failure is in a row or a count) and bounded. */
export class FailureRecords {
  /** When each address's failure of each kind was last written on its own, by addressKey and kind. */
  readonly #written = new Map<string, number>();
  readonly #repeats = new Map<string, Repeats>();
  #ownRowsLeft = OWN_ROWS_PER_SUMMARY;

  constructor(readonly audit: AuditLog) {}

  record(address: string, what: Failure, now = Date.now()): void {
    const key = addressKey(address);
    const kind = `${what.path}: ${what.reason}`;
    const written = this.#written.get(`${key} ${kind}`);
    const repeat = written !== undefined && now - written < FAILURE_SUMMARY_MS;
    if (!repeat && this.#ownRowsLeft > 0) {
      this.#ownRowsLeft--;
      rememberLatest(this.#written, `${key} ${kind}`, now);
      log("warn", "authentication refused", { path: what.path, address, reason: what.reason });
      this.audit.event("auth_refused", { address, detail: kind });
      return;
    }
    const from = repeat ? key : undefined;
    const id = `${from ?? "*"} ${kind}`;
    const repeats = this.#repeats.get(id) ?? { ...what, from, count: 0, since: now, addresses: new Set<string>() };
    repeats.count++;
    if (repeats.addresses.size < MAX_TRACKED_ADDRESSES) repeats.addresses.add(key);
    this.#repeats.set(id, repeats);
  }

  /** Writes the counted failures, one line and row per address and kind, and starts a new period. */
  flush(now = Date.now()): void {
    for (const { path, reason, from, count, since, addresses } of this.#repeats.values()) {
      const minutes = Math.max(1, Math.ceil((now - since) / 60_000));
      const whence = from ? "" : ` from ${addresses.size}${addresses.size === MAX_TRACKED_ADDRESSES ? " or more" : ""} addresses not recorded one by one`;
      const source = from ? { address: from } : { addresses_not_recorded_one_by_one: addresses.size };
      log("warn", "authentication refused, repeatedly", { path, ...source, reason, count, minutes });
      this.audit.event("auth_refused_repeated", { address: from, detail: `${path}: ${reason}: ${count} more${whence} in the last ${minutes} min` });
    }
    this.#repeats.clear();
    this.#ownRowsLeft = OWN_ROWS_PER_SUMMARY;
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
