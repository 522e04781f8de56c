// OAuth from the client's side, for tests: an OAuthClientProvider for the SDKs' own clients (what Claude-like clients
// run; the v1 and v2 clients take the same shape), and the owner's part of the flow (open the consent page, type the
// owner secret, approve) done with fetch.

import { createHash, randomBytes } from "node:crypto";
import type { AddClientAuthentication, OAuthClientInformationMixed, OAuthClientMetadata, OAuthClientProvider, OAuthDiscoveryState, OAuthTokens } from "@modelcontextprotocol/client";

/** How a TestOAuthProvider identifies itself: by registering (DCR), or by the URL of its metadata document (CIMD),
 *  signing its token requests when the document asks for private_key_jwt. */
export interface TestClientIdentity {
  authMethod?: "none" | "client_secret_post" | "client_secret_basic";
  clientMetadataUrl?: string;
  addClientAuthentication?: AddClientAuthentication;
}

/** Keeps what the SDK client stores in memory, and remembers where it wanted to send the user to log in. */
export class TestOAuthProvider implements OAuthClientProvider {
  readonly redirectUrl = "http://127.0.0.1:1/callback"; // never opened: the test reads the code from Location
  readonly authMethod: NonNullable<TestClientIdentity["authMethod"]>;
  readonly clientMetadataUrl?: string;
  readonly addClientAuthentication?: AddClientAuthentication;
  authorizationUrl?: URL;
  #client?: OAuthClientInformationMixed;
  #tokens?: OAuthTokens;
  #verifier = "";
  /** What the v2 client discovered before redirecting, so that finishAuth checks the answer came from that server. */
  #discovery?: OAuthDiscoveryState;

  constructor(identity: TestClientIdentity["authMethod"] | TestClientIdentity = "client_secret_post") {
    const given = typeof identity === "string" ? { authMethod: identity } : identity;
    this.authMethod = given.authMethod ?? "client_secret_post";
    this.clientMetadataUrl = given.clientMetadataUrl;
    this.addClientAuthentication = given.addClientAuthentication;
  }

  get clientMetadata(): OAuthClientMetadata {
    return {
      client_name: "Test client",
      redirect_uris: [this.redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: this.authMethod,
    };
  }

  clientInformation() {
    return this.#client;
  }
  saveClientInformation(info: OAuthClientInformationMixed) {
    this.#client = info;
  }
  tokens() {
    return this.#tokens;
  }
  saveTokens(tokens: OAuthTokens) {
    this.#tokens = tokens;
  }
  redirectToAuthorization(url: URL) {
    this.authorizationUrl = url;
  }
  saveCodeVerifier(verifier: string) {
    this.#verifier = verifier;
  }
  codeVerifier() {
    return this.#verifier;
  }
  saveDiscoveryState(state: OAuthDiscoveryState) {
    this.#discovery = state;
  }
  discoveryState() {
    return this.#discovery;
  }
}

/** Registers a new public client named "Claude" and returns the authorization URL it would open in the browser. */
export async function newAuthorizationUrl(origin: URL, redirectUri: string): Promise<string> {
  const registration = await fetch(new URL("/register", origin), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_name: "Claude", redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  });
  const { client_id } = (await registration.json()) as { client_id: string };
  return authorizationUrl(origin, client_id, redirectUri);
}

/** The authorization URL a client with `clientId` (registered, or a metadata document's URL) would open in the
 *  browser, with a PKCE challenge whose verifier nobody keeps (for pages that are looked at, not redeemed). */
export function authorizationUrl(origin: URL, clientId: string, redirectUri: string): string {
  const challenge = createHash("sha256").update(randomBytes(32).toString("base64url")).digest("base64url");
  const url = new URL("/authorize", origin);
  const params = { response_type: "code", client_id: clientId, redirect_uri: redirectUri, code_challenge: challenge, code_challenge_method: "S256", state: "xyz" };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.toString();
}

