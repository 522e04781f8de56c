// A passkey in software, built with WebCrypto: it makes the browser's JSON for navigator.credentials.create and .get
// with real attestation objects and assertions (CBOR, authenticator data, signatures), so tests go through
// @simplewebauthn/server as a browser's would, without a browser.

import { createHash } from "node:crypto";
import { isoCBOR } from "@simplewebauthn/server/helpers";
import { PasskeyAssertion, PasskeyRegistration } from "../../protocol.ts";

/** The relay as a passkey sees it: the page's origin, and the RP ID the passkey is made for. */
export interface PasskeyRelay {
  origin: string;
  rpId: string;
}

export const b64url = (bytes: Uint8Array | ArrayBuffer) => Buffer.from(bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes).toString("base64url");
export const fromB64url = (text: string) => new Uint8Array(Buffer.from(text, "base64url"));
export const sha256 = (bytes: Uint8Array | string) => new Uint8Array(createHash("sha256").update(bytes).digest());
const concat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
export const randomId = () => b64url(crypto.getRandomValues(new Uint8Array(16)));
export const challengeOf = (statement: string) => b64url(sha256(statement));

/** Authenticator data flags. */
export const UP = 0x01;
export const UV = 0x04;
export const AT = 0x40;

export type Algorithm = "ES256" | "EdDSA" | "RS256";

/** An ECDSA signature as WebCrypto makes it (r || s) in the DER form WebAuthn carries: SEQUENCE { INTEGER r, INTEGER s }. */
function derSignature(raw: Uint8Array): Uint8Array {
  const integer = (bytes: Uint8Array) => {
    let start = 0;
    while (start < bytes.length - 1 && bytes[start] === 0) start++;
    const body = bytes[start]! & 0x80 ? concat(new Uint8Array([0]), bytes.subarray(start)) : bytes.subarray(start);
    return concat(new Uint8Array([0x02, body.length]), body);
  };
  const half = raw.length / 2;
  const body = concat(integer(raw.subarray(0, half)), integer(raw.subarray(half)));
  return concat(new Uint8Array([0x30, body.length]), body);
}

/** A passkey in software: makes the browser's JSON for navigator.credentials.create and .get. */
export class SoftAuthenticator {
  readonly id = randomId();
  counter = 0;

  private constructor(
    readonly algorithm: Algorithm,
    readonly keys: CryptoKeyPair,
    readonly cose: Map<number, number | Uint8Array>,
    readonly relay: PasskeyRelay,
  ) {}

  static async make(algorithm: Algorithm, relay: PasskeyRelay): Promise<SoftAuthenticator> {
    const params =
      algorithm === "ES256"
        ? { name: "ECDSA", namedCurve: "P-256" }
        : algorithm === "EdDSA"
          ? { name: "Ed25519" }
          : { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" };
    const keys = (await crypto.subtle.generateKey(params, true, ["sign", "verify"])) as CryptoKeyPair;
    const jwk = await crypto.subtle.exportKey("jwk", keys.publicKey);
    const cose = new Map<number, number | Uint8Array>(
      algorithm === "ES256"
        ? [[1, 2], [3, -7], [-1, 1], [-2, fromB64url(jwk.x!)], [-3, fromB64url(jwk.y!)]]
        : algorithm === "EdDSA"
          ? [[1, 1], [3, -8], [-1, 6], [-2, fromB64url(jwk.x!)]]
          : [[1, 3], [3, -257], [-1, fromB64url(jwk.n!)], [-2, fromB64url(jwk.e!)]],
    );
    return new SoftAuthenticator(algorithm, keys, cose, relay);
  }

  /** SHA-256 of the public key in SubjectPublicKeyInfo DER, as a browser's getPublicKey() gives it, grouped. */
  async expectedFingerprint(): Promise<string> {
    const spki = new Uint8Array(await crypto.subtle.exportKey("spki", this.keys.publicKey));
    return Buffer.from(sha256(spki).subarray(0, 16)).toString("hex").match(/.{4}/g)!.join(" ");
  }

  /** What navigator.credentials.create returns for `challenge`, attestation "none". */
  register(challenge: string, options: { origin?: string; rpId?: string; flags?: number } = {}): PasskeyRegistration {
    const { origin = this.relay.origin, rpId = this.relay.rpId, flags = UP | UV | AT } = options;
    const credentialId = fromB64url(this.id);
    const authData = concat(
      sha256(rpId),
      new Uint8Array([flags]),
      new Uint8Array(4), // counter 0
      new Uint8Array(16), // AAGUID: none
      new Uint8Array([credentialId.length >> 8, credentialId.length & 0xff]),
      credentialId,
      isoCBOR.encode(this.cose),
    );
    const attestationObject = isoCBOR.encode(new Map<string, string | Uint8Array | Map<string, string>>([["fmt", "none"], ["attStmt", new Map<string, string>()], ["authData", authData]]));
    const clientDataJSON = JSON.stringify({ type: "webauthn.create", challenge, origin, crossOrigin: false });
    return PasskeyRegistration.parse({
      id: this.id,
      rawId: this.id,
      type: "public-key",
      response: { clientDataJSON: b64url(Buffer.from(clientDataJSON)), attestationObject: b64url(attestationObject), transports: ["internal"] },
      clientExtensionResults: {},
    });
  }

  /** What navigator.credentials.get returns for `challenge`; the counter grows by one unless told what to say. */
  async assert(challenge: string, options: { origin?: string; rpId?: string; flags?: number; counter?: number } = {}): Promise<PasskeyAssertion> {
    const { origin = this.relay.origin, rpId = this.relay.rpId, flags = UP | UV } = options;
    const counter = options.counter ?? ++this.counter;
    const authData = concat(sha256(rpId), new Uint8Array([flags]), new Uint8Array([counter >>> 24, (counter >>> 16) & 0xff, (counter >>> 8) & 0xff, counter & 0xff]));
    const clientDataJSON = Buffer.from(JSON.stringify({ type: "webauthn.get", challenge, origin, crossOrigin: false }));
    const signed = concat(authData, sha256(clientDataJSON));
    const params = this.algorithm === "ES256" ? { name: "ECDSA", hash: "SHA-256" } : this.algorithm === "EdDSA" ? { name: "Ed25519" } : { name: "RSASSA-PKCS1-v1_5" };
    const raw = new Uint8Array(await crypto.subtle.sign(params, this.keys.privateKey, signed));
    const signature = this.algorithm === "ES256" ? derSignature(raw) : raw;
    return PasskeyAssertion.parse({
      id: this.id,
      rawId: this.id,
      type: "public-key",
      response: { clientDataJSON: b64url(clientDataJSON), authenticatorData: b64url(authData), signature: b64url(signature) },
      clientExtensionResults: {},
    });
  }
}

