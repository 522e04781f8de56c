// The owner's enrolled passkeys: owner-keys.json in the agent's config directory, beside agent.env (so no file tool
// reaches it), mode 600. enroll-owner adds to it and `owner-keys remove` takes from it while the daemon runs; the
// daemon re-reads it whenever its stat changes, so an enrolment counts at once. Every write replaces the whole file
// in one step (config-file.ts writePrivately). A file that cannot be read is an error, never an empty list: with
// approvals = "passkey" that only refuses calls, but silently dropping keys would hide a damaged or tampered file.

import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { ConfigError } from "./config.ts";
import { writePrivately } from "./config-file.ts";
import { PasskeyError, type OwnerKey } from "./passkeys.ts";

const b64url = z.string().min(1).max(1024).regex(/^[A-Za-z0-9_-]+$/, "base64url");

const OwnerKeyEntry = z.object({
  id: b64url,
  public_key: z.string().min(1).max(16_384).regex(/^[A-Za-z0-9_-]+$/, "base64url"),
  counter: z.number().int().min(0).max(2 ** 32 - 1),
  fingerprint: z.string().regex(/^[0-9a-f]{4}( [0-9a-f]{4}){7}$/, "8 groups of 4 hex digits"),
  label: z.string().max(100),
  rp_id: z.string().max(255),
  origin: z.string().max(2048),
  added_at: z.string().max(64),
  transports: z.array(z.string().max(32)).max(16).optional(),
});

const OwnerKeysFile = z.object({ keys: z.array(OwnerKeyEntry).max(100) });

/** Shortest part of a credential id that `remove` takes: what `owner-keys` lists is longer. */
const MIN_ID_PREFIX = 8;

/** The owner's enrolled passkeys, in `file` (owner-keys.json beside agent.env, mode 600), re-read when it changes.
 *  A file that is there but cannot be used (not JSON, wrong shape, writable by other users) throws ConfigError with
 *  what to do; no file is no key. */
export class OwnerKeys {
  readonly file: string;
  #keys: OwnerKey[] = [];
  /** What the file's stat said when it was last read ("" = no file): re-read when it says something else. */
  #seen = "";

  constructor(file: string) {
    this.file = file;
  }

  list(): OwnerKey[] {
    return this.#current().map((key) => ({ ...key }));
  }

  /** Stores `key`, replacing an entry with the same credential id. */
  add(key: OwnerKey): void {
    const keys = this.#current().filter((k) => k.id !== key.id);
    this.#write([...keys, key]);
  }

  /** Removes the key with this credential id (or a unique start of it, at least 8 characters, as `owner-keys` lists
   *  it) or this fingerprint (spaces and case do not matter); returns it, or undefined when none matches. Throws
   *  PasskeyError when a start of an id matches more than one key. */
  remove(idOrFingerprint: string): OwnerKey | undefined {
    const keys = this.#current();
    const wanted = idOrFingerprint.trim().replace(/(…|\.\.\.)$/, "");
    const hex = wanted.replace(/\s+/g, "").toLowerCase();
    let matches = keys.filter((k) => k.id === wanted || k.fingerprint.replace(/ /g, "") === hex);
    if (matches.length === 0 && wanted.length >= MIN_ID_PREFIX) matches = keys.filter((k) => k.id.startsWith(wanted));
    if (matches.length > 1) throw new PasskeyError(`'${wanted}' is the start of ${matches.length} passkeys' ids: give more of it, or the fingerprint.`);
    const [found] = matches;
    if (found) this.#write(keys.filter((k) => k !== found));
    return found;
  }

  /** Records the signature counter of the key's last approval, so that an older signature is never taken again. */
  updateCounter(id: string, counter: number): void {
    const keys = this.#current();
    const key = keys.find((k) => k.id === id);
    // Only forward: two approvals checked at once must not leave the older counter stored last.
    if (!key || counter <= key.counter) return;
    this.#write(keys.map((k) => (k === key ? { ...k, counter } : k)));
  }

  /** The keys as the file holds them now: read again only when its stat changed since the last look. */
  #current(): OwnerKey[] {
    const stat = statOrUndefined(this.file);
    const seen = stat ? `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}` : "";
    if (seen === this.#seen) return this.#keys;
    this.#keys = stat ? readKeysFile(this.file, stat) : [];
    this.#seen = seen;
    return this.#keys;
  }

  #write(keys: OwnerKey[]): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
    writePrivately(this.file, JSON.stringify({ keys }, null, 2) + "\n");
    this.#keys = keys;
    const stat = statOrUndefined(this.file);
    this.#seen = stat ? `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}` : "";
  }
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new ConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
}

/** The keys in the file, checked. Whoever can write the file can add a passkey that approves calls here: one that
 *  other users may change is refused, like a damaged one. */
function readKeysFile(file: string, stat: fs.Stats): OwnerKey[] {
  const fix = "Fix it, or move it away and enrol the owner's passkeys again with: code-remote-agent enroll-owner";
  if (!stat.isFile()) throw new ConfigError(`${file} (the owner's passkeys) is not a regular file. ${fix}`);
  if (stat.mode & 0o022) {
    throw new ConfigError(`${file} (the owner's passkeys) can be changed by other users (mode ${(stat.mode & 0o777).toString(8)}): make it private with chmod 600 ${file}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    const why = e instanceof SyntaxError ? "it is not JSON" : (e as Error).message;
    throw new ConfigError(`${file} (the owner's passkeys) cannot be read: ${why}. ${fix}`);
  }
  const parsed = OwnerKeysFile.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? ` at ${issue.path.map(String).join(".")}` : "";
    throw new ConfigError(`${file} (the owner's passkeys) is damaged${where}: ${issue.message}. ${fix}`);
  }
  return parsed.data.keys;
}
