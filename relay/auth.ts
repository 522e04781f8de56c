// Who may talk to the relay, checked on every request. MCP clients present either the owner's static AUTH_TOKEN
// (Claude Code, the Inspector, scripts) or an OAuth access token issued for that endpoint; agents present either a
// per-machine agent token or the shared AGENT_TOKEN (kept for compatibility with the original). The two kinds
// never stand in for each other. Tokens are only ever read from the Authorization header; one in a URL is refused.
// Browsers are kept out by Host and Origin checks (DNS rebinding), and an address that keeps failing is made to
// wait (limits.ts). Guards take a plain Request and return a Response when they refuse.

import type { Server } from "bun";
import type { AuthInfo } from "@modelcontextprotocol/sdk/server/auth/types.js";
import type { AuditLog } from "./audit.ts";
import { secretMatches, type AgentTokens } from "./credentials.ts";
import { OncePer, tooManyAttempts, type Penalties } from "./limits.ts";
import type { AuthorizationServer, ResourcePath } from "./oauth.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** Query parameters that look like credentials: refused outright, since URLs end up in logs. */
const TOKEN_QUERY_PARAMS = ["token", "access_token", "auth", "auth_token", "api_key", "apikey", "key", "bearer"];
const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** Which address to believe a request came from: the socket's (`none`), Fly's edge header (`fly`), or the Nth
 *  address from the right of X-Forwarded-For, as appended by N trusted proxies. */
export type TrustProxy = "none" | "fly" | number;

/** What an agent proved: the shared token (any machine name), or a token made for one machine. */
export type AgentCredential = { kind: "shared" } | { kind: "machine"; machine: string; tokenHash: string };

/** A JSON-RPC error in an HTTP response: how every refusal of an MCP request is answered. */
export function jsonRpcError(status: number, code: number, message: string, headers: Record<string, string> = {}): Response {
  return Response.json({ jsonrpc: "2.0", error: { code, message }, id: null }, { status, headers });
}

/** The token of an `Authorization: Bearer <token>` header, or undefined. */
export function bearerToken(req: Request): string | undefined {
  const match = /^Bearer +(\S+) *$/i.exec(req.headers.get("authorization") ?? "");
  return match?.[1];
}

function hasTokenInQuery(req: Request): boolean {
  const params = new URL(req.url).searchParams;
  return [...params.keys()].some((k) => TOKEN_QUERY_PARAMS.includes(k.toLowerCase()));
}

/** "::ffff:1.2.3.4" is the IPv4 address 1.2.3.4 seen through an IPv6 socket. */
export const normalizeAddress = (address: string) => address.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, "$1");

/** The client's address, as far as `trust` allows us to believe the proxies in front of us. */
export function clientAddress(server: Server<unknown>, req: Request, trust: TrustProxy): string {
  const socket = normalizeAddress(server.requestIP(req)?.address ?? "unknown");
  if (trust === "fly") return normalizeAddress(req.headers.get("fly-client-ip")?.trim() || socket);
  if (trust === "none") return socket;
  const chain = (req.headers.get("x-forwarded-for") ?? "").split(",").map((a) => a.trim()).filter(Boolean);
  // Only the last `trust` entries were written by proxies we trust; anything left of them is the client's word.
  return chain.length >= trust ? normalizeAddress(chain[chain.length - trust]!) : socket;
}

// --- private-network gate ---

/** A network in CIDR form: its address bytes (4 or 16) and how many leading bits must match. */
export interface Cidr {
  bytes: Uint8Array;
  prefix: number;
}

/** Tailscale's address ranges: the gate's default (a second layer, not an identity: see docs/ARCHITECTURE.md). */
export const TAILSCALE_NETWORKS = "100.64.0.0/10,fd7a:115c:a1e0::/48";

/** The bytes of an IPv4 or IPv6 address ("::ffff:1.2.3.4" counts as the IPv4 address), or null. */
export function addressBytes(text: string): Uint8Array | null {
  const address = normalizeAddress(text.replace(/^\[|\]$/g, "").replace(/%.*$/, ""));
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  if (v4) {
    const parts = v4.slice(1).map(Number);
    return parts.every((p) => p <= 255) ? Uint8Array.from(parts) : null;
  }
  return address.includes(":") ? ipv6Bytes(address) : null;
}

