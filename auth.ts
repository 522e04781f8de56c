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
import { tooManyAttempts, type Penalties } from "./limits.ts";
import type { AuthorizationServer, ResourcePath } from "./oauth.ts";
import { logger } from "./log.ts";

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

export interface GuardOptions {
  authToken: string;
  agentToken: string;
  publicUrl?: URL;
  port: number;
  audit: AuditLog;
  penalties: Penalties;
  oauth: AuthorizationServer;
  agentTokens: AgentTokens;
}

export class Guards {
  readonly #allowedOrigins: Set<string>;

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

  #refuse(req: Request, address: string, reason: string, message: string, path?: ResourcePath, counts = true): Response {
    const where = new URL(req.url).pathname;
    if (counts) this.options.penalties.failed(address);
    log("warn", "authentication refused", { path: where, address, reason });
    this.options.audit.event("auth_refused", { address, detail: `${where}: ${reason}` });
    const challenge = path ? this.options.oauth.challenge(req, path, reason !== "no token") : 'Bearer realm="code-remote"';
    return jsonRpcError(401, -32001, message, { "WWW-Authenticate": challenge });
  }
}
