// The credentials the relay issues, and how it checks them. Every secret is 32 random bytes with a prefix that
// names its kind (so a leaked one is recognisable and a client token can never pass for an agent token), and only
// its SHA-256 is stored: a copy of the database reveals no usable credential. Three kinds live in SQLite:
// per-machine agent tokens, OAuth clients (with their secret's hash), and the grants the owner made them with their
// access and refresh tokens.

import type { Database } from "bun:sqlite";
import { createHash, randomBytes, scryptSync, timingSafeEqual } from "node:crypto";

/** Prefixes of the secrets we issue. */
const PREFIX = { access: "cra_", refresh: "crr_", agent: "crm_", clientSecret: "crs_", code: "crc_" } as const;

/** Lifetimes. Access tokens are short so a leaked one soon stops working; refresh tokens rotate on every use. */
export const ACCESS_TOKEN_TTL_S = 60 * 60;
const REFRESH_TOKEN_TTL_MS = 30 * 24 * 60 * 60 * 1000;

export const newSecret = (kind: keyof typeof PREFIX) => PREFIX[kind] + randomBytes(32).toString("base64url");
export const hashSecret = (secret: string) => createHash("sha256").update(secret).digest("hex");

/** Compares a presented secret with an expected one in constant time: both are hashed first, so neither its
 *  content nor its length leaks through timing (timingSafeEqual needs equal lengths). */