function ipv6Bytes(address: string): Uint8Array | null {
  const halves = address.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string) => (part === "" ? [] : part.split(":"));
  let head = groups(halves[0]!);
  let tail = halves.length === 2 ? groups(halves[1]!) : [];
  const last = (halves.length === 2 ? tail : head).at(-1);
  const embedded = last?.includes(".") ? addressBytes(last) : null; // e.g. 64:ff9b::1.2.3.4
  if (last?.includes(".") && !embedded) return null;
  if (embedded) {
    const words = [((embedded[0]! << 8) | embedded[1]!).toString(16), ((embedded[2]! << 8) | embedded[3]!).toString(16)];
    if (halves.length === 2) tail = [...tail.slice(0, -1), ...words];
    else head = [...head.slice(0, -1), ...words];
  }
  const missing = 8 - head.length - tail.length;
  if ((halves.length === 2 && missing < 1) || (halves.length === 1 && missing !== 0)) return null;
  const words = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  if (!words.every((w) => /^[0-9a-f]{1,4}$/i.test(w))) return null;
  return Uint8Array.from(words.flatMap((w) => [parseInt(w, 16) >> 8, parseInt(w, 16) & 0xff]));
}

/** Parses "100.64.0.0/10" or "fd7a:115c:a1e0::/48" (a bare address is a /32 or /128); throws on nonsense. */
export function parseCidr(text: string): Cidr {
  const [address, prefixText] = text.trim().split("/");
  const bytes = addressBytes(address ?? "");
  const prefix = prefixText === undefined ? (bytes?.length ?? 0) * 8 : Number(prefixText);
  if (!bytes || !Number.isInteger(prefix) || prefix < 0 || prefix > bytes.length * 8) throw new Error(`'${text.trim()}' is not a network (e.g. 100.64.0.0/10)`);
  return { bytes, prefix };
}

/** Whether `address` lies in one of `networks` (an IPv4 address never matches an IPv6 network, or the reverse). */
export function inNetworks(address: string, networks: readonly Cidr[]): boolean {
  const bytes = addressBytes(address);
  if (!bytes) return false;
  return networks.some(({ bytes: net, prefix }) => {
    if (net.length !== bytes.length) return false;
    for (let bit = 0; bit < prefix; bit++) {
      const mask = 0x80 >> (bit % 8);
      if ((net[bit >> 3]! & mask) !== (bytes[bit >> 3]! & mask)) return false;
    }
    return true;
  });
}

export interface GuardOptions {
  authToken: string;
  agentToken: string;
  publicUrl?: URL;
  port: number;
  audit: AuditLog;
  penalties: Penalties;
  oauth: AuthorizationServer;
  agentTokens: AgentTokens;
  /** When set, agents must come from one of these networks (REQUIRE_PRIVATE_NETWORK). */
  privateNetworks?: readonly Cidr[];
}

/** An address refused by the private-network gate is logged and audited once in this long, however often it dials. */
const NETWORK_REFUSAL_RECORD_MS = 10 * 60 * 1000;

export class Guards {
  readonly #allowedOrigins: Set<string>;
  readonly #networkRefusalRecorded = new OncePer(NETWORK_REFUSAL_RECORD_MS);

  constructor(readonly options: GuardOptions) {
    const { port, publicUrl } = options;
    this.#allowedOrigins = new Set([`http://127.0.0.1:${port}`, `http://localhost:${port}`, `http://[::1]:${port}`]);
    if (publicUrl) this.#allowedOrigins.add(publicUrl.origin);
  }

  /** DNS rebinding: a page on another site may reach us under a hostname it controls; only our own names are
   *  served. The MCP spec requires the Origin check; the Host check is defence in depth. */
  checkHost(req: Request): Response | undefined {
    const host = new URL(req.url).host;
    if (LOOPBACK_HOSTS.has(host.replace(/:\d+$/, "")) || host === this.options.publicUrl?.host) return undefined;
    const shown = host.slice(0, 100);
    return jsonRpcError(403, -32000, `Host '${shown}' is not served here. If it is this server's public address, set PUBLIC_URL=https://${shown}`);
  }

