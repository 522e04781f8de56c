// The OAuth 2.1 authorization server built into the relay, for clients that cannot send a static header (Claude.ai
// connectors, ChatGPT): protected-resource metadata (RFC 9728), server metadata (RFC 8414), clients identified by
// a metadata document URL (cimd.ts; public, or private_key_jwt with assertions.ts) and, as the fallback, dynamic
// client registration (RFC 7591), /authorize with PKCE S256 and a consent page the owner approves with the owner
// secret, answered with `iss` (RFC 9207), /token for authorization_code and refresh_token (refresh tokens rotate),
// and /revoke (RFC 7009). Tokens are bound to the resource they were asked for (RFC 8707): one for /mcp is refused
// on /sse. The SDK has no authorization server for web Request/Response (v2 keeps only a frozen Express one), so the
// endpoints are written here, reusing its schemas and error class. Issued secrets are stored as hashes
// (credentials.ts).
//
// The owner stays in control of what was approved: each approval is a grant the owner can list and revoke (the
// dashboard, `oauth-clients`), revoking ends the client's sessions too, and a new owner secret revokes every grant
// made under the old one. Anyone may register and open consent pages, so both are bounded in a way a flood pays for
// itself: registrations the owner never approves expire within minutes, and when a table is full the busiest
// source gives way, never a quiet one (the owner's).

import { createHash, randomBytes } from "node:crypto";
import { OAuthClientMetadataSchema } from "@modelcontextprotocol/core";
import { OAuthError, OAuthErrorCode, type AuthInfo } from "@modelcontextprotocol/server";
import { AssertionRefused, CLIENT_ASSERTION_TYPE, claimedClient, SIGNING_ALGORITHMS, SpentAssertions, verifyClientAssertion, type Expectations } from "./assertions.ts";
import type { AuditLog } from "./audit.ts";
import { CimdError, ClientMetadataDocuments, isDocumentClientId } from "./cimd.ts";
import { hashSecret, newSecret, printableName, secretMatches, type OAuthClient, type OAuthStore } from "./credentials.ts";
import { addressKey, Penalties, rememberLatest, tooManyAttempts } from "./limits.ts";
import { consentPage, errorPage, type ConsentDetails } from "./pages.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** An authorization code must be redeemed this soon, once. */
const CODE_TTL_MS = 60_000;
/** A consent page may be answered this long after it was shown, with this many wrong owner secrets. */
const CONSENT_TTL_MS = 10 * 60 * 1000;
const MAX_CONSENT_ATTEMPTS = 5;
/** Pending consents kept at most (each expires within minutes anyway), and per source (an address, or an IPv6 /64).
 *  When the table is full, the oldest consent of the source holding the most goes: filling it takes a thousand
 *  sources, and the owner's open page (one of a quiet source) outlasts a flood from fewer. */
const MAX_PENDING = 1_000;
const MAX_PENDING_PER_ADDRESS = 10;
/** Registered clients at most. A client the owner has not approved is deleted this long after it registered (unless
 *  its approval is under way): clients that register on every 401 and never finish leave nothing behind for long.
 *  When the table is full, the busiest source's oldest unapproved client makes room. */
const MAX_CLIENTS = 1_000;
const UNAPPROVED_CLIENT_TTL_S = 10 * 60;
/** Registrations one source may make at once, and how fast its allowance comes back (one a minute): enough for a
 *  client that registers again on every failed health check, while a flood pays with time for each row it adds to
 *  the client table and the audit log. */
const REGISTRATION_BURST = 30;
const REGISTRATION_REFILL_MS = 60_000;
/** Form and JSON bodies of the OAuth endpoints are small; anything bigger is refused unread. */
const MAX_OAUTH_BODY_BYTES = 64 * 1024;
/** The one scope: full use of the relay's tools. */
const SCOPE = "mcp";
/** How clients authenticate at /token and /revoke: a registered client with its secret or none (PKCE alone); a
 *  client identified by a metadata document with none or a signed assertion (a document can hold no secret). */
const REGISTERED_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"];
const DOCUMENT_AUTH_METHODS = ["private_key_jwt", "none"];
const GRANT_TYPES = ["authorization_code", "refresh_token"];
/** The protected endpoints; a token is bound to one of them, or to the whole origin. */
export type ResourcePath = "/mcp" | "/sse";

interface Consent {
  /** Where the consent page was asked from, as addressKey (pending consents are bounded per source). */
  source: string;
  client: OAuthClient;
  redirectUri: string;
  challenge: string;
  state: string | null;
  resource: string;
  csrfHash: string;
  expires: number;
  attempts: number;
}

interface Code {
  clientId: string;
  redirectUri: string;
  challenge: string;
  resource: string;
  expires: number;
  /** Set once redeemed: a second redemption revokes the tokens of this family (RFC 6749 §4.1.2). */
  family?: string;
}

export interface OAuthOptions {
  store: OAuthStore;
  /** OWNER_PASSWORD, or AUTH_TOKEN when none is set: what approves a client. */
  ownerSecret: string;
  publicUrl?: URL;
  /** Failed client authentications at /token and /revoke. */
  penalties: Penalties;
  /** Wrong owner secrets on the consent page (shared with the dashboard's login). */
  ownerSecretPenalties: Penalties;
  audit: AuditLog;
  /** Ends the open MCP sessions of a client whose access was just revoked. */
  endSessionsOf: (clientId: string) => void;
  /** CIMD_TEST_CA_FILE's CA: for tests only (see cimd.ts). */
  cimdTestCa?: string;
}