/** The consent page as a person sees it: its HTML, its hidden request id, and the cookie it set. */
export async function openConsent(
  authorizationUrl: URL | string,
  headers: Record<string, string> = {},
): Promise<{ response: Response; html: string; requestId: string; cookie: string }> {
  const response = await fetch(authorizationUrl, { redirect: "manual", headers });
  const html = await response.text();
  const requestId = /name="request_id" value="([^"]+)"/.exec(html)?.[1] ?? "";
  const cookie = (response.headers.get("set-cookie") ?? "").split(";")[0]!;
  return { response, html, requestId, cookie };
}

/** Answers a consent page: approve or deny with an owner secret. Returns the relay's response (302 on success). */
export async function answerConsent(
  origin: URL,
  consent: { requestId: string; cookie: string },
  answer: { secret?: string; decision?: "approve" | "deny"; headers?: Record<string, string> },
): Promise<Response> {
  const body = new URLSearchParams({ request_id: consent.requestId, owner_secret: answer.secret ?? "", decision: answer.decision ?? "approve" });
  return fetch(new URL("/authorize", origin), {
    method: "POST",
    redirect: "manual",
    headers: { "Content-Type": "application/x-www-form-urlencoded", Cookie: consent.cookie, ...answer.headers },
    body,
  });
}

/** The owner approves: open the consent page and submit the secret. Returns the authorization code. */
export async function approve(authorizationUrl: URL, secret: string): Promise<string> {
  const consent = await openConsent(authorizationUrl);
  const response = await answerConsent(new URL(authorizationUrl.origin), consent, { secret });
  const location = response.headers.get("location");
  const code = location ? new URL(location).searchParams.get("code") : null;
  if (!code) throw new Error(`consent did not redirect with a code (status ${response.status}): ${await response.text()}`);
  return code;
}

/** What a client holds once the owner approved it: its id and its tokens. */
export interface GrantInHand {
  clientId: string;
  access: string;
  refresh: string;
}

/** The whole flow by hand for a public client: register (named `name`), the owner approves with `ownerSecret`,
 *  redeem the code for tokens bound to `resource` (a path of the relay: "/mcp" or "/sse"). */
export async function obtainGrant(
  origin: URL,
  ownerSecret: string,
  options: { resource?: "/mcp" | "/sse"; name?: string; redirectUri?: string } = {},
): Promise<GrantInHand> {
  const redirectUri = options.redirectUri ?? "http://127.0.0.1:1/callback";
  const registration = await fetch(new URL("/register", origin), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_name: options.name ?? "Hand-made client", redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  });
  if (registration.status !== 201) throw new Error(`registration failed (${registration.status}): ${await registration.text()}`);
  const { client_id } = (await registration.json()) as { client_id: string };
  const verifier = randomBytes(32).toString("base64url");
  const resource = new URL(options.resource ?? "/mcp", origin).toString();
  const url = new URL("/authorize", origin);
  const params = {
    response_type: "code",
    client_id,
    redirect_uri: redirectUri,
    code_challenge: createHash("sha256").update(verifier).digest("base64url"),
    code_challenge_method: "S256",
    resource,
  };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  const code = await approve(url, ownerSecret);
  const response = await fetch(new URL("/token", origin), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: redirectUri, code_verifier: verifier, client_id, resource }),
  });
  if (response.status !== 200) throw new Error(`token request failed (${response.status}): ${await response.text()}`);
  const tokens = (await response.json()) as { access_token: string; refresh_token: string };
  return { clientId: client_id, access: tokens.access_token, refresh: tokens.refresh_token };
}

/** Spends a refresh token at /token; the relay's answer. */
export function refreshGrant(origin: URL, grant: Pick<GrantInHand, "clientId" | "refresh">): Promise<Response> {
  return fetch(new URL("/token", origin), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: grant.refresh, client_id: grant.clientId }),
  });
}
