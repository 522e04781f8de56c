// The relay's settings: read once from the environment (Bun also loads a .env file), checked, and turned into a
// ServerConfig; a setting that is missing, weak or malformed is a ConfigError whose message says what to set.
// ENV_HELP is the table `bun run server.ts --help` prints.

import { hkdfSync } from "node:crypto";
import * as fs from "node:fs";
import type { TrustProxy } from "./auth.ts";
import { MachineName } from "../protocol.ts";
import type { CallLimitOptions } from "./limits.ts";
import { FLY_PROXY_NETWORKS, LOCAL_PROXY_NETWORKS, parseCidr, TAILSCALE_NETWORKS, type Cidr } from "./networks.ts";

/** Shortest AUTH_TOKEN accepted: 32 characters of `openssl rand -hex 32` carry 128 bits. */
const MIN_TOKEN_LENGTH = 32;
/** Shortest OWNER_PASSWORD: typed by a person, so shorter than a token, but failures are penalised per address. */
const MIN_PASSWORD_LENGTH = 12;

export interface ServerConfig {
  /** Address to bind (default 127.0.0.1; 0.0.0.0 in containers). */
  host: string;
  /** Port to listen on (default 8080; 0 picks a free one). */
  port: number;
  /** Credential MCP clients send as `Authorization: Bearer …`. */
  authToken: string;
  /** The shared credential agents may send; AUTH_TOKEN when AGENT_TOKEN is unset, as in the original. */
  agentToken: string;
  /** What the owner types on the OAuth consent page: OWNER_PASSWORD, or AUTH_TOKEN. */
  ownerSecret: string;
  databasePath: string;
  /** Public origin (https://relay.example.com) when deployed behind a proxy: the OAuth issuer, and allowed as
   *  Host and Origin. */
  publicUrl?: URL;
  /** Which header of a proxy to believe about the client's address (for penalties, the gate and logs). */
  trustProxy: TrustProxy;
  /** The proxies' own addresses: that header is believed only from a peer in these (empty with TRUST_PROXY=none). */
  trustedProxies: Cidr[];
  callLimits: CallLimitOptions;
  /** Audit events older than this many days are pruned (0: kept forever). */
  auditRetentionDays: number;
  /** Networks agents must come from, when REQUIRE_PRIVATE_NETWORK is on (undefined: the gate is off). */
  privateNetworks?: Cidr[];
  /** An agent beside the relay (the compose sandbox) whose token the relay makes and keeps in `file` (handoff.ts). */
  provisionAgentToken?: { machine: string; file: string };
  /** CIMD_TEST_CA_FILE's PEM: a CA trusted for client metadata documents, which may then be on loopback. Tests only. */
  cimdTestCa?: string;
  /** Signs the state a client brings back to a retried 2026-07-28 call (requestStateKey). */
  requestStateKey: Uint8Array;
  /** Where the owner is told that a call waits for approval (APPROVAL_WEBHOOK_URL), and in which body format. */
  approvalWebhook?: { url: string; format: "json" | "text" };
  /** How long a call for a machine that was connected a moment ago waits for it to reconnect (s; 0: not at all). */
  reconnectGraceS: number;
}

/** Environment variables the server reads; `--help` prints this table. */
export const ENV_HELP: [string, string][] = [
  ["AUTH_TOKEN", `Bearer token for MCP clients, at least ${MIN_TOKEN_LENGTH} characters (required; make one: openssl rand -hex 32)`],
  ["AGENT_TOKEN", "Shared token agents may connect with (default: AUTH_TOKEN); per-machine tokens: see agent-token"],
  ["OWNER_PASSWORD", `What you type to approve an OAuth client, at least ${MIN_PASSWORD_LENGTH} characters (default: AUTH_TOKEN)`],
  ["PORT", "Port to listen on (default 8080)"],
  ["HOST", "Address to bind (default 127.0.0.1; use 0.0.0.0 in a container)"],
  ["DATABASE_PATH", "SQLite database: audit log and issued credentials (default ./data/code-remote.db)"],
  ["PUBLIC_URL", "Public https:// origin when behind a proxy or tunnel (e.g. https://abc.ngrok.app); the OAuth issuer"],
  ["TRUST_PROXY", "Client address from: none (the socket, default), fly (Fly-Client-IP), or N (Nth from the right of X-Forwarded-For)"],
  ["TRUSTED_PROXIES", `Where that header is believed from: the proxy's own addresses, comma-separated CIDRs (default for fly ${FLY_PROXY_NETWORKS}; for N ${LOCAL_PROXY_NETWORKS})`],
  ["CLIENT_MAX_CALLS_IN_FLIGHT", "Tool calls one client may have running at once (default 32)"],
  ["CLIENT_CALLS_PER_MINUTE", "Tool calls one client may start per minute; 0 for no limit (default 1200)"],
  ["REQUIRE_PRIVATE_NETWORK", "true: agents must connect from PRIVATE_NETWORKS (default: true when TAILSCALE_AUTHKEY is set, else false)"],
  ["PRIVATE_NETWORKS", `Networks agents may come from, comma-separated CIDRs (default ${TAILSCALE_NETWORKS}: Tailscale)`],
  ["RECONNECT_GRACE_S", "A call for a machine that disconnected less than this many seconds ago waits (with progress) for it to reconnect instead of failing at once; 0 fails at once (default 30)"],
  ["AUDIT_RETENTION_DAYS", "Audit events older than this are pruned, keeping the chain verifiable; 0 keeps all (default 90)"],
  ["PROVISION_AGENT_TOKEN", "NAME:FILE: make a token for the agent NAME and keep it in FILE, readable by the relay's group (docker-compose.yml sets it for its sandbox)"],
  ["REQUEST_STATE_KEY", `Signs the state a client brings back to a retried 2026-07-28 call, at least ${MIN_TOKEN_LENGTH} characters (default: derived from AUTH_TOKEN; give every relay serving the same clients the same one)`],
  ["APPROVAL_WEBHOOK_URL", "Posted to when a call waits for your approval (one POST each): a URL of yours, or an ntfy topic (https://ntfy.sh/<secret topic>) for a phone notification"],
  ["APPROVAL_WEBHOOK_FORMAT", "json (default: the approval as JSON) or text (one line, with ntfy's Title and Click headers: for ntfy and similar push services)"],
  ["CIMD_TEST_CA_FILE", "For tests only, never in production: a PEM CA trusted for OAuth client metadata documents, which may then be served from loopback"],
];