type Handler = (req: Request, address: string) => Response | Promise<Response>;

export class AuthorizationServer {
  readonly #consents = new Map<string, Consent>();
  readonly #codes = new Map<string, Code>();
  /** Each source's registration allowance (a token bucket); insertion order = least recently registering first. */
  readonly #registrations = new Map<string, { left: number; at: number }>();
  readonly #documents: ClientMetadataDocuments;
  readonly #spentAssertions = new SpentAssertions();

  constructor(readonly options: OAuthOptions) {
    this.#documents = new ClientMetadataDocuments({ testCa: options.cimdTestCa });
  }

  /** Takes the database's grants over under this relay's owner secret, revoking every grant made under another one.
   *  Run once the port is ours (so no other relay serves this database: one started by mistake with another secret
   *  must not revoke a running relay's grants) and before the first request is answered. */
  adoptOwnerSecret(): void {
    const revoked = this.options.store.adoptOwnerSecret(this.options.ownerSecret);
    if (revoked.grants === 0) return;
    const detail = `the owner secret changed: revoked ${revoked.grants} OAuth grants of ${revoked.clients} clients`;
    log("warn", detail);
    this.options.audit.event("oauth_grants_revoked", { detail: `${detail}; approve their applications again` });
  }

  /** This server's origin as clients know it: PUBLIC_URL, or the loopback origin it was reached at (the Host
   *  guard has already refused any other). */
  base(req: Request): string {
    return this.options.publicUrl?.origin ?? new URL(req.url).origin;
  }

  /** The WWW-Authenticate challenge for a 401 on `path`: where to find our metadata, and why the token failed. */
  challenge(req: Request, path: ResourcePath, invalidToken: boolean): string {
    const metadata = `${this.base(req)}/.well-known/oauth-protected-resource${path}`;
    return `Bearer resource_metadata="${metadata}", scope="${SCOPE}"${invalidToken ? ', error="invalid_token"' : ""}`;
  }

  /** The grant of a live OAuth access token, if it was issued for this resource. */
  verifyAccessToken(token: string, req: Request, path: ResourcePath): AuthInfo | undefined {
    const grant = this.options.store.accessGrant(token);
    if (!grant || !this.#grantedFor(req, grant.resource, path)) return undefined;
    this.options.store.noteUse(grant.family);
    return { token, clientId: grant.client_id, scopes: grant.scopes, expiresAt: Math.floor(grant.expires_at / 1000), resource: new URL(grant.resource) };
  }

  #grantedFor(req: Request, resource: string, path: ResourcePath): boolean {
    const base = this.base(req);
    return resource === `${base}${path}` || resource === `${base}/`;
  }

