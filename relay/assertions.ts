// Client assertions (RFC 7523 §2.2 and §3, as OAuth's private_key_jwt uses them): a JWT a client signs with its
// private key to authenticate at /token, checked against the public keys its metadata document publishes (ChatGPT's
// document asks for this). Verified with WebCrypto: the four algorithms accepted (RS256, PS256, ES256, EdDSA) need
// only base64url, JSON and one crypto.subtle.verify, so no JWT library is added. Nothing is trusted before the
// signature verifies: the header only picks the key, and "none" or shared-secret (HS*) algorithms are refused.

import type { webcrypto } from "node:crypto";

type JsonWebKey = webcrypto.JsonWebKey;

/** The one client_assertion_type accepted. */
export const CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/** An assertion may be valid for this long at most (the MCP SDK's signer uses 300 s), and clocks may differ by this. */
export const MAX_ASSERTION_LIFETIME_S = 10 * 60;
const CLOCK_SKEW_S = 60;
/** Keys of one set tried at most (without a kid, each compatible key is tried). */
const MAX_KEYS_TRIED = 10;
/** Assertion ids remembered at most, each until its assertion expires (so at most MAX_ASSERTION_LIFETIME_S): only a
 *  key holder can add one, so reaching this means a client gone wild, and new assertions are refused until ids expire. */
const MAX_SPENT_ASSERTIONS = 10_000;
/** RSA keys shorter than this are refused (RFC 7518 §3.3). */
const MIN_RSA_MODULUS_BYTES = 256;

/** Per algorithm: the WebCrypto parameters to import a JWK with and to verify with, and the JWK it needs. */
const ALGORITHMS = {
  RS256: { kty: "RSA", importAs: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, verifyAs: { name: "RSASSA-PKCS1-v1_5" } },
  PS256: { kty: "RSA", importAs: { name: "RSA-PSS", hash: "SHA-256" }, verifyAs: { name: "RSA-PSS", saltLength: 32 } },
  ES256: { kty: "EC", crv: "P-256", importAs: { name: "ECDSA", namedCurve: "P-256" }, verifyAs: { name: "ECDSA", hash: "SHA-256" } },
  EdDSA: { kty: "OKP", crv: "Ed25519", importAs: { name: "Ed25519" }, verifyAs: { name: "Ed25519" } },
} as const;
type Algorithm = keyof typeof ALGORITHMS;
export const SIGNING_ALGORITHMS = Object.keys(ALGORITHMS) as Algorithm[];

/** An assertion refused: `reason` in a few words for the audit ("expired", "replayed"), `message` for the client. */
export class AssertionRefused extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** The client an assertion says it comes from (its `iss`), read without verifying anything: it only tells whose keys
 *  to check it with. */
export function claimedClient(assertion: string): string | undefined {
  const iss = (decodePart(assertion.split(".")[1] ?? "") as { iss?: unknown } | undefined)?.iss;
  return typeof iss === "string" ? iss : undefined;
}

/** The assertion ids already used, each kept until its assertion expires: a second use is a replay. */
export class SpentAssertions {
  readonly #expiries = new Map<string, number>(); // by client and jti