export function secretMatches(presented: string, expected: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

// --- agent tokens ---

/** Per-machine agent tokens: each admits only the machine it was made for, and revoking it cuts that agent off. */
export class AgentTokens {
  constructor(readonly db: Database) {
    db.run(`CREATE TABLE IF NOT EXISTS agent_tokens (
      machine TEXT PRIMARY KEY,
      token_hash TEXT NOT NULL UNIQUE,
      created_at TEXT NOT NULL,
      last_used_at TEXT)`);
  }

  /** Makes a token for `machine` and returns it (the only time it exists in clear). */
  create(machine: string): string {
    const token = newSecret("agent");
    this.db.query("INSERT INTO agent_tokens (machine, token_hash, created_at) VALUES (?, ?, ?)").run(machine, hashSecret(token), new Date().toISOString());
    return token;
  }

  exists(machine: string): boolean {
    return this.db.query("SELECT 1 FROM agent_tokens WHERE machine = ?").get(machine) !== null;
  }

  list(): { machine: string; created_at: string; last_used_at: string | null }[] {
    return this.db.query("SELECT machine, created_at, last_used_at FROM agent_tokens ORDER BY machine").all() as never;
  }

  revoke(machine: string): boolean {
    return this.db.query("DELETE FROM agent_tokens WHERE machine = ?").run(machine).changes > 0;
  }

  /** The machine a token admits, or undefined. */
  verify(token: string): { machine: string; tokenHash: string } | undefined {
    if (!token.startsWith(PREFIX.agent)) return undefined;
    const tokenHash = hashSecret(token);
    const row = this.db.query("SELECT machine FROM agent_tokens WHERE token_hash = ?").get(tokenHash) as { machine: string } | null;
    if (!row) return undefined;
    this.db.query("UPDATE agent_tokens SET last_used_at = ? WHERE token_hash = ?").run(new Date().toISOString(), tokenHash);
    return { machine: row.machine, tokenHash };
  }

  /** Hashes of the tokens that are still valid (the relay disconnects agents whose token is gone). */
  validHashes(): Set<string> {
    return new Set((this.db.query("SELECT token_hash FROM agent_tokens").all() as { token_hash: string }[]).map((r) => r.token_hash));
  }
}

// --- OAuth clients and tokens ---

export interface OAuthClient {
  client_id: string;
  /** Present for confidential clients (client_secret_post or client_secret_basic). */
  secret_hash: string | null;
  metadata: { redirect_uris: string[]; client_name?: string; token_endpoint_auth_method?: string; [key: string]: unknown };
  created_at: number;
}

/** An application the owner approved, as the owner's lists show it (the dashboard, `oauth-clients list`). */
export interface ApprovedClient {
  client_id: string;
  /** The name it registered, fit to print (printableName), or undefined. */
  name: string | undefined;
  /** Where its answers go: the hosts of its redirect URIs, as a browser reaches them (punycode). */
  redirect_hosts: string[];
  /** When the owner last approved it, and when it last used a token (ms since the epoch). */
  approved_at: number;
  last_used_at: number;
}

export interface IssuedTokens {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  scope: string;
}

export interface AccessGrant {
  client_id: string;
  scopes: string[];
  resource: string;
  expires_at: number;
  /** The grant (one approval by the owner) the token belongs to. */
  family: string;
}

/** A grant's last use is written at most this often: a busy client does not write on every request. */
const LAST_USE_RESOLUTION_MS = 60_000;
/** The fingerprint of the owner secret kept with each grant is scrypt at these costs (~65 ms, once at start), so a
 *  copy of the database is no cheap oracle for guesses at a typed password. */
const OWNER_KEY_COST = { N: 2 ** 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };

/** A name someone else chose, fit to show a person: control and format characters (terminal escapes, bidi overrides
 *  that reorder what is shown) become '?', and it is cut at `max` characters. */
export function printableName(name: unknown, max = 80): string | undefined {
  if (typeof name !== "string" || !name) return undefined;
  const safe = name.replace(/\p{C}/gu, "?");
  return safe.length > max ? `${safe.slice(0, max - 1)}…` : safe;
}

/** Registered OAuth clients, the grants the owner made them, and the tokens issued under each grant. A grant is one
 *  approval: its tokens form a family. A refresh token is used once: each use marks it and issues a new pair in the
 *  family; presenting a used one again revokes the whole family (RFC 9700 §4.14). Each grant keeps a fingerprint of
 *  the owner secret it was made under, so a new secret revokes what the old one approved (adoptOwnerSecret). */
export class OAuthStore {
  #ownerKey?: string;

  constructor(readonly db: Database) {
    db.run(`CREATE TABLE IF NOT EXISTS oauth_clients (
      client_id TEXT PRIMARY KEY,
      secret_hash TEXT,
      metadata TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      registered_from TEXT NOT NULL DEFAULT '')`);
    addColumnIfMissing(db, "oauth_clients", "registered_from", "TEXT NOT NULL DEFAULT ''"); // databases of older relays
    db.run(`CREATE TABLE IF NOT EXISTS oauth_tokens (
      token_hash TEXT PRIMARY KEY,
      kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
      client_id TEXT NOT NULL,
      scopes TEXT NOT NULL,
      resource TEXT NOT NULL,
      family TEXT NOT NULL,
      expires_at INTEGER NOT NULL,
      used INTEGER NOT NULL DEFAULT 0,
      revoked INTEGER NOT NULL DEFAULT 0)`);
    db.run("CREATE INDEX IF NOT EXISTS oauth_tokens_family ON oauth_tokens (family)");
    db.run(`CREATE TABLE IF NOT EXISTS oauth_grants (
      family TEXT PRIMARY KEY,
      client_id TEXT NOT NULL,
      owner_key TEXT NOT NULL,
      approved_at INTEGER NOT NULL,
      last_used_at INTEGER NOT NULL)`);
    db.run("CREATE INDEX IF NOT EXISTS oauth_grants_client ON oauth_grants (client_id)");
    db.run("CREATE TABLE IF NOT EXISTS oauth_owner_salt (id INTEGER PRIMARY KEY CHECK (id = 1), salt TEXT NOT NULL)");
    this.dropExpired();
  }

  /** Deletes expired tokens, which are no use to anyone, and the grants left with no live token: an approval unused
   *  for as long as a refresh token lives has lapsed. */
  dropExpired(now = Date.now()): void {
    this.db.transaction(() => {
      this.db.query("DELETE FROM oauth_tokens WHERE expires_at < ?").run(now);
      this.db.run("DELETE FROM oauth_grants WHERE family NOT IN (SELECT family FROM oauth_tokens WHERE revoked = 0)");
    })();
  }

  /** Makes `ownerSecret` the one new grants are made under, and revokes every grant made under another (the owner
   *  changed the secret: what the old one approved is no longer the owner's word), and tokens from before grants
   *  were recorded. Returns how many grants, of how many clients, were revoked. */
  adoptOwnerSecret(ownerSecret: string): { grants: number; clients: number } {
    const key = scryptSync(ownerSecret, this.#salt(), 32, OWNER_KEY_COST).toString("base64url");
    const revoked = this.db
      .query("SELECT count(DISTINCT family) AS grants, count(DISTINCT client_id) AS clients FROM oauth_tokens WHERE revoked = 0 AND family NOT IN (SELECT family FROM oauth_grants WHERE owner_key = ?)")
      .get(key) as { grants: number; clients: number };
    this.db.transaction(() => {
      this.db.query("DELETE FROM oauth_grants WHERE owner_key != ?").run(key);
      this.db.run("DELETE FROM oauth_tokens WHERE family NOT IN (SELECT family FROM oauth_grants)");
    })();
    this.#ownerKey = key;
    return revoked;
  }

  /** This database's salt for the owner secret's fingerprint, made on first use. */
  #salt(): string {
    this.db.query("INSERT OR IGNORE INTO oauth_owner_salt (id, salt) VALUES (1, ?)").run(randomBytes(16).toString("hex"));
    return (this.db.query("SELECT salt FROM oauth_owner_salt WHERE id = 1").get() as { salt: string }).salt;
  }

  clientCount(): number {
    return (this.db.query("SELECT count(*) AS n FROM oauth_clients").get() as { n: number }).n;
  }

  /** Deletes the clients registered before `before` (seconds) that the owner never approved (no grant: a registration
   *  left behind by a client that gave up, or by a flood), except those in `keep` (an approval under way). Returns
   *  how many went. */
  dropUnapproved(before: number, keep: ReadonlySet<string>): number {
    const rows = this.db.query(`SELECT client_id FROM oauth_clients c WHERE created_at < ? AND ${UNAPPROVED}`).all(before) as { client_id: string }[];
    const doomed = rows.map((r) => r.client_id).filter((id) => !keep.has(id));
    this.db.transaction(() => doomed.forEach((id) => this.#delete(id)))();
    return doomed.length;
  }

  /** Makes room in a full table: deletes the oldest unapproved client of the source that holds the most of them, so
   *  a flood from a few sources pays for itself and a quiet source's registration stays. False when every client is
   *  approved. */
  dropUnapprovedOfBusiestSource(): boolean {
    const row = this.db
      .query(
        `SELECT client_id FROM oauth_clients c WHERE ${UNAPPROVED} AND registered_from = (
           SELECT registered_from FROM oauth_clients c WHERE ${UNAPPROVED} GROUP BY registered_from ORDER BY count(*) DESC, min(created_at) LIMIT 1)
         ORDER BY created_at LIMIT 1`,
      )
      .get() as { client_id: string } | null;
    if (!row) return false;
    this.#delete(row.client_id);
    return true;
  }

  /** Registers a client from `source` (its address, or its IPv6 /64); returns its id and, for a confidential one,
   *  its secret (shown only now). */
  register(metadata: OAuthClient["metadata"], confidential: boolean, source: string): { client_id: string; client_secret?: string; created_at: number } {
    const client_id = randomBytes(16).toString("base64url");
    const client_secret = confidential ? newSecret("clientSecret") : undefined;
    const created_at = Math.floor(Date.now() / 1000);
    this.db
      .query("INSERT INTO oauth_clients (client_id, secret_hash, metadata, created_at, registered_from) VALUES (?, ?, ?, ?, ?)")
      .run(client_id, client_secret ? hashSecret(client_secret) : null, JSON.stringify(metadata), created_at, source);
    return { client_id, client_secret, created_at };
  }

  /** Keeps a client identified by its metadata document (its id is the document's URL) once the owner approved it,
   *  so its grants are listed and revoked as any other's. The metadata kept is as last read, for those lists: the
   *  document itself, fetched again as its cache allows, is what counts at each use. */
  rememberDocumentClient(client: OAuthClient, source: string): void {
    this.db
      .query(
        `INSERT INTO oauth_clients (client_id, secret_hash, metadata, created_at, registered_from) VALUES (?, NULL, ?, ?, ?)
         ON CONFLICT (client_id) DO UPDATE SET metadata = excluded.metadata`,
      )
      .run(client.client_id, JSON.stringify(client.metadata), Math.floor(Date.now() / 1000), source);
  }

  client(clientId: string): OAuthClient | undefined {
    const row = this.db.query("SELECT client_id, secret_hash, metadata, created_at FROM oauth_clients WHERE client_id = ?").get(clientId) as
      | (Omit<OAuthClient, "metadata"> & { metadata: string })
      | null;
    return row ? { ...row, metadata: JSON.parse(row.metadata) } : undefined;
  }

  /** The clients the owner approved, most recently approved first. */
  approvedClients(): ApprovedClient[] {
    const rows = this.db
      .query(
        `SELECT c.client_id, c.metadata, max(g.approved_at) AS approved_at, max(g.last_used_at) AS last_used_at
         FROM oauth_clients c JOIN oauth_grants g ON g.client_id = c.client_id GROUP BY c.client_id ORDER BY approved_at DESC`,
      )
      .all() as { client_id: string; metadata: string; approved_at: number; last_used_at: number }[];
    return rows.map(({ metadata, ...row }) => {
      const parsed = JSON.parse(metadata) as OAuthClient["metadata"];
      return { ...row, name: printableName(parsed.client_name), redirect_hosts: [...new Set(parsed.redirect_uris.map(hostOf))] };
    });
  }

  /** Whether the owner's approval of `clientId` still stands (some grant of it is not revoked). */
  hasGrant(clientId: string): boolean {
    return this.db.query("SELECT 1 FROM oauth_grants WHERE client_id = ? LIMIT 1").get(clientId) !== null;
  }

  /** Forgets a client: its registration, its grants and every token it holds, at once. The client as it was, or
   *  undefined when there is no such client. */
  forgetClient(clientId: string): OAuthClient | undefined {
    const client = this.client(clientId);
    if (client) this.db.transaction(() => this.#delete(clientId))();
    return client;
  }

  #delete(clientId: string): void {
    for (const table of ["oauth_tokens", "oauth_grants", "oauth_clients"]) this.db.query(`DELETE FROM ${table} WHERE client_id = ?`).run(clientId);
  }

  /** Records the owner's approval of a client (a grant, under the owner secret adopted) and issues its first tokens. */
  approve(grant: { client_id: string; scopes: string[]; resource: string }): { tokens: IssuedTokens; family: string } {
    if (!this.#ownerKey) throw new Error("OAuthStore.approve before adoptOwnerSecret");
    const family = randomBytes(16).toString("hex");
    const now = Date.now();
    const tokens = this.db.transaction(() => {
      this.db.query("INSERT INTO oauth_grants (family, client_id, owner_key, approved_at, last_used_at) VALUES (?, ?, ?, ?, ?)").run(family, grant.client_id, this.#ownerKey!, now, now);
      return this.issue(grant, family);
    })();
    return { tokens, family };
  }

  /** Issues an access and a refresh token in the grant `family`. */
  issue(grant: { client_id: string; scopes: string[]; resource: string }, family: string): IssuedTokens {
    const access = newSecret("access");
    const refresh = newSecret("refresh");
    const insert = this.db.query(
      "INSERT INTO oauth_tokens (token_hash, kind, client_id, scopes, resource, family, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    );
    const scopes = grant.scopes.join(" ");
    this.db.transaction(() => {
      insert.run(hashSecret(access), "access", grant.client_id, scopes, grant.resource, family, Date.now() + ACCESS_TOKEN_TTL_S * 1000);
      insert.run(hashSecret(refresh), "refresh", grant.client_id, scopes, grant.resource, family, Date.now() + REFRESH_TOKEN_TTL_MS);
    })();
    return { access_token: access, refresh_token: refresh, expires_in: ACCESS_TOKEN_TTL_S, scope: scopes };
  }

  /** What a live access token grants, or undefined (unknown, expired or revoked). */
  accessGrant(token: string): AccessGrant | undefined {
    return this.#liveGrant(token, "access");
  }

  /** Whether `token` is a refresh token that could still be spent (looked at, not spent). */
  isLiveRefreshToken(token: string): boolean {
    return this.#liveGrant(token, "refresh") !== undefined;
  }

  #liveGrant(token: string, kind: "access" | "refresh"): AccessGrant | undefined {
    if (!token.startsWith(PREFIX[kind])) return undefined;
    const row = this.#row(hashSecret(token), kind);
    if (!row || row.revoked || row.used || row.expires_at < Date.now()) return undefined;
    return { client_id: row.client_id, scopes: row.scopes ? row.scopes.split(" ") : [], resource: row.resource, expires_at: row.expires_at, family: row.family };
  }

  /** Notes that a grant was just used, for the owner's list. */
  noteUse(family: string, now = Date.now()): void {
    this.db.query("UPDATE oauth_grants SET last_used_at = ? WHERE family = ? AND last_used_at < ?").run(now, family, now - LAST_USE_RESOLUTION_MS);
  }

  /** Spends a refresh token: the grant it carried, "reused" (its family is now revoked), or undefined. */
  spendRefresh(token: string, clientId: string): AccessGrant | "reused" | undefined {
    const row = token.startsWith(PREFIX.refresh) ? this.#row(hashSecret(token), "refresh") : undefined;
    if (!row || row.client_id !== clientId || row.revoked || row.expires_at < Date.now()) return undefined;
    if (row.used) {
      this.revokeFamily(row.family);
      return "reused";
    }
    this.db.query("UPDATE oauth_tokens SET used = 1 WHERE token_hash = ?").run(row.token_hash);
    this.noteUse(row.family);
    return { client_id: row.client_id, scopes: row.scopes ? row.scopes.split(" ") : [], resource: row.resource, expires_at: row.expires_at, family: row.family };
  }

  /** Revokes a token of `clientId` (a refresh token takes its whole family along). False when it is not theirs. */
  revoke(token: string, clientId: string): boolean {
    const hash = hashSecret(token);
    const row = this.#row(hash, "access") ?? this.#row(hash, "refresh");
    if (!row || row.client_id !== clientId) return false;
    if (row.kind === "refresh") this.revokeFamily(row.family);
    else this.db.query("UPDATE oauth_tokens SET revoked = 1 WHERE token_hash = ?").run(hash);
    return true;
  }

  /** Ends a grant and its tokens. */
  revokeFamily(family: string): void {
    this.db.transaction(() => {
      this.db.query("DELETE FROM oauth_tokens WHERE family = ?").run(family);
      this.db.query("DELETE FROM oauth_grants WHERE family = ?").run(family);
    })();
  }

  /** A token of a grant that stands: with its grant gone (revoked, lapsed, made under another owner secret, or never
   *  recorded) a token is dead, whatever its own row says. */
  #row(hash: string, kind: "access" | "refresh") {
    return this.db.query("SELECT t.* FROM oauth_tokens t JOIN oauth_grants g ON g.family = t.family WHERE t.token_hash = ? AND t.kind = ?").get(hash, kind) as
      | { token_hash: string; kind: string; client_id: string; scopes: string; resource: string; family: string; expires_at: number; used: number; revoked: number }
      | null;
  }
}

/** The SQL condition for a client (aliased `c`) that the owner has not approved. */
const UNAPPROVED = "NOT EXISTS (SELECT 1 FROM oauth_grants g WHERE g.client_id = c.client_id)";

/** The host a redirect URI sends the browser to, as the browser reaches it (an IDN in punycode). */
function hostOf(uri: string): string {
  try {
    return new URL(uri).host;
  } catch {
    return "(not a URL)";
  }
}

function addColumnIfMissing(db: Database, table: string, column: string, definition: string): void {
  const columns = db.query(`PRAGMA table_info(${table})`).all() as { name: string }[];
  if (!columns.some((c) => c.name === column)) db.run(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
}