  /** Why a live OAuth token is refused where it was presented (an access token on the other MCP endpoint or by an
   *  agent, a refresh token anywhere but /token), so its holder learns what to do instead of "invalid or expired";
   *  undefined for anything else. Only a token's holder can get this answer, and it tells them nothing they could
   *  not find out by using it. */
  misplacedToken(token: string, req: Request, where: ResourcePath | "/ws/agent"): string | undefined {
    if (this.options.store.isLiveRefreshToken(token)) {
      return "This is an OAuth refresh token: exchange it at /token (grant_type=refresh_token) for an access token, and send that.";
    }
    const grant = this.options.store.accessGrant(token);
    if (!grant) return undefined;
    const issuedFor = new URL(grant.resource).pathname;
    if (where === "/ws/agent") {
      return `This is an OAuth access token for ${issuedFor}, an MCP client's credential. An agent connects with an agent token: AGENT_TOKEN, or one made with agent-token create.`;
    }
    if (this.#grantedFor(req, grant.resource, where)) return undefined;
    return `This is an OAuth access token for ${issuedFor}, not ${where}: connect to ${issuedFor} with it, or authorize again for ${where}.`;
  }

  // --- the owner's control over grants ---

  /** The clients the owner approved, for the dashboard. */
  approvedClients() {
    return this.options.store.approvedClients();
  }

  /** Whether `clientId` is an OAuth client whose approval still stands (its sessions may go on). */
  isGranted(clientId: string): boolean {
    return this.options.store.hasGrant(clientId);
  }

  /** Revokes a client at the owner's word: its registration, grants and tokens go at once, and its open sessions
   *  end. The client as it was, or undefined when there is none. */
  revokeClient(clientId: string, by: { address: string; via: string }): OAuthClient | undefined {
    const client = this.options.store.forgetClient(clientId);
    if (!client) return undefined;
    log("info", "oauth client revoked by the owner", { client_id: clientId, via: by.via, address: by.address });
    auditClientRevoked(this.options.audit, client, by);
    this.options.endSessionsOf(clientId);
    return client;
  }

  /** The HTTP routes of the authorization server. */
  routes(): Record<string, Partial<Record<"GET" | "POST", Handler>>> {
    const resourceMetadata = (path: string) => (req: Request) => this.#resourceMetadata(req, path);
    return {
      "/.well-known/oauth-protected-resource": { GET: resourceMetadata("/") },
      "/.well-known/oauth-protected-resource/mcp": { GET: resourceMetadata("/mcp") },
      "/.well-known/oauth-protected-resource/sse": { GET: resourceMetadata("/sse") },
      "/.well-known/oauth-authorization-server": { GET: (req) => this.#serverMetadata(req) },
      "/.well-known/openid-configuration": { GET: (req) => this.#serverMetadata(req) },
      "/register": { POST: (req, address) => this.#register(req, address) },
      "/authorize": { GET: (req, address) => this.#authorizeRequest(req, address), POST: (req, address) => this.#authorizeAnswer(req, address) },
      "/token": { POST: (req, address) => this.#token(req, address) },
      "/revoke": { POST: (req, address) => this.#revoke(req, address) },
    };
  }

  // --- metadata ---

  #resourceMetadata(req: Request, path: string): Response {
    const base = this.base(req);
    return Response.json({
      resource: `${base}${path}`,
      authorization_servers: [base],
      scopes_supported: [SCOPE],
      bearer_methods_supported: ["header"],
      resource_name: "Code Remote",
    });
  }

  #serverMetadata(req: Request): Response {
    const base = this.base(req);
    const authMethods = [...new Set([...REGISTERED_AUTH_METHODS, ...DOCUMENT_AUTH_METHODS])];
    return Response.json({
      issuer: base,
      authorization_endpoint: `${base}/authorize`,
      token_endpoint: `${base}/token`,
      registration_endpoint: `${base}/register`,
      revocation_endpoint: `${base}/revoke`,
      response_types_supported: ["code"],
      response_modes_supported: ["query"],
      grant_types_supported: GRANT_TYPES,
      code_challenge_methods_supported: ["S256"],
      token_endpoint_auth_methods_supported: authMethods,
      token_endpoint_auth_signing_alg_values_supported: SIGNING_ALGORITHMS,
      revocation_endpoint_auth_methods_supported: authMethods,
      revocation_endpoint_auth_signing_alg_values_supported: SIGNING_ALGORITHMS,
      scopes_supported: [SCOPE],
      authorization_response_iss_parameter_supported: true,
      client_id_metadata_document_supported: true,
    });
  }

  // --- registration (RFC 7591) ---

  /** POST /register, within the source's allowance: spent before the body is read, so that requests arriving
   *  together cannot all pass, and given back when nothing was stored. */
  async #register(req: Request, address: string): Promise<Response> {
    const source = addressKey(address);
    const allowance = this.#allowanceOf(source);
    if (allowance.left < 1) {
      const wait = Math.ceil(((1 - allowance.left) * REGISTRATION_REFILL_MS) / 1000);
      const refused = oauthError(new OAuthError(OAuthErrorCode.InvalidRequest, `Too many registrations from this address; try again in ${wait} s.`), 429);
      refused.headers.set("Retry-After", String(wait));
      return refused;
    }
    allowance.left -= 1;
    const response = await this.#registerClient(req, address, source);
    if (response.status !== 201) allowance.left += 1;
    return response;
  }

  async #registerClient(req: Request, address: string, source: string): Promise<Response> {
    const body = await readBody(req, "json");
    if (body instanceof Response) return body;
    const parsed = OAuthClientMetadataSchema.safeParse(body);
    if (!parsed.success) return oauthError(new OAuthError(OAuthErrorCode.InvalidClientMetadata, "The client metadata is not valid (RFC 7591)."), 400);
    const metadata = { ...parsed.data, token_endpoint_auth_method: parsed.data.token_endpoint_auth_method ?? "client_secret_basic" };
    const problem = checkClientMetadata(metadata, REGISTERED_AUTH_METHODS);
    if (problem) return oauthError(new OAuthError(OAuthErrorCode.InvalidClientMetadata, problem), 400);
    if (!this.#roomForClient()) return oauthError(new OAuthError(OAuthErrorCode.InvalidRequest, NO_ROOM_FOR_CLIENTS), 400);
    const confidential = metadata.token_endpoint_auth_method !== "none";
    const { client_id, client_secret, created_at } = this.options.store.register(metadata, confidential, source);
    log("info", "oauth client registered", { client_id, name: metadata.client_name ?? null, address });
    this.options.audit.event("oauth_client_registered", { address, detail: `${client_id} ${metadata.client_name ?? ""}`.trim() });
    return Response.json(
      { ...metadata, client_id, client_id_issued_at: created_at, ...(client_secret ? { client_secret, client_secret_expires_at: 0 } : {}) },
      { status: 201, headers: { "Cache-Control": "no-store" } },
    );
  }

  /** Room for one more client: expired registrations go first; when the table is still full, the oldest unapproved
   *  client of the busiest source. False only when every client in it is approved. */
  #roomForClient(): boolean {
    this.sweep();
    return this.options.store.clientCount() < MAX_CLIENTS || this.options.store.dropUnapprovedOfBusiestSource();
  }

  /** The registrations `source` has left, refilled for the time since it last registered. */
  #allowanceOf(source: string, now = Date.now()): { left: number; at: number } {
    const allowance = this.#registrations.get(source) ?? { left: REGISTRATION_BURST, at: now };
    allowance.left = Math.min(REGISTRATION_BURST, allowance.left + (now - allowance.at) / REGISTRATION_REFILL_MS);
    allowance.at = now;
    rememberLatest(this.#registrations, source, allowance);
    return allowance;
  }

  // --- clients identified by a metadata document ---

  /** The client the metadata document at `clientId` describes, as far as this relay can use it (usableDocumentMetadata)
   *  and held to the same rules as a registration. Throws CimdError saying what is wrong. */
  async #documentClient(clientId: string, source: string): Promise<OAuthClient> {
    const client = await this.#documents.client(clientId, source);
    const metadata = usableDocumentMetadata(client.metadata);
    const problem =
      metadata.redirect_uris.length === 0
        ? "it lists no redirect URI this relay answers to (https, or http on localhost, without a fragment)."
        : metadata.grant_types?.length === 0 || metadata.response_types?.length === 0
          ? "it lists no grant type (authorization_code) or response type (code) this relay serves."
          : checkClientMetadata(metadata, DOCUMENT_AUTH_METHODS);
    if (problem) throw new CimdError(`The metadata document at ${clientId} cannot be used: ${problem}`);
    return { ...client, metadata };
  }

  /** The client an authorization request names: the one its metadata document describes, or a registered one; or
   *  the page saying why there is none. */
  async #requestingClient(clientId: string, source: string): Promise<OAuthClient | Response> {
    if (!isDocumentClientId(clientId)) {
      return this.options.store.client(clientId) ?? errorPage(400, "Unknown application", "This application is not registered with this relay (it may have been registered with another one, or was never approved and expired). Connect again from your MCP client so it registers afresh.");
    }
    try {
      return await this.#documentClient(clientId, source);
    } catch (e) {
      if (!(e instanceof CimdError)) throw e;
      log("info", "oauth client metadata document refused", { client_id: clientId.slice(0, 200), reason: e.message });
      return errorPage(400, "This application's metadata document cannot be used", `${e.message} Nothing was sent back to the application. Tell its developer, or connect again from your MCP client.`);
    }
  }

  // --- authorization ---

  /** GET /authorize: checks the request and shows the consent page. A registered client registered itself, so
   *  nobody vouches for its redirect URIs, an exact match included: anyone can register https://evil.example and
   *  send a browser here (or publish a metadata document listing it). So until the owner has answered, a bad request
   *  is explained on the relay's own page and never redirected: the relay would otherwise forward any browser, under
   *  its own name, wherever a stranger registered (an open redirector, RFC 9700 §4.11.2). Only the owner's answer
   *  goes back to the client. */
  async #authorizeRequest(req: Request, address: string): Promise<Response> {
    const params = new URL(req.url).searchParams;
    const client = await this.#requestingClient(params.get("client_id") ?? "", addressKey(address));
    if (client instanceof Response) return client;
    const redirectUri = chooseRedirectUri(client, params.get("redirect_uri"));
    if (!redirectUri) {
      const listed = isDocumentClientId(client.client_id) ? `its metadata document at ${client.client_id} lists` : "this application registered";
      return errorPage(400, "Wrong redirect address", `The redirect_uri is not one ${listed}, so the answer will not be sent there.`);
    }
    const refuse = (problem: string) =>
      errorPage(400, "This request cannot be approved", `${problem} Nothing was sent back to the application. Tell its developer, or connect again from your MCP client.`);
    const responseType = params.get("response_type");
    if (responseType !== "code") return refuse(`This relay answers only response_type=code (the authorization code flow with PKCE), not ${quoted(responseType)}.`);
    const challenge = params.get("code_challenge");
    if (!challenge || params.get("code_challenge_method") !== "S256" || !/^[A-Za-z0-9_-]{43}$/.test(challenge)) {
      return refuse("PKCE is required: the application must send a code_challenge with code_challenge_method=S256.");
    }
    const scope = params.get("scope");
    if (scope && scope.split(" ").some((s) => s !== SCOPE)) return refuse(`The only scope is "${SCOPE}", not ${quoted(scope)}.`);
    const resource = this.#canonicalResource(req, params.get("resource"));
    if (!resource) return refuse(`The resource ${quoted(params.get("resource"))} is not this relay (${this.base(req)}/mcp or /sse).`);
    return this.#showConsent(req, { source: addressKey(address), client, redirectUri, challenge, state: params.get("state"), resource });
  }

