// OAuth from the client's side, for tests: an OAuthClientProvider for the SDK's own client (what Claude-like clients
// run), and the owner's part of the flow (open the consent page, type the owner secret, approve) done with fetch.

import { createHash, randomBytes } from "node:crypto";
import type { OAuthClientProvider } from "@modelcontextprotocol/sdk/client/auth.js";
import type { OAuthClientInformationMixed, OAuthClientMetadata, OAuthTokens } from "@modelcontextprotocol/sdk/shared/auth.js";

/** Keeps what the SDK client stores in memory, and remembers where it wanted to send the user to log in. */
export class TestOAuthProvider implements OAuthClientProvider {
  readonly redirectUrl = "http://127.0.0.1:1/callback"; // never opened: the test reads the code from Location
  authorizationUrl?: URL;
  #client?: OAuthClientInformationMixed;
  #tokens?: OAuthTokens;
  #verifier = "";

  constructor(readonly authMethod: "none" | "client_secret_post" | "client_secret_basic" = "client_secret_post") {}

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
}

/** Registers a new public client named "Claude" and returns the authorization URL it would open in the browser. */
export async function newAuthorizationUrl(origin: URL, redirectUri: string): Promise<string> {
  const registration = await fetch(new URL("/register", origin), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_name: "Claude", redirect_uris: [redirectUri], token_endpoint_auth_method: "none" }),
  });
  const { client_id } = (await registration.json()) as { client_id: string };
  const challenge = createHash("sha256").update(randomBytes(32).toString("base64url")).digest("base64url");
  const url = new URL("/authorize", origin);
  const params = { response_type: "code", client_id, redirect_uri: redirectUri, code_challenge: challenge, code_challenge_method: "S256", state: "xyz" };
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
