// The credentials the relay issues, and how it checks them. Every secret is 32 random bytes with a prefix that
// names its kind (so a leaked one is recognisable and a client token can never pass for an agent token), and only
// its SHA-256 is stored: a copy of the database reveals no usable credential. Three kinds live in SQLite:
// per-machine agent tokens, OAuth clients (with their secret's hash), and OAuth access and refresh tokens.

import type { Database } from "bun:sqlite";
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

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
}

/** Registered OAuth clients and the tokens issued to them. A refresh token is used once: each use marks it and
 *  issues a new pair in the same family; presenting a used one again revokes the whole family (RFC 9700 §4.14). */
export class OAuthStore {
  constructor(readonly db: Database) {
    db.run(`CREATE TABLE IF NOT EXISTS oauth_clients (
      client_id TEXT PRIMARY KEY,
      secret_hash TEXT,
      metadata TEXT NOT NULL,
      created_at INTEGER NOT NULL)`);
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
    db.query("DELETE FROM oauth_tokens WHERE expires_at < ?").run(Date.now()); // expired rows are no use to anyone
  }

  clientCount(): number {
    return (this.db.query("SELECT count(*) AS n FROM oauth_clients").get() as { n: number }).n;
  }

  /** Deletes the oldest client registered before `before` (seconds) that holds no token, live or used: one that
   *  registered and never finished an authorization. False when there is none, so a full table of clients in use
   *  stays as it is. */
  dropOldestUnused(before: number): boolean {
    const unused = this.db
      .query("SELECT client_id FROM oauth_clients c WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.client_id = c.client_id) ORDER BY created_at LIMIT 1")
      .get(before) as { client_id: string } | null;
    if (!unused) return false;
    this.db.query("DELETE FROM oauth_clients WHERE client_id = ?").run(unused.client_id);
    return true;
  }

  /** Registers a client; returns its id and, for a confidential one, its secret (shown only now). */
  register(metadata: OAuthClient["metadata"], confidential: boolean): { client_id: string; client_secret?: string; created_at: number } {
    const client_id = randomBytes(16).toString("base64url");
    const client_secret = confidential ? newSecret("clientSecret") : undefined;
    const created_at = Math.floor(Date.now() / 1000);
    this.db
      .query("INSERT INTO oauth_clients (client_id, secret_hash, metadata, created_at) VALUES (?, ?, ?, ?)")
      .run(client_id, client_secret ? hashSecret(client_secret) : null, JSON.stringify(metadata), created_at);
    return { client_id, client_secret, created_at };
  }

  client(clientId: string): OAuthClient | undefined {
    const row = this.db.query("SELECT * FROM oauth_clients WHERE client_id = ?").get(clientId) as (Omit<OAuthClient, "metadata"> & { metadata: string }) | null;
    return row ? { ...row, metadata: JSON.parse(row.metadata) } : undefined;
  }

  /** Issues an access and a refresh token in `family` (a new family for a fresh authorization). */
  issue(grant: { client_id: string; scopes: string[]; resource: string }, family = randomBytes(16).toString("hex")): IssuedTokens {
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
    if (!token.startsWith(PREFIX.access)) return undefined;
    const row = this.#row(hashSecret(token), "access");
    if (!row || row.revoked || row.expires_at < Date.now()) return undefined;
    return { client_id: row.client_id, scopes: row.scopes ? row.scopes.split(" ") : [], resource: row.resource, expires_at: row.expires_at };
  }

  /** Spends a refresh token: the grant it carried, "reused" (its family is now revoked), or undefined. */
  spendRefresh(token: string, clientId: string): (AccessGrant & { family: string }) | "reused" | undefined {
    const row = token.startsWith(PREFIX.refresh) ? this.#row(hashSecret(token), "refresh") : undefined;
    if (!row || row.client_id !== clientId || row.revoked || row.expires_at < Date.now()) return undefined;
    if (row.used) {
      this.revokeFamily(row.family);
      return "reused";
    }
    this.db.query("UPDATE oauth_tokens SET used = 1 WHERE token_hash = ?").run(row.token_hash);
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

  revokeFamily(family: string): void {
    this.db.query("UPDATE oauth_tokens SET revoked = 1 WHERE family = ?").run(family);
  }

  #row(hash: string, kind: "access" | "refresh") {
    return this.db.query("SELECT * FROM oauth_tokens WHERE token_hash = ? AND kind = ?").get(hash, kind) as
      | { token_hash: string; kind: string; client_id: string; scopes: string; resource: string; family: string; expires_at: number; used: number; revoked: number }
      | null;
  }
}
