// Who may talk to the relay, checked on every request. MCP clients present either the owner's static AUTH_TOKEN
// (Claude Code, the Inspector, scripts) or an OAuth access token issued for that endpoint; agents present either a
// per-machine agent token or the shared AGENT_TOKEN (kept for compatibility with the original). The two kinds
// never stand in for each other. Tokens are only ever read from the Authorization header; one in a URL is refused.
// Browsers are kept out by Host and Origin checks (DNS rebinding), and an address that keeps failing is made to
// wait (limits.ts): a right token is looked at first and never waits, only failures do. Guards take a plain
// Request and return a Response when they refuse.

import type { Server } from "bun";
import type { AuthInfo } from "@modelcontextprotocol/server";
import type { AuditLog } from "./audit.ts";
import { secretMatches, type AgentTokens } from "./credentials.ts";
import { OncePer, tooManyAttempts, type Penalties } from "./limits.ts";
import { addressBytes, inNetworks, normalizeAddress, type Cidr } from "./networks.ts";
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

/** Forwarding headers from a peer that is not a trusted proxy are logged once per peer in this long. */
const IGNORED_FORWARDING_NOTE_MS = 10 * 60 * 1000;

/** Which address a request came from: the socket's, unless TRUST_PROXY names a header and the socket's peer is one of
 *  TRUSTED_PROXIES (the proxy's own addresses). Anyone can write X-Forwarded-For or Fly-Client-IP: believed from
 *  anyone, they would let a direct connection pass the private-network gate, dodge the penalties and put a false
 *  address in the audit log. */
export class ClientAddresses {
  readonly #ignoredNoted = new OncePer(IGNORED_FORWARDING_NOTE_MS);

  constructor(
    readonly trust: TrustProxy,
    readonly proxies: readonly Cidr[],
  ) {}

  of(server: Server<unknown>, req: Request): string {
    const socket = normalizeAddress(server.requestIP(req)?.address ?? "unknown");
    const header = this.trust === "none" ? undefined : this.trust === "fly" ? "fly-client-ip" : "x-forwarded-for";
    const value = header && req.headers.get(header);
    if (!header || !value) return socket;
    if (!inNetworks(socket, this.proxies)) {
      if (this.#ignoredNoted.due(socket)) {
        log("warn", `${header} ignored: the peer is not a trusted proxy; if it is your proxy, add it to TRUSTED_PROXIES`, { peer: socket, note: "logged once per peer in 10 min" });
      }
      return socket;
    }
    return this.#forwarded(value) ?? socket;
  }

  /** The address the proxies wrote: Fly's header, or the Nth from the right of X-Forwarded-For (anything left of
   *  the last N entries is the client's own word). Undefined when there are fewer entries, or no address. */
  #forwarded(value: string): string | undefined {
    const chain = value.split(",").map((a) => a.trim()).filter(Boolean);
    const claimed = this.trust === "fly" ? value.trim() : chain[chain.length - (this.trust as number)];
    return claimed !== undefined && addressBytes(claimed) ? normalizeAddress(claimed.replace(/^\[|\]$/g, "")) : undefined;
  }
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

  /** An MCP client on `path`: the owner's static token, or an OAuth access token issued for this resource. Its
   *  `address` is looked up only for a refusal (asking the socket for it costs every request a system call). */
  checkClient(req: Request, address: () => string, path: ResourcePath): AuthInfo | Response {
    const refused = this.#refuseBeforeToken(req, address, path);
    if (refused) return refused;
    const token = bearerToken(req)!;
    if (secretMatches(token, this.options.authToken)) return { token, clientId: "owner", scopes: [] };
    const grant = this.options.oauth.verifyAccessToken(token, req, path);
    if (grant) return grant;
    const misplaced = this.options.oauth.misplacedToken(token, req, path); // a live OAuth token for the other endpoint
    return this.#refuse(req, address, misplaced ? "OAuth token for another endpoint" : "wrong or expired token", misplaced ?? "Invalid or expired token.", path);
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
    const refused = this.#refuseBeforeToken(req, () => address);
    if (refused) return refused;
    const token = bearerToken(req)!;
    const machine = this.options.agentTokens.verify(token);
    if (machine) return { kind: "machine", ...machine };
    if (secretMatches(token, this.options.agentToken)) return { kind: "shared" };
    const misplaced = this.options.oauth.misplacedToken(token, req, "/ws/agent"); // a client's OAuth token
    return this.#refuse(req, () => address, misplaced ? "OAuth token used as an agent token" : "wrong agent token", misplaced ?? "Invalid agent token.");
  }

  /** Refusals that come before looking at the token: a token in the URL, no token. */
  #refuseBeforeToken(req: Request, address: () => string, path?: ResourcePath): Response | undefined {
    if (hasTokenInQuery(req)) {
      return this.#refuse(req, address, "token in URL", "Tokens in URLs are refused (URLs end up in logs). Send the header Authorization: Bearer <token>.", path);
    }
    // No token at all is how an OAuth client starts (it learns where to log in from the 401): not a failure.
    if (!bearerToken(req)) return this.#refuse(req, address, "no token", "Missing credentials. Send the header Authorization: Bearer <token>, or connect with OAuth.", path, false);
    return undefined;
  }

  /** A 401. A failure (`counts`) is penalised, logged and audited (limits.ts), and from an address that must wait
   *  it is a 429 instead: every wrong token from it gets that same answer, so the wait says nothing about a token,
   *  while a right one was served before we got here. A request with no token at all, which is how every OAuth
   *  client starts and costs an attacker nothing to repeat, is only answered. */
  #refuse(req: Request, address: () => string, reason: string, message: string, path?: ResourcePath, counts = true): Response {
    if (counts) {
      const wait = this.options.penalties.failed(address(), { path: new URL(req.url).pathname, reason });
      if (wait > 0) return tooManyAttempts(wait, (text) => jsonRpcError(429, -32000, text));
    }
    const challenge = path ? this.options.oauth.challenge(req, path, reason !== "no token") : 'Bearer realm="code-remote"';
    return jsonRpcError(401, -32001, message, { "WWW-Authenticate": challenge });
  }
}