export class ConfigError extends Error {}

function checkTokenStrength(name: string, token: string): void {
  const hint = "Make one with: openssl rand -hex 32";
  if (token.length < MIN_TOKEN_LENGTH) throw new ConfigError(`${name} must be at least ${MIN_TOKEN_LENGTH} characters. ${hint}`);
  if (/\s/.test(token)) throw new ConfigError(`${name} must not contain spaces. ${hint}`);
  if (new Set(token).size < 8) throw new ConfigError(`${name} is too repetitive to be a secret. ${hint}`);
}

/** A password is typed by a person (spaces welcome); wrong guesses are penalised per address. */
function checkPasswordStrength(name: string, password: string): void {
  if (password.length < MIN_PASSWORD_LENGTH || new Set(password).size < 6) {
    throw new ConfigError(`${name} must be at least ${MIN_PASSWORD_LENGTH} characters and not repetitive (a passphrase of a few words is good).`);
  }
}

export function loadConfig(env: Record<string, string | undefined>): ServerConfig {
  const authToken = env.AUTH_TOKEN ?? "";
  if (!authToken) throw new ConfigError("AUTH_TOKEN is not set. Make one with: openssl rand -hex 32");
  checkTokenStrength("AUTH_TOKEN", authToken);
  if (env.AGENT_TOKEN) checkTokenStrength("AGENT_TOKEN", env.AGENT_TOKEN);
  if (env.OWNER_PASSWORD) checkPasswordStrength("OWNER_PASSWORD", env.OWNER_PASSWORD);
  const trustProxy = parseTrustProxy(env.TRUST_PROXY);
  return {
    host: env.HOST || "127.0.0.1",
    port: wholeNumber(env, "PORT", 8080, 0, 65535),
    authToken,
    agentToken: env.AGENT_TOKEN || authToken,
    ownerSecret: env.OWNER_PASSWORD || authToken,
    databasePath: databasePath(env),
    publicUrl: env.PUBLIC_URL ? parsePublicUrl(env.PUBLIC_URL) : undefined,
    trustProxy,
    trustedProxies: trustedProxies(env.TRUSTED_PROXIES, trustProxy),
    callLimits: {
      maxInFlight: wholeNumber(env, "CLIENT_MAX_CALLS_IN_FLIGHT", 32, 1, 10_000),
      perMinute: wholeNumber(env, "CLIENT_CALLS_PER_MINUTE", 1200, 0, 10_000_000),
    },
    auditRetentionDays: wholeNumber(env, "AUDIT_RETENTION_DAYS", 90, 0, 100_000),
    reconnectGraceS: wholeNumber(env, "RECONNECT_GRACE_S", 30, 0, 3600),
    privateNetworks: requirePrivateNetwork(env) ? parseNetworks("PRIVATE_NETWORKS", env.PRIVATE_NETWORKS || TAILSCALE_NETWORKS) : undefined,
    provisionAgentToken: env.PROVISION_AGENT_TOKEN ? parseProvision(env.PROVISION_AGENT_TOKEN) : undefined,
    cimdTestCa: env.CIMD_TEST_CA_FILE ? readTestCa(env.CIMD_TEST_CA_FILE) : undefined,
    requestStateKey: requestStateKey(env.REQUEST_STATE_KEY, authToken),
    approvalWebhook: env.APPROVAL_WEBHOOK_URL ? approvalWebhook(env.APPROVAL_WEBHOOK_URL, env.APPROVAL_WEBHOOK_FORMAT) : undefined,
  };
}

/** APPROVAL_WEBHOOK_URL and its format, checked. The URL may hold a secret (an ntfy topic), so an error never
 *  repeats it. */
