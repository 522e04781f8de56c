// The owner's passkeys, as the agent checks them: enrolment (the public key a browser made, verified and
// fingerprinted so the owner can compare it with what the page shows) and approvals (an assertion over the exact
// call, verified against a key the agent enrolled itself). The relay carries both but cannot make either: it does
// not hold the owner's passkey, and it cannot swap in a key of its own without the fingerprints differing.
// The WebAuthn parsing and signature checks are @simplewebauthn/server's; this file decides what to expect and turns
// the library's errors into short reasons for the owner and the audit log.

import { createHash, type webcrypto } from "node:crypto";
import { verifyAuthenticationResponse, verifyRegistrationResponse, type AuthenticationResponseJSON, type RegistrationResponseJSON, type VerifiedRegistrationResponse } from "@simplewebauthn/server";
import { cose, decodeClientDataJSON, decodeCredentialPublicKey, isoBase64URL } from "@simplewebauthn/server/helpers";
import type { PasskeyAssertion, PasskeyRegistration } from "../protocol.ts";

export class PasskeyError extends Error {}

/** The origin a passkey must be used on and the RP ID it must be made for: the relay's, as this agent dials it. */
export interface RelayIdentity {
  origin: string;
  rpId: string;
}

/** An enrolled passkey, as owner-keys.json stores it. */
export interface OwnerKey {
  /** The credential id (base64url), as assertions name it. */
  id: string;
  /** The COSE public key (base64url) the authenticator made. */
  public_key: string;
  /** The authenticator's signature counter at the last use (0 for the many passkeys that do not count). */
  counter: number;
  fingerprint: string;
  label: string;
  rp_id: string;
  origin: string;
  added_at: string;
  transports?: string[];
}

/** The signature algorithms a browser may make the passkey with (the enrolment page offers the same three). */
const ALGORITHMS = [cose.COSEALG.ES256, cose.COSEALG.EdDSA, cose.COSEALG.RS256];

/** From the agent's own RELAY_URL: ws→http, wss→https, path dropped; rpId = hostname. Never throws on a RELAY_URL
 *  that config.ts accepted (an IP address gives an RP ID no browser takes: enroll-owner says so). */
export function relayIdentity(relayUrl: string): RelayIdentity {
  const url = new URL(relayUrl);
  const secure = url.protocol === "wss:" || url.protocol === "https:";
  return { origin: `${secure ? "https" : "http"}://${url.host}`, rpId: url.hostname };
}

/** hex SHA-256 of the canonical JSON of `args` (object keys sorted at every level, no spaces). */
export function argumentsDigest(args: unknown): string {
  return createHash("sha256").update(canonicalJson(args)).digest("hex");
}

/** JSON.stringify's text with the keys of every object sorted, so equal arguments always give one digest. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => (item === undefined ? "null" : canonicalJson(item))).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record).filter((key) => record[key] !== undefined).sort();
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/** Verifies what the browser made for `challenge` (base64url); throws PasskeyError with a clear reason. */
export async function verifyEnrolment(
  credential: PasskeyRegistration,
  expected: { challenge: string } & RelayIdentity,
  label: string,
): Promise<OwnerKey> {
  let verified: VerifiedRegistrationResponse;
  try {
    verified = await verifyRegistrationResponse({
      response: credential as RegistrationResponseJSON,
      expectedChallenge: expected.challenge,
      expectedOrigin: expected.origin,
      expectedRPID: expected.rpId,
      requireUserPresence: true,
      requireUserVerification: true,
      supportedAlgorithmIDs: ALGORITHMS,
    });
  } catch (e) {
    throw new PasskeyError(`the passkey was not accepted: ${libraryReason(e, expected, "enrolment")}`);
  }
  if (!verified.verified) throw new PasskeyError("the passkey was not accepted: its attestation does not verify");
  const made = verified.registrationInfo.credential;
  // The id the browser reported must be the one the authenticator put in its signed data: assertions name it.
  if (made.id !== credential.id) throw new PasskeyError("the passkey was not accepted: its id differs from the one its authenticator reported");
  const publicKey = isoBase64URL.fromBuffer(made.publicKey);
  return {
    id: made.id,
    public_key: publicKey,
    counter: made.counter,
    fingerprint: await fingerprintOf(publicKey),
    label,
    rp_id: expected.rpId,
    origin: expected.origin,
    added_at: new Date().toISOString(),
    ...(made.transports?.length ? { transports: made.transports } : {}),
  };
}

export type ApprovalVerdict = { ok: true; key: OwnerKey; counter: number } | { ok: false; reason: string };

/** Verifies an approval: the assertion must be by one of `keys`, over SHA-256(statement) as its challenge, from the
 *  expected origin and RP ID, with user presence and verification, and a counter above the stored one (or both 0).
 *  Never throws: whatever is wrong with the assertion comes back as a short reason. */
export async function verifyApproval(assertion: PasskeyAssertion, statement: string, keys: readonly OwnerKey[], expected: RelayIdentity): Promise<ApprovalVerdict> {
  const refuse = (reason: string): ApprovalVerdict => ({ ok: false, reason });
  const key = keys.find((k) => k.id === assertion.id);
  if (!key) return refuse("a passkey that is not enrolled on this machine");
  const challenge = createHash("sha256").update(statement, "utf8").digest("base64url");
  // Checked before the library, which would say the same in words meant for developers.
  if (signedChallenge(assertion) !== challenge) return refuse("an approval for another call, or an altered one");
  try {
    const result = await verifyAuthenticationResponse({
      response: assertion as AuthenticationResponseJSON,
      expectedChallenge: challenge,
      expectedOrigin: expected.origin,
      expectedRPID: expected.rpId,
      credential: { id: key.id, publicKey: isoBase64URL.toBuffer(key.public_key), counter: key.counter },
      requireUserVerification: true,
    });
    if (!result.verified) return refuse("a signature that does not verify with the enrolled passkey");
    return { ok: true, key, counter: result.authenticationInfo.newCounter };
  } catch (e) {
    return refuse(libraryReason(e, expected, "approval"));
  }
}