  /** Records `jti` of `clientId` as used: "replayed" when it already was, "full" when the table is. */
  spend(clientId: string, jti: string, expiresMs: number, now = Date.now()): "spent" | "replayed" | "full" {
    for (const [key, expires] of this.#expiries) if (expires < now) this.#expiries.delete(key);
    const key = `${clientId}\n${jti}`;
    if (this.#expiries.has(key)) return "replayed";
    if (this.#expiries.size >= MAX_SPENT_ASSERTIONS) return "full";
    this.#expiries.set(key, expiresMs + CLOCK_SKEW_S * 1000);
    return "spent";
  }
}

export interface Expectations {
  clientId: string;
  /** What `aud` may name: this server's issuer and the endpoint called. */
  audiences: string[];
  /** The client's public keys (a JWKS's `keys`). */
  keys: unknown[];
  spent: SpentAssertions;
  now?: number;
}

/** Checks a client assertion: its signature by one of the client's keys, then iss = sub = the client, an audience of
 *  ours, a short life not yet over, and a jti never seen before (spent only once all else passed, so a forged copy
 *  cannot burn the real one's). Throws AssertionRefused saying what failed. */
export async function verifyClientAssertion(assertion: string, expected: Expectations): Promise<void> {
  const now = expected.now ?? Date.now();
  const [headerPart = "", payloadPart = "", signaturePart = "", ...rest] = assertion.split(".");
  const header = decodePart(headerPart) as { alg?: unknown; kid?: unknown; crit?: unknown } | undefined;
  const claims = decodePart(payloadPart) as Record<string, unknown> | undefined;
  if (!header || !claims || rest.length > 0 || !/^[A-Za-z0-9_-]+$/.test(signaturePart)) throw new AssertionRefused("malformed", "The client_assertion is not a signed JWT.");
  const alg = header.alg;
  if (typeof alg !== "string" || !(alg in ALGORITHMS)) {
    throw new AssertionRefused("algorithm refused", `The client_assertion is signed with ${JSON.stringify(String(alg).slice(0, 20))}; this relay accepts ${SIGNING_ALGORITHMS.join(", ")}.`);
  }
  if (header.crit !== undefined) throw new AssertionRefused("critical header", "The client_assertion has critical header parameters this relay does not understand.");
  const signed = new TextEncoder().encode(`${headerPart}.${payloadPart}`);
  const signature = Buffer.from(signaturePart, "base64url");
  if (!(await signedByOneOf(expected.keys, alg as Algorithm, header.kid, signature, signed))) {
    throw new AssertionRefused("bad signature", "The client_assertion's signature does not verify with any key the client publishes.");
  }
  checkClaims(claims, expected, now);
  const spent = expected.spent.spend(expected.clientId, claims.jti as string, (claims.exp as number) * 1000, now);
  if (spent === "replayed") throw new AssertionRefused("replayed", "This client_assertion was already used (its jti): sign a new one for every request.");
  if (spent === "full") throw new AssertionRefused("too many assertions", "This relay has taken too many client assertions in the last minutes; try again in a few minutes.");
}

/** The claims of a verified assertion, checked (RFC 7523 §3). */
function checkClaims(claims: Record<string, unknown>, expected: Expectations, now: number): void {
  const { iss, sub, aud, exp, nbf, iat, jti } = claims;
  const seconds = now / 1000;
  if (iss !== expected.clientId || sub !== expected.clientId) throw new AssertionRefused("wrong issuer", "The client_assertion's iss and sub must both be the client_id.");
  const audiences = Array.isArray(aud) ? aud : [aud];
  if (!audiences.some((a) => typeof a === "string" && expected.audiences.includes(a))) {
    throw new AssertionRefused("wrong audience", `The client_assertion's aud must be this server: ${expected.audiences.join(" or ")}.`);
  }
  if (typeof exp !== "number") throw new AssertionRefused("no expiry", "The client_assertion has no exp.");
  if (exp <= seconds - CLOCK_SKEW_S) throw new AssertionRefused("expired", "The client_assertion has expired: sign a new one for every request.");
  if (exp > seconds + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) {
    throw new AssertionRefused("lives too long", `The client_assertion is valid for too long: its exp may be at most ${MAX_ASSERTION_LIFETIME_S / 60} minutes ahead.`);
  }
  if ((typeof nbf === "number" && nbf > seconds + CLOCK_SKEW_S) || (typeof iat === "number" && iat > seconds + CLOCK_SKEW_S)) {
    throw new AssertionRefused("not yet valid", "The client_assertion is not valid yet (nbf or iat in the future): check the client's clock.");
  }
  if (typeof jti !== "string" || jti.length === 0 || jti.length > 256) throw new AssertionRefused("no jti", "The client_assertion needs a jti (a unique id, at most 256 characters).");
}

/** Whether one of `keys` fit for `alg` (and named `kid`, when the header names one) verifies `signature`. */
async function signedByOneOf(keys: unknown[], alg: Algorithm, kid: unknown, signature: Uint8Array<ArrayBuffer>, signed: Uint8Array<ArrayBuffer>): Promise<boolean> {
  const candidates = keys.filter((key) => fitsAlgorithm(key, alg) && (kid === undefined || (key as { kid?: unknown }).kid === kid)).slice(0, MAX_KEYS_TRIED);
  for (const jwk of candidates) {
    try {
      const key = await crypto.subtle.importKey("jwk", publicPart(jwk as JsonWebKey), ALGORITHMS[alg].importAs, false, ["verify"]);
      if (await crypto.subtle.verify(ALGORITHMS[alg].verifyAs, key, signature, signed)) return true;
    } catch {
      // a key that does not import (a malformed member of the set) verifies nothing; the next one may
    }
  }
  return false;
}

/** Whether a JWK can check `alg`: its type and curve, its declared alg and use (when given), an RSA modulus long enough. */
function fitsAlgorithm(key: unknown, alg: Algorithm): boolean {
  if (typeof key !== "object" || key === null) return false;
  const jwk = key as { kty?: unknown; crv?: unknown; alg?: unknown; use?: unknown; n?: unknown };
  const wanted = ALGORITHMS[alg];
  if (jwk.kty !== wanted.kty || ("crv" in wanted && jwk.crv !== wanted.crv)) return false;
  if ((jwk.alg !== undefined && jwk.alg !== alg) || (jwk.use !== undefined && jwk.use !== "sig")) return false;
  return wanted.kty !== "RSA" || (typeof jwk.n === "string" && Buffer.from(jwk.n, "base64url").length >= MIN_RSA_MODULUS_BYTES);
}

/** Only the public members of a JWK: WebCrypto would refuse a set's extra members (key_ops, a private d) or their
 *  combination with the algorithm, and a public key is all verifying needs. */
function publicPart(jwk: JsonWebKey): JsonWebKey {
  const { kty, n, e, crv, x, y } = jwk;
  return Object.fromEntries(Object.entries({ kty, n, e, crv, x, y }).filter(([, value]) => value !== undefined));
}

/** A base64url JSON part of a JWT as an object, or undefined. */
function decodePart(part: string): object | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(part)) return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}