  #showConsent(req: Request, request: Omit<Consent, "csrfHash" | "expires" | "attempts">): Response {
    this.#prune();
    this.#makeRoomForConsent(request.source);
    const requestId = randomBytes(24).toString("base64url");
    const csrf = randomBytes(32).toString("base64url");
    this.#consents.set(requestId, { ...request, csrfHash: hashSecret(csrf), expires: Date.now() + CONSENT_TTL_MS, attempts: 0 });
    return consentPage(this.#consentDetails(requestId, request.client, request.redirectUri), { "Set-Cookie": this.#csrfCookie(req, csrf) });
  }

  /** What the consent page shows. Nothing about the machines: whoever sees it has not proved anything yet. */
  #consentDetails(requestId: string, client: OAuthClient, redirectUri: string, error?: string): ConsentDetails {
    const name = printableName(client.metadata.client_name) ?? "An unnamed application";
    const documentUrl = isDocumentClientId(client.client_id) ? client.client_id : undefined;
    return { clientName: name, clientId: client.client_id, documentUrl, redirectUri, requestId, error };
  }

  /** Drops the source's oldest pending consent when it has its share; when the table is full, the oldest consent of
   *  the source holding the most (the first of them to have come, on a tie), never a quiet source's. */
  #makeRoomForConsent(source: string): void {
    const bySource = new Map<string, string[]>(); // request ids, oldest first; sources in order of their oldest
    for (const [id, consent] of this.#consents) {
      const ids = bySource.get(consent.source);
      if (ids) ids.push(id);
      else bySource.set(consent.source, [id]);
    }
    const own = bySource.get(source) ?? [];
    if (own.length >= MAX_PENDING_PER_ADDRESS) this.#consents.delete(own.shift()!);
    if (this.#consents.size < MAX_PENDING) return;
    const busiest = [...bySource.values()].reduce((most, ids) => (ids.length > most.length ? ids : most));
    this.#consents.delete(busiest[0]!);
  }

  /** The consent form's guard against cross-site requests: a cookie only our own pages set, SameSite=Strict, whose
   *  hash the pending request holds. */
  #csrfCookie(req: Request, value: string): string {
    const secure = this.base(req).startsWith("https:");
    const name = secure ? "__Host-code-remote-consent" : "code-remote-consent";
    return `${name}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${CONSENT_TTL_MS / 1000}${secure ? "; Secure" : ""}`;
  }

  /** POST /authorize: the owner's answer. Approve needs the owner secret; wrong secrets are penalised per address. */
  async #authorizeAnswer(req: Request, address: string): Promise<Response> {
    const wait = this.options.ownerSecretPenalties.retryAfter(address);
    if (wait > 0) return tooManyAttempts(wait, (message) => errorPage(429, "Too many attempts", message));
    const form = await readBody(req, "form");
    if (form instanceof Response) return form;
    const requestId = form.get("request_id") ?? "";
    const consent = this.#consents.get(requestId);
    if (!consent || consent.expires < Date.now()) return errorPage(400, "This approval page has expired", "Start again from your MCP client.");
    if (!this.#hasCsrfCookie(req, consent)) return errorPage(403, "Approval refused", "This form was not sent from the relay's own page. Start again from your MCP client.");
    const base = this.base(req);
    if (form.get("decision") !== "approve") {
      this.#consents.delete(requestId);
      this.options.audit.event("oauth_consent_denied", { address, detail: consent.client.client_id });
      return redirectWithError(consent.redirectUri, new OAuthError(OAuthErrorCode.AccessDenied, "The owner denied access."), consent.state, base);
    }
    if (!secretMatches(form.get("owner_secret") ?? "", this.options.ownerSecret)) return this.#wrongSecret(req, address, requestId, consent);
    this.#consents.delete(requestId);
    this.options.ownerSecretPenalties.succeeded(address);
    if (!this.#keepDocumentClient(consent)) return errorPage(400, "No room for another application", NO_ROOM_FOR_CLIENTS);
    const code = newSecret("code");
    this.#codes.set(hashSecret(code), { clientId: consent.client.client_id, redirectUri: consent.redirectUri, challenge: consent.challenge, resource: consent.resource, expires: Date.now() + CODE_TTL_MS });
    log("info", "oauth client approved", { client_id: consent.client.client_id, address });
    this.options.audit.event("oauth_consent_approved", { address, detail: consent.client.client_id });
    const target = new URL(consent.redirectUri);
    target.searchParams.set("code", code);
    if (consent.state !== null) target.searchParams.set("state", consent.state);
    target.searchParams.set("iss", base); // RFC 9207: the client can tell which server answered
    return new Response(null, { status: 302, headers: { Location: target.toString(), "Cache-Control": "no-store" } });
  }

  /** Keeps a client identified by its metadata document in the client table once the owner approves it, so its grant
   *  is listed and revoked like any other (a registered client is there already). False when the table is full. */
  #keepDocumentClient(consent: Consent): boolean {
    const { client } = consent;
    if (!isDocumentClientId(client.client_id)) return true;
    if (!this.options.store.client(client.client_id) && !this.#roomForClient()) return false;
    this.options.store.rememberDocumentClient(client, consent.source);
    return true;
  }

  #wrongSecret(req: Request, address: string, requestId: string, consent: Consent): Response {
    this.options.ownerSecretPenalties.failed(address, { path: "/authorize", reason: "wrong owner secret" });
    if (++consent.attempts >= MAX_CONSENT_ATTEMPTS) {
      this.#consents.delete(requestId);
      return errorPage(401, "Too many wrong attempts", "This approval is cancelled. Start again from your MCP client.");
    }
    const csrf = randomBytes(32).toString("base64url");
    consent.csrfHash = hashSecret(csrf);
    const details = this.#consentDetails(requestId, consent.client, consent.redirectUri, "Wrong owner secret. Try again.");
    return consentPage(details, { "Set-Cookie": this.#csrfCookie(req, csrf) }, 401);
  }

  #hasCsrfCookie(req: Request, consent: Consent): boolean {
    const cookies = (req.headers.get("cookie") ?? "").split(";").map((c) => c.trim());
    const value = cookies.map((c) => /^(?:__Host-)?code-remote-consent=(.+)$/.exec(c)?.[1]).find(Boolean);
    return value !== undefined && secretMatches(hashSecret(value), consent.csrfHash);
  }

  /** The resource a token will be bound to: one of our endpoints, or our whole origin when none was named. */
  #canonicalResource(req: Request, requested: string | null): string | undefined {
    const base = this.base(req);
    if (requested === null || requested === base || requested === `${base}/`) return `${base}/`;
    return [`${base}/mcp`, `${base}/sse`].find((r) => r === requested || `${r}/` === requested);
  }

  // --- tokens ---

  async #token(req: Request, address: string): Promise<Response> {
    const form = await readBody(req, "form");
    if (form instanceof Response) return form;
    const client = await this.#authenticateClient(req, form, address);
    if (client instanceof Response) return client;
    try {
      const grantType = form.get("grant_type");
      const tokens =
        grantType === "authorization_code"
          ? this.#redeemCode(req, client, form, address)
          : grantType === "refresh_token"
            ? this.#refresh(req, client, form, address)
            : undefined;
      if (!tokens) throw new OAuthError(OAuthErrorCode.UnsupportedGrantType, "grant_type must be authorization_code or refresh_token.");
      return Response.json({ ...tokens, token_type: "Bearer" }, { headers: { "Cache-Control": "no-store", Pragma: "no-cache" } });
    } catch (e) {
      if (e instanceof OAuthError) return oauthError(e, 400);
      throw e;
    }
  }

  /** The client behind a token or revoke request, or the refusal: a registered client by its secret (HTTP Basic, or
   *  client_id/client_secret in the body) or none, a client identified by a metadata document as the document says.
   *  As for bearer tokens (auth.ts), a client that authenticates is served whatever else failed from its address;
   *  only failures wait. An unknown client gets invalid_client, status 401, which tells Claude to register again. */
  async #authenticateClient(req: Request, form: URLSearchParams, address: string): Promise<OAuthClient | Response> {
    const basic = parseBasic(req.headers.get("authorization"));
    const assertion = form.get("client_assertion");
    const clientId = basic?.id ?? form.get("client_id") ?? claimedClient(assertion ?? "") ?? "";
    const secret = basic?.secret ?? form.get("client_secret");
    if (isDocumentClientId(clientId)) return this.#authenticateDocumentClient(req, form, address, clientId, secret !== null);
    if (assertion !== null) return this.#refuseClient(req, address, "client assertion from a registered client", "A client_assertion (private_key_jwt) is for clients identified by a metadata document URL; a registered client sends its client_secret.");
    const client = this.options.store.client(clientId);
    const secretOk = client && (!client.secret_hash || (secret !== null && secretMatches(hashSecret(secret), client.secret_hash)));
    if (client && secretOk) return client;
    return this.#refuseClient(req, address, client ? "wrong client secret" : "unknown client", client ? "Client authentication failed." : "Unknown client: register again.");
  }

  /** A client identified by its metadata document, authenticated as the document says: with `none` it sends no
   *  credential (PKCE binds its code), with `private_key_jwt` an assertion signed by one of the document's keys. */
  async #authenticateDocumentClient(req: Request, form: URLSearchParams, address: string, clientId: string, sentSecret: boolean): Promise<OAuthClient | Response> {
    let client: OAuthClient;
    try {
      client = await this.#documentClient(clientId, addressKey(address));
    } catch (e) {
      if (!(e instanceof CimdError)) throw e;
      return this.#refuseClient(req, address, "client metadata document refused", e.message);
    }
    const method = client.metadata.token_endpoint_auth_method;
    const assertion = form.get("client_assertion");
    if (method === "none" && !sentSecret && assertion === null) return client;
    if (method === "none" || sentSecret) {
      return this.#refuseClient(req, address, "credential its document does not name", `The metadata document at ${clientId} says token_endpoint_auth_method ${method}: send ${method === "none" ? "no client credential" : "a client_assertion, not a secret"}.`);
    }
    if (assertion === null || form.get("client_assertion_type") !== CLIENT_ASSERTION_TYPE) {
      return this.#refuseClient(req, address, "no client assertion", `The metadata document at ${clientId} asks for private_key_jwt: send a client_assertion with client_assertion_type ${CLIENT_ASSERTION_TYPE}.`);
    }
    return this.#checkAssertion(req, address, client, assertion);
  }

  /** A private_key_jwt client's assertion checked against the keys its document publishes, for an audience of ours:
   *  the issuer, the token endpoint, or the endpoint called. */
  async #checkAssertion(req: Request, address: string, client: OAuthClient, assertion: string): Promise<OAuthClient | Response> {
    const base = this.base(req);
    const audiences = [...new Set([base, `${base}/token`, `${base}${new URL(req.url).pathname}`])];
    try {
      await this.#verifyAssertion(assertion, client, { clientId: client.client_id, audiences, spent: this.#spentAssertions }, addressKey(address));
      return client;
    } catch (e) {
      if (e instanceof AssertionRefused) return this.#refuseClient(req, address, `client assertion refused: ${e.reason}`, e.message);
      if (e instanceof CimdError) return this.#refuseClient(req, address, "client key set refused", e.message);
      throw e;
    }
  }

  /** Verifies with the client's keys. A signature that fails with keys cached from a jwks_uri is checked once more
   *  with the set fetched afresh: the client may have rotated its keys (the jti is spent only once the signature
   *  verifies, so the second try is no replay). */
  async #verifyAssertion(assertion: string, client: OAuthClient, expected: Omit<Expectations, "keys">, source: string): Promise<void> {
    try {
      await verifyClientAssertion(assertion, { ...expected, keys: await this.#documents.keysOf(client, source) });
    } catch (e) {
      const rotated = e instanceof AssertionRefused && e.reason === "bad signature" && client.metadata.jwks_uri !== undefined;
      if (!rotated) throw e;
      await verifyClientAssertion(assertion, { ...expected, keys: await this.#documents.keysOf(client, source, true) });
    }
  }

  /** A failed client authentication: recorded against the address (logged and audited, as counts when repeated), and
   *  answered invalid_client, or 429 once the address must wait. */
  #refuseClient(req: Request, address: string, reason: string, message: string): Response {
    const wait = this.options.penalties.failed(address, { path: new URL(req.url).pathname, reason });
    if (wait > 0) return tooManyAttempts(wait, (text) => oauthError(new OAuthError(OAuthErrorCode.InvalidRequest, text), 429));
    return oauthError(new OAuthError(OAuthErrorCode.InvalidClient, message), 401);
  }

  #redeemCode(req: Request, client: OAuthClient, form: URLSearchParams, address: string) {
    const hash = hashSecret(form.get("code") ?? "");
    const code = this.#codes.get(hash);
    if (!code || code.expires < Date.now()) throw new OAuthError(OAuthErrorCode.InvalidGrant, "The authorization code is unknown or expired.");
    if (code.family) {
      this.options.store.revokeFamily(code.family); // a code redeemed twice may have been stolen: revoke what it gave
      this.#replayed("authorization code", client, address);
      throw new OAuthError(OAuthErrorCode.InvalidGrant, "The authorization code was already used.");
    }
    if (code.clientId !== client.client_id) throw new OAuthError(OAuthErrorCode.InvalidGrant, "The authorization code was issued to another client.");
    if (form.get("redirect_uri") !== code.redirectUri) throw new OAuthError(OAuthErrorCode.InvalidGrant, "redirect_uri does not match the authorization request.");
    const verifier = form.get("code_verifier") ?? "";
    if (!/^[A-Za-z0-9._~-]{43,128}$/.test(verifier) || createHash("sha256").update(verifier).digest("base64url") !== code.challenge) {
      throw new OAuthError(OAuthErrorCode.InvalidGrant, "The PKCE code_verifier does not match the code_challenge.");
    }
    this.#checkResourceUnchanged(req, form, code.resource);
    const { tokens, family } = this.options.store.approve({ client_id: client.client_id, scopes: [SCOPE], resource: code.resource });
    code.family = family;
    return tokens;
  }

  #refresh(req: Request, client: OAuthClient, form: URLSearchParams, address: string) {
    const spent = this.options.store.spendRefresh(form.get("refresh_token") ?? "", client.client_id);
    if (spent === "reused") {
      this.#replayed("refresh token", client, address);
      throw new OAuthError(OAuthErrorCode.InvalidGrant, "This refresh token was already used; its tokens are revoked. Authorize again.");
    }
    if (!spent) throw new OAuthError(OAuthErrorCode.InvalidGrant, "The refresh token is unknown, expired or revoked.");
    this.#checkResourceUnchanged(req, form, spent.resource);
    return this.options.store.issue({ client_id: client.client_id, scopes: spent.scopes, resource: spent.resource }, spent.family);
  }

  /** A code or refresh token presented a second time: one of the two presenters may have stolen it, so its grant
   *  was revoked (the client's sessions end with it if it has no other); the owner reads why in the log and audit. */
  #replayed(what: "authorization code" | "refresh token", client: OAuthClient, address: string): void {
    const name = printableName(client.metadata.client_name) ?? "unnamed";
    log("warn", `oauth ${what} used twice; its grant is revoked`, { client_id: client.client_id, name, address });
    this.options.audit.event("oauth_token_replayed", { address, detail: `${client.client_id} (${name}): ${what} used twice; its grant is revoked` });
  }

  /** RFC 8707: a resource named at the token endpoint must be the one that was authorized. */
  #checkResourceUnchanged(req: Request, form: URLSearchParams, granted: string): void {
    const requested = form.get("resource");
    if (requested !== null && this.#canonicalResource(req, requested) !== granted) {
      throw new OAuthError(OAuthErrorCode.InvalidTarget, "The resource differs from the one authorized.");
    }
  }

  // --- revocation (RFC 7009) ---

  async #revoke(req: Request, address: string): Promise<Response> {
    const form = await readBody(req, "form");
    if (form instanceof Response) return form;
    const client = await this.#authenticateClient(req, form, address);
    if (client instanceof Response) return client;
    this.options.store.revoke(form.get("token") ?? "", client.client_id);
    return new Response(null, { status: 200, headers: { "Cache-Control": "no-store" } }); // the same whether it existed or not
  }

  /** Drops expired consents and codes (both maps stay small: entries live minutes). */
  #prune(now = Date.now()): void {
    for (const [id, consent] of this.#consents) if (consent.expires < now) this.#consents.delete(id);
    for (const [hash, code] of this.#codes) if (code.expires < now) this.#codes.delete(hash);
  }

  /** Drops what has expired: consents, codes, tokens, lapsed grants, and the registrations the owner never
   *  approved, except those whose approval is under way (a consent page open, a code not yet redeemed). Runs before
   *  each registration and every minute (server.ts). */
  sweep(now = Date.now()): void {
    this.#prune(now);
    this.options.store.dropExpired(now);
    const underWay = new Set([...[...this.#consents.values()].map((c) => c.client.client_id), ...[...this.#codes.values()].map((c) => c.clientId)]);
    const dropped = this.options.store.dropUnapproved(Math.floor(now / 1000) - UNAPPROVED_CLIENT_TTL_S, underWay);
    if (dropped > 0) log("info", "oauth registrations never approved have expired", { clients: dropped });
  }
}

/** Records the owner's revocation of `client` (from the dashboard or the command line) in the audit log. */
export function auditClientRevoked(audit: AuditLog, client: OAuthClient, by: { address?: string; via: string }): void {
  const name = printableName(client.metadata.client_name) ?? "unnamed";
  audit.event("oauth_client_revoked", { address: by.address, detail: `${client.client_id} (${name}) ${by.via}` });
}

const NO_ROOM_FOR_CLIENTS = "This relay holds as many approved clients as it can; its owner must revoke some first (dashboard, or oauth-clients revoke).";

/** A value a request carried, quoted for a page (or "none"), cut short: it is a stranger's text. */
const quoted = (value: string | null) => (value === null ? "none" : JSON.stringify(value.slice(0, 100)));

// --- helpers ---

/** The metadata a client is held to, registered or published. */
interface ClientMetadata {
  redirect_uris: string[];
  token_endpoint_auth_method: string;
  grant_types?: string[];
  response_types?: string[];
  application_type?: string;
  jwks?: unknown;
  jwks_uri?: string;
  [key: string]: unknown;
}

/** A problem with a client's metadata (registered, or published in its document), or undefined. */
function checkClientMetadata(metadata: ClientMetadata, authMethods: string[]): string | undefined {
  if (metadata.redirect_uris.length === 0) return "redirect_uris must name at least one URI.";
  const redirectProblem = metadata.redirect_uris.map(redirectUriProblem).find((problem) => problem !== undefined);
  if (redirectProblem) return redirectProblem;
  if (!authMethods.includes(metadata.token_endpoint_auth_method)) return `token_endpoint_auth_method must be ${orList(authMethods)}, not ${quoted(metadata.token_endpoint_auth_method)}.`;
  if (metadata.token_endpoint_auth_method === "private_key_jwt" && metadata.jwks === undefined && !metadata.jwks_uri) return "private_key_jwt needs the client's public keys: jwks or jwks_uri.";
  if (metadata.application_type !== undefined && !["web", "native"].includes(metadata.application_type)) return `application_type must be web or native, not ${quoted(metadata.application_type)}.`;
  if (metadata.grant_types?.some((g) => !GRANT_TYPES.includes(g))) return "grant_types may only be authorization_code and refresh_token.";
  if (metadata.response_types?.some((r) => r !== "code")) return "response_types may only be code.";
  return undefined;
}

/** What is wrong with a redirect URI, or undefined: it must be HTTPS, or HTTP on a loopback host (a native app), and
 *  carry no fragment (OAuth 2.1 §2.3.1). */
function redirectUriProblem(uri: string): string | undefined {
  const url = new URL(uri);
  const loopback = ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
  if (url.hash) return `redirect_uri ${uri} must not have a fragment.`;
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) return `redirect_uri ${uri} must be https, or http on localhost.`;
  return undefined;
}

/** A metadata document's metadata narrowed to what this relay can use. A document serves every authorization server
 *  its client meets, so the redirect URIs, grant and response types this one cannot use are left out, not refused (a
 *  request must still name a redirect URI that is left); the authentication method is none when it names none. */
function usableDocumentMetadata(metadata: OAuthClient["metadata"]): ClientMetadata {
  return {
    ...metadata,
    token_endpoint_auth_method: metadata.token_endpoint_auth_method ?? "none",
    redirect_uris: metadata.redirect_uris.filter((uri) => redirectUriProblem(uri) === undefined),
    grant_types: (metadata.grant_types as string[] | undefined)?.filter((g) => GRANT_TYPES.includes(g)),
    response_types: (metadata.response_types as string[] | undefined)?.filter((r) => r === "code"),
  };
}

/** The redirect URI to answer to: exactly one the client registered (the only one, when it names none). */
function chooseRedirectUri(client: OAuthClient, requested: string | null): string | undefined {
  if (requested === null) return client.metadata.redirect_uris.length === 1 ? client.metadata.redirect_uris[0] : undefined;
  return client.metadata.redirect_uris.includes(requested) ? requested : undefined;
}

const orList = (items: string[]) => `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;

function redirectWithError(redirectUri: string, error: OAuthError, state: string | null, issuer: string): Response {
  const target = new URL(redirectUri);
  target.searchParams.set("error", error.code);
  target.searchParams.set("error_description", error.message);
  if (state !== null) target.searchParams.set("state", state);
  target.searchParams.set("iss", issuer);
  return new Response(null, { status: 302, headers: { Location: target.toString(), "Cache-Control": "no-store" } });
}

function oauthError(error: OAuthError, status: number): Response {
  return Response.json(error.toResponseObject(), { status, headers: { "Cache-Control": "no-store" } });
}

/** HTTP Basic client credentials (each part form-encoded, RFC 6749 §2.3.1), or undefined. */
function parseBasic(header: string | null): { id: string; secret: string } | undefined {
  const match = /^Basic +([A-Za-z0-9+/=]+)$/i.exec(header ?? "");
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon === -1) return undefined;
  try {
    return { id: decodeURIComponent(decoded.slice(0, colon)), secret: decodeURIComponent(decoded.slice(colon + 1)) };
  } catch {
    return undefined;
  }
}

/** Reads a small body as a form or JSON; an oversized or malformed one becomes the error response. */
async function readBody(req: Request, kind: "form"): Promise<URLSearchParams | Response>;
async function readBody(req: Request, kind: "json"): Promise<unknown>;
async function readBody(req: Request, kind: "form" | "json"): Promise<unknown> {
  const declared = Number(req.headers.get("content-length") ?? 0);
  const tooLarge = () => oauthError(new OAuthError(OAuthErrorCode.InvalidRequest, "The request body is too large."), 413);
  if (declared > MAX_OAUTH_BODY_BYTES) return tooLarge();
  const text = await req.text();
  if (text.length > MAX_OAUTH_BODY_BYTES) return tooLarge();
  if (kind === "form") return new URLSearchParams(text);
  try {
    return JSON.parse(text);
  } catch {
    return oauthError(new OAuthError(OAuthErrorCode.InvalidClientMetadata, "The body is not JSON."), 400);
  }
}