/** The challenge the browser says it signed, or undefined when clientDataJSON cannot be read. */
function signedChallenge(assertion: PasskeyAssertion): string | undefined {
  try {
    const challenge = decodeClientDataJSON(assertion.response.clientDataJSON).challenge;
    return typeof challenge === "string" ? challenge : undefined;
  } catch {
    return undefined;
  }
}

/** A short reason for an error the library threw, in the owner's words rather than the library's. Never echoes what
 *  the browser (or the relay) sent: the reason goes to the audit log and to the model. */
function libraryReason(error: unknown, expected: RelayIdentity, what: "enrolment" | "approval"): string {
  const code = (error as { code?: unknown }).code;
  // Matched on how the library's messages start: their ends quote what the browser sent, which anyone could word.
  const message = error instanceof Error ? error.message : "";
  if (code === "UNEXPECTED_ORIGIN" || /^Unexpected response origin/.test(message)) return `made on another site than ${expected.origin}`;
  if (code === "UNEXPECTED_RP_ID" || /^Unexpected RP ID/.test(message)) return `made for another RP ID than ${expected.rpId}`;
  if (/^Detected cross-origin|^Unexpected (cross-origin|top origin)/.test(message)) return `made inside a page of another site than ${expected.origin}`;
  if (/^Unexpected (registration|authentication) response challenge/.test(message)) {
    return what === "approval" ? "an approval for another call, or an altered one" : "made for another enrolment (its challenge is not this one's)";
  }
  if (/^Unexpected (registration|authentication) response type/.test(message)) return what === "approval" ? "not a passkey signature (wrong type)" : "not a new passkey (wrong type)";
  if (/^User verification/.test(message)) return "without user verification (the passkey must ask for a PIN, fingerprint or face)";
  if (/^User (not present|presence)/.test(message)) return "without user presence";
  if (/^Response counter/.test(message)) return "a signature counter that did not grow: a replayed signature, or a copied passkey";
  if (/^Unexpected public key alg|missing numeric alg/.test(message)) return "a key of a kind this machine does not take (ES256, EdDSA or RS256 only)";
  if (/attestation/i.test(message)) return "an attestation that does not verify";
  return "a passkey response that cannot be read";
}

/** "xxxx xxxx xxxx xxxx xxxx xxxx xxxx xxxx" from SHA-256 of the SPKI DER of a COSE public key (base64url): what the
 *  enrolment page shows for the key the browser made (from getPublicKey(), which is SPKI DER). */
export async function fingerprintOf(cosePublicKey: string): Promise<string> {
  const { jwk, algorithm } = webCryptoKey(cosePublicKey);
  let spki: ArrayBuffer;
  try {
    const key = await crypto.subtle.importKey("jwk", jwk, algorithm, true, ["verify"]);
    spki = await crypto.subtle.exportKey("spki", key);
  } catch {
    throw new PasskeyError("the passkey's public key is not a valid key");
  }
  const hex = createHash("sha256").update(new Uint8Array(spki)).digest("hex").slice(0, 32);
  return hex.match(/.{4}/g)!.join(" ");
}

/** The COSE key as a JWK and the WebCrypto algorithm to import it with: ES256 (EC2 P-256), EdDSA (OKP Ed25519), RS256. */
function webCryptoKey(cosePublicKey: string): { jwk: webcrypto.JsonWebKey; algorithm: webcrypto.EcKeyImportParams | webcrypto.RsaHashedImportParams | webcrypto.Algorithm } {
  const key = decodeCoseKey(cosePublicKey);
  const b64 = (bytes: Uint8Array<ArrayBuffer> | undefined) => (bytes ? isoBase64URL.fromBuffer(bytes) : "");
  if (cose.isCOSEPublicKeyEC2(key) && key.get(cose.COSEKEYS.crv) === cose.COSECRV.P256) {
    return { jwk: { kty: "EC", crv: "P-256", x: b64(key.get(cose.COSEKEYS.x)), y: b64(key.get(cose.COSEKEYS.y)) }, algorithm: { name: "ECDSA", namedCurve: "P-256" } };
  }
  if (cose.isCOSEPublicKeyOKP(key) && key.get(cose.COSEKEYS.crv) === cose.COSECRV.ED25519) {
    return { jwk: { kty: "OKP", crv: "Ed25519", x: b64(key.get(cose.COSEKEYS.x)) }, algorithm: { name: "Ed25519" } };
  }
  if (cose.isCOSEPublicKeyRSA(key)) {
    return { jwk: { kty: "RSA", n: b64(key.get(cose.COSEKEYS.n)), e: b64(key.get(cose.COSEKEYS.e)) }, algorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } };
  }
  throw new PasskeyError("the passkey's public key is of a kind this machine does not take (ES256, EdDSA or RS256 only)");
}

function decodeCoseKey(cosePublicKey: string): cose.COSEPublicKey {
  let decoded: unknown;
  try {
    decoded = decodeCredentialPublicKey(isoBase64URL.toBuffer(cosePublicKey));
  } catch {
    decoded = undefined;
  }
  // Any CBOR decodes to something: only a map can be a COSE key.
  if (!(decoded instanceof Map)) throw new PasskeyError("the passkey's public key cannot be read (not a COSE key)");
  return decoded as cose.COSEPublicKey;
}
