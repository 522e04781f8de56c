// Which agent a machine name belongs to. An agent makes an Ed25519 key pair at its first start and sends the public
// key in its hello; the relay pins that key to the name the first time it sees the name with a key, and from then
// on registers the name only for an agent that signs the relay's fresh challenge with that key. A token, even the
// shared one, no longer lets another process take a live machine over. A machine that lost its key (a reinstall,
// a deleted state directory) is refused until the owner unpins its name (`machine-key unpin NAME`): nothing
// unpins a name by itself, not even a long absence, since a stranger could wait for one.

import type { Database } from "bun:sqlite";
import { createPublicKey, verify } from "node:crypto";
import { identityTranscript } from "../protocol.ts";

export interface PinnedKey {
  machine: string;
  public_key: string;
  pinned_at: string;
  last_seen_at: string | null;
}

/** The machine_keys table: one pinned public key per machine name. */
export class MachineKeys {
  constructor(readonly db: Database) {
    db.run(`CREATE TABLE IF NOT EXISTS machine_keys (
      machine TEXT PRIMARY KEY,
      public_key TEXT NOT NULL,
      pinned_at TEXT NOT NULL,
      last_seen_at TEXT)`);
  }

  pinnedKey(machine: string): string | undefined {
    const row = this.db.query("SELECT public_key FROM machine_keys WHERE machine = ?").get(machine) as { public_key: string } | null;
    return row?.public_key;
  }

  /** Pins `publicKey` to `machine` if the name has no key yet, and notes the connection; true when it pinned. */
  connected(machine: string, publicKey: string): boolean {
    const now = new Date().toISOString();
    const pinned = this.db.query("INSERT OR IGNORE INTO machine_keys (machine, public_key, pinned_at, last_seen_at) VALUES (?, ?, ?, ?)").run(machine, publicKey, now, now).changes > 0;
    if (!pinned) this.db.query("UPDATE machine_keys SET last_seen_at = ? WHERE machine = ? AND public_key = ?").run(now, machine, publicKey);
    return pinned;
  }

  list(): PinnedKey[] {
    return this.db.query("SELECT machine, public_key, pinned_at, last_seen_at FROM machine_keys ORDER BY machine").all() as PinnedKey[];
  }

  unpin(machine: string): boolean {
    return this.db.query("DELETE FROM machine_keys WHERE machine = ?").run(machine).changes > 0;
  }
}

/** Whether `signature` is `publicKey`'s signature of the identity transcript for this machine and nonce. The key,
 *  nonce and signature arrive already checked for form (protocol.ts); a key that is not a point on the curve or a
 *  signature that does not verify is simply false. */
export function proofVerifies(machine: string, publicKey: string, nonce: string, signature: string): boolean {
  try {
    const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: publicKey }, format: "jwk" });
    return verify(null, identityTranscript(machine, publicKey, nonce), key, Buffer.from(signature, "base64url"));
  } catch {
    return false;
  }
}

/** What the relay does with a newcomer for a name: register it (pinning its key when the name has none), or refuse
 *  it with a close reason (sent to the agent) and a detail (for the audit log). */
export type IdentityVerdict = { admit: true } | { admit: false; reason: string; detail: string };

/** The rule, given the key pinned to the name (if any), the key the newcomer proved (if any: an agent older than
 *  keys proves none), and the key of the agent connected under the name now (null: one without a key).
 *  - A pinned name is for the holder of its key only, whether or not its agent is connected.
 *  - An unpinned name that an agent holds now is taken over only by the same key (the owner unpinned it and the
 *    machine reconnects); a keyless agent cannot prove it is the same machine, so it never replaces anyone.
 *  - An unpinned, free name is taken by whoever comes (pinning its key, if it has one). */
export function judgeIdentity(pinned: string | undefined, proved: string | undefined, live: { publicKey?: string } | undefined): IdentityVerdict {
  if (pinned !== undefined) {
    if (proved === pinned) return { admit: true };
    if (proved === undefined) {
      return { admit: false, reason: "this name is pinned to a key and this agent has none: update the agent", detail: "no key, but the name is pinned to one" };
    }
    return { admit: false, reason: "pinned to another agent's key; if this machine lost its key, the owner runs machine-key unpin", detail: "a key other than the pinned one" };
  }
  if (live && (proved === undefined || live.publicKey !== proved)) {
    return { admit: false, reason: "another agent is connected under this name and this one cannot prove it is that machine", detail: "the name is in use and this agent is not its holder" };
  }
  return { admit: true };
}