  checkOrigin(req: Request): Response | undefined {
    const origin = req.headers.get("origin");
    if (!origin || this.#allowedOrigins.has(origin)) return undefined;
    return jsonRpcError(403, -32000, "Origin not allowed.");
  }

  /** An MCP client on `path`: the owner's static token, or an OAuth access token issued for this resource. */
  checkClient(req: Request, address: string, path: ResourcePath): AuthInfo | Response {
    const refused = this.#precheck(req, address, path);
    if (refused) return refused;
    const token = bearerToken(req)!;
    if (secretMatches(token, this.options.authToken)) return this.#passed(address, { token, clientId: "owner", scopes: [] });
    const grant = this.options.oauth.verifyAccessToken(token, req, path);
    if (grant) return this.#passed(address, grant);
    return this.#refuse(req, address, "wrong or expired token", "Invalid or expired token.", path);
  }

  /** The private-network gate: with REQUIRE_PRIVATE_NETWORK, an agent connecting from anywhere else is refused
   *  before its token is even looked at. `address` is the one TRUST_PROXY allows us to believe: a header a client
   *  can write is never taken at its word. */
  checkNetwork(req: Request, address: string): Response | undefined {
    const networks = this.options.privateNetworks;
    if (!networks || inNetworks(address, networks)) return undefined;
    const reason = "not from a private network (REQUIRE_PRIVATE_NETWORK)";
    if (this.#networkRefusalRecorded.due(address)) {
      const repeats = `the next ${NETWORK_REFUSAL_RECORD_MS / 60_000} min of refusals from this address are not recorded`;
      log("warn", "agent refused", { path: new URL(req.url).pathname, address, reason, note: repeats });
      this.options.audit.event("agent_refused_network", { address, detail: `${reason}; ${repeats}` });
    }
    return jsonRpcError(403, -32000, "Agents must connect over the private network (e.g. Tailscale).");
  }

  /** An agent: a token made for one machine, or the shared AGENT_TOKEN. OAuth tokens are never agent tokens. */
  checkAgent(req: Request, address: string): AgentCredential | Response {
    const refused = this.#precheck(req, address);
    if (refused) return refused;
    const token = bearerToken(req)!;
    const machine = this.options.agentTokens.verify(token);
    if (machine) return this.#passed(address, { kind: "machine", ...machine });
    if (secretMatches(token, this.options.agentToken)) return this.#passed(address, { kind: "shared" });
    return this.#refuse(req, address, "wrong agent token", "Invalid agent token.");
  }

  /** Refusals that come before looking at the token: an address that must wait, a token in the URL, no token. */
  #precheck(req: Request, address: string, path?: ResourcePath): Response | undefined {
    const wait = this.options.penalties.retryAfter(address);
    if (wait > 0) return tooManyAttempts(wait, (message) => jsonRpcError(429, -32000, message));
    if (hasTokenInQuery(req)) {
      return this.#refuse(req, address, "token in URL", "Tokens in URLs are refused (URLs end up in logs). Send the header Authorization: Bearer <token>.", path);
    }
    // No token at all is how an OAuth client starts (it learns where to log in from the 401): not a failure.
    if (!bearerToken(req)) return this.#refuse(req, address, "no token", "Missing credentials. Send the header Authorization: Bearer <token>, or connect with OAuth.", path, false);
    return undefined;
  }

  #passed<T>(address: string, result: T): T {
    this.options.penalties.succeeded(address);
    return result;
  }

  /** A 401. A failure (`counts`) is penalised, logged and audited; a request with no token at all, which is how
   *  every OAuth client starts and costs an attacker nothing to repeat, is only answered. */
  #refuse(req: Request, address: string, reason: string, message: string, path?: ResourcePath, counts = true): Response {
    const where = new URL(req.url).pathname;
    if (counts) {
      this.options.penalties.failed(address);
      log("warn", "authentication refused", { path: where, address, reason });
      this.options.audit.event("auth_refused", { address, detail: `${where}: ${reason}` });
    }
    const challenge = path ? this.options.oauth.challenge(req, path, reason !== "no token") : 'Bearer realm="code-remote"';
    return jsonRpcError(401, -32001, message, { "WWW-Authenticate": challenge });
  }
}