function approvalWebhook(raw: string, format: string | undefined): { url: string; format: "json" | "text" } {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError("APPROVAL_WEBHOOK_URL is not a URL: give the full address, e.g. https://ntfy.sh/<your secret topic>.");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new ConfigError("APPROVAL_WEBHOOK_URL must be an https:// (or http://) URL.");
  if (url.username || url.password) throw new ConfigError("APPROVAL_WEBHOOK_URL must not carry a user or password; put a secret in the path (an ntfy topic) instead.");
  if (format !== undefined && format !== "" && format !== "json" && format !== "text") throw new ConfigError("APPROVAL_WEBHOOK_FORMAT must be json or text.");
  return { url: url.href, format: format === "text" ? "text" : "json" };
}

/** REQUEST_STATE_KEY's bytes (checked like a token), or a key derived from AUTH_TOKEN by HKDF-SHA256: one-way, so it
 *  tells nothing of the token, and the same in every relay with this configuration, so a state one relay signed
 *  (before a restart, or on another instance) verifies in the next. */
function requestStateKey(configured: string | undefined, authToken: string): Uint8Array {
  if (configured) {
    checkTokenStrength("REQUEST_STATE_KEY", configured);
    return new TextEncoder().encode(configured);
  }
  return new Uint8Array(hkdfSync("sha256", authToken, "code-remote", "request state key v1", 32));
}

function readTestCa(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(`CIMD_TEST_CA_FILE '${file}' cannot be read (${(e as NodeJS.ErrnoException).code}); it is for tests only: unset it in production.`);
  }
}


/** Where the database is: DATABASE_PATH, or ./data/code-remote.db (also for the operator commands). */
export const databasePath = (env: Record<string, string | undefined>) => env.DATABASE_PATH || "./data/code-remote.db";

function wholeNumber(env: Record<string, string | undefined>, name: string, fallback: number, min: number, max: number): number {
  const value = Number(env[name]?.trim() || fallback); // an empty value (PORT= in .env, compose's ${X:-}) is unset
  if (!Number.isInteger(value) || value < min || value > max) throw new ConfigError(`${name} must be a whole number from ${min} to ${max}.`);
  return value;
}

function parsePublicUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`PUBLIC_URL '${raw}' is not a URL; e.g. PUBLIC_URL=https://relay.example.com`);
  }
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  // OAuth sends codes and tokens to and from this origin: plain http is only acceptable on this machine.
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
    throw new ConfigError("PUBLIC_URL must be https:// (plain http only for localhost); e.g. PUBLIC_URL=https://relay.example.com");
  }
  return new URL(url.origin);
}

function requirePrivateNetwork(env: Record<string, string | undefined>): boolean {
  const raw = env.REQUIRE_PRIVATE_NETWORK?.trim().toLowerCase();
  if (raw === undefined || raw === "") return Boolean(env.TAILSCALE_AUTHKEY);
  if (["true", "1", "yes", "on"].includes(raw)) return true;
  if (["false", "0", "no", "off"].includes(raw)) return false;
  throw new ConfigError("REQUIRE_PRIVATE_NETWORK must be true or false.");
}

function parseNetworks(name: string, raw: string): Cidr[] {
  const networks: Cidr[] = [];
  for (const entry of raw.split(",").filter((e) => e.trim())) {
    try {
      networks.push(parseCidr(entry));
    } catch (e) {
      throw new ConfigError(`${name}: ${(e as Error).message}.`);
    }
  }
  if (networks.length === 0) throw new ConfigError(`${name} names no network.`);
  return networks;
}

/** The proxies whose header TRUST_PROXY names are believed: TRUSTED_PROXIES, or where such a proxy usually is. A
 *  list without TRUST_PROXY would do nothing, which is surely not what was meant, so it is refused. */
function trustedProxies(raw: string | undefined, trust: TrustProxy): Cidr[] {
  if (trust === "none") {
    if (raw?.trim()) throw new ConfigError("TRUSTED_PROXIES is set but TRUST_PROXY is none: set TRUST_PROXY=fly or the number of proxies in front of the relay, or unset TRUSTED_PROXIES.");
    return [];
  }
  return parseNetworks("TRUSTED_PROXIES", raw?.trim() || (trust === "fly" ? FLY_PROXY_NETWORKS : LOCAL_PROXY_NETWORKS));
}

function parseProvision(raw: string): { machine: string; file: string } {
  const [, machine, file] = /^([^:]*):(.*)$/.exec(raw) ?? [];
  if (!machine || !MachineName.safeParse(machine).success || !file?.startsWith("/")) {
    throw new ConfigError("PROVISION_AGENT_TOKEN must be NAME:FILE, a machine name and an absolute path; e.g. sandbox:/agent-token/sandbox");
  }
  return { machine, file };
}

function parseTrustProxy(raw: string | undefined): TrustProxy {
  if (!raw || raw === "none") return "none";
  if (raw === "fly") return "fly";
  const hops = Number(raw);
  if (Number.isInteger(hops) && hops >= 1 && hops <= 10) return hops;
  throw new ConfigError("TRUST_PROXY must be none, fly, or the number of proxies in front of the relay (1-10).");
}
