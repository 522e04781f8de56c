// The owner's passkeys as the agent checks them (agent/passkeys.ts, agent/owner-keys.ts), against a software
// authenticator built here with WebCrypto: it makes real attestation objects and assertions (CBOR, authenticator
// data, signatures), so the tests go through @simplewebauthn/server as a browser's would. Enrolment and fingerprints
// for ES256, EdDSA and RS256; an approval that verifies, and each way one must be refused; the keys file; the digest
// of a call's arguments.

import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isoCBOR } from "@simplewebauthn/server/helpers";
import { ConfigError } from "../../agent/config.ts";
import { OwnerKeys } from "../../agent/owner-keys.ts";
import { argumentsDigest, fingerprintOf, PasskeyError, relayIdentity, verifyApproval, verifyEnrolment, type OwnerKey, type RelayIdentity } from "../../agent/passkeys.ts";
import { approvalStatement, PasskeyAssertion, PasskeyRegistration } from "../../protocol.ts";
import { AT, b64url, challengeOf, fromB64url, randomId, SoftAuthenticator, UP, UV, type Algorithm } from "../helpers/soft-authenticator.ts";

const base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "passkeys-test-")));
afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

const RELAY: RelayIdentity = { origin: "https://relay.example.com", rpId: "relay.example.com" };

const ENROL_CHALLENGE = b64url(crypto.getRandomValues(new Uint8Array(32)));

/** A passkey made and enrolled as enroll-owner does it. */
async function enrolled(algorithm: Algorithm = "ES256"): Promise<{ authenticator: SoftAuthenticator; key: OwnerKey }> {
  const authenticator = await SoftAuthenticator.make(algorithm, RELAY);
  const key = await verifyEnrolment(authenticator.register(ENROL_CHALLENGE), { challenge: ENROL_CHALLENGE, ...RELAY }, "phone");
  return { authenticator, key };
}

/** A statement as the agent builds it for one call. */
function statement(call = "req-1", forSeconds?: number): string {
  return approvalStatement({
    machine: "laptop",
    call,
    tool: "run_shell_command",
    challenge: { nonce: b64url(new Uint8Array(32).fill(7)), arguments_sha256: argumentsDigest({ command: "make" }), expires_at: "2030-01-01T00:00:00.000Z" },
    forSeconds,
  });
}

describe("relayIdentity", () => {
  test("the origin and RP ID come from the agent's own RELAY_URL", () => {
    expect(relayIdentity("wss://relay.example.com/ws/agent")).toEqual({ origin: "https://relay.example.com", rpId: "relay.example.com" });
    expect(relayIdentity("wss://relay.example.com:8443/ws/agent")).toEqual({ origin: "https://relay.example.com:8443", rpId: "relay.example.com" });
    expect(relayIdentity("ws://localhost:8080/ws/agent")).toEqual({ origin: "http://localhost:8080", rpId: "localhost" });
    expect(relayIdentity("wss://Relay.Example.com:443/ws/agent")).toEqual({ origin: "https://relay.example.com", rpId: "relay.example.com" });
  });
});

describe("enrolment", () => {
  for (const algorithm of ["ES256", "EdDSA", "RS256"] as const) {
    test(`a ${algorithm} passkey verifies, and its fingerprint is SHA-256 of the SPKI the browser would show`, async () => {
      const { authenticator, key } = await enrolled(algorithm);
      expect(key.fingerprint).toBe(await authenticator.expectedFingerprint());
      expect(key.fingerprint).toMatch(/^[0-9a-f]{4}( [0-9a-f]{4}){7}$/);
      expect(await fingerprintOf(key.public_key)).toBe(key.fingerprint);
      expect(key).toMatchObject({ id: authenticator.id, counter: 0, label: "phone", rp_id: RELAY.rpId, origin: RELAY.origin, transports: ["internal"] });
      expect(Date.parse(key.added_at)).toBeGreaterThan(Date.now() - 60_000);
    });
  }

  test("a passkey made for another challenge, site or RP ID, or without user verification, is refused with the reason", async () => {
    const authenticator = await SoftAuthenticator.make("ES256", RELAY);
    const expected = { challenge: ENROL_CHALLENGE, ...RELAY };
    const refusal = async (credential: PasskeyRegistration) => {
      const error = await verifyEnrolment(credential, expected, "x").then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(PasskeyError);
      return (error as Error).message;
    };
    expect(await refusal(authenticator.register(b64url(new Uint8Array(32))))).toContain("another enrolment");
    expect(await refusal(authenticator.register(ENROL_CHALLENGE, { origin: "https://evil.example" }))).toContain(`another site than ${RELAY.origin}`);
    expect(await refusal(authenticator.register(ENROL_CHALLENGE, { rpId: "evil.example" }))).toContain(`another RP ID than ${RELAY.rpId}`);
    expect(await refusal(authenticator.register(ENROL_CHALLENGE, { flags: UP | AT }))).toContain("without user verification");
    const renamed = authenticator.register(ENROL_CHALLENGE);
    const other = randomId();
    expect(await refusal({ ...renamed, id: other, rawId: other })).toContain("its id differs");
  });

  test("fingerprintOf refuses what is not a key it takes", async () => {
    await expect(fingerprintOf(b64url(Buffer.from("not cbor at all")))).rejects.toBeInstanceOf(PasskeyError);
    const p384 = isoCBOR.encode(new Map<number, number | Uint8Array>([[1, 2], [3, -35], [-1, 2], [-2, new Uint8Array(48)], [-3, new Uint8Array(48)]]));
    await expect(fingerprintOf(b64url(p384))).rejects.toThrow("ES256, EdDSA or RS256");
  });
});

describe("approvals", () => {
  for (const algorithm of ["ES256", "EdDSA", "RS256"] as const) {
    test(`a ${algorithm} assertion over the call's statement verifies, with the new counter`, async () => {
      const { authenticator, key } = await enrolled(algorithm);
      const verdict = await verifyApproval(await authenticator.assert(challengeOf(statement())), statement(), [key], RELAY);
      expect(verdict).toEqual({ ok: true, key, counter: 1 });
    });
  }

  test("a passkey that does not count (counter always 0) verifies every time", async () => {
    const { authenticator, key } = await enrolled();
    for (let i = 0; i < 2; i++) {
      expect(await verifyApproval(await authenticator.assert(challengeOf(statement()), { counter: 0 }), statement(), [key], RELAY)).toMatchObject({ ok: true, counter: 0 });
    }
  });

  const refusedBecause = async (assertion: PasskeyAssertion, keys: OwnerKey[], signed = statement(), relay = RELAY) => {
    const verdict = await verifyApproval(assertion, signed, keys, relay);
    expect(verdict.ok).toBe(false);
    return (verdict as { reason: string }).reason;
  };

  test("an assertion over another call's statement, or another scope, is refused", async () => {
    const { authenticator, key } = await enrolled();
    const other = await authenticator.assert(challengeOf(statement("req-2")));
    expect(await refusedBecause(other, [key])).toBe("an approval for another call, or an altered one");
    const once = await authenticator.assert(challengeOf(statement("req-1")));
    expect(await refusedBecause(once, [key], statement("req-1", 3600))).toBe("an approval for another call, or an altered one");
  });

  test("an assertion made on another site or for another RP ID is refused", async () => {
    const { authenticator, key } = await enrolled();
    const elsewhere = await authenticator.assert(challengeOf(statement()), { origin: "https://evil.example" });
    expect(await refusedBecause(elsewhere, [key])).toBe(`made on another site than ${RELAY.origin}`);
    const otherRp = await authenticator.assert(challengeOf(statement()), { rpId: "evil.example" });
    expect(await refusedBecause(otherRp, [key])).toBe(`made for another RP ID than ${RELAY.rpId}`);
    // The agent's RELAY_URL decides: an assertion for the real relay fails for an agent told of another one.
    const good = await authenticator.assert(challengeOf(statement()));
    expect(await refusedBecause(good, [key], statement(), { origin: "https://other.example", rpId: "other.example" })).toBe("made on another site than https://other.example");
  });

  test("an assertion without user verification, or without user presence, is refused", async () => {
    const { authenticator, key } = await enrolled();
    expect(await refusedBecause(await authenticator.assert(challengeOf(statement()), { flags: UP }), [key])).toContain("without user verification");
    expect(await refusedBecause(await authenticator.assert(challengeOf(statement()), { flags: UV }), [key])).toBe("without user presence");
  });

  test("a counter that did not grow is refused: a replayed signature, or a copied passkey", async () => {
    const { authenticator, key } = await enrolled();
    const stored = { ...key, counter: 5 };
    expect(await refusedBecause(await authenticator.assert(challengeOf(statement()), { counter: 5 }), [stored])).toContain("counter that did not grow");
    expect(await refusedBecause(await authenticator.assert(challengeOf(statement()), { counter: 3 }), [stored])).toContain("counter that did not grow");
    expect(await refusedBecause(await authenticator.assert(challengeOf(statement()), { counter: 0 }), [stored])).toContain("counter that did not grow");
    expect(await verifyApproval(await authenticator.assert(challengeOf(statement()), { counter: 6 }), statement(), [stored], RELAY)).toMatchObject({ ok: true, counter: 6 });
  });

  test("an assertion by a passkey that is not enrolled is refused, even a valid one", async () => {
    const { key } = await enrolled();
    const stranger = await SoftAuthenticator.make("ES256", RELAY);
    expect(await refusedBecause(await stranger.assert(challengeOf(statement())), [key])).toBe("a passkey that is not enrolled on this machine");
    expect(await refusedBecause(await stranger.assert(challengeOf(statement())), [])).toBe("a passkey that is not enrolled on this machine");
    // Another key claiming the enrolled one's id: the signature does not verify with the enrolled public key.
    const impostor = await stranger.assert(challengeOf(statement()));
    const claimed = { ...impostor, id: key.id, rawId: key.id };
    expect(await refusedBecause(claimed, [key])).toBe("a signature that does not verify with the enrolled passkey");
  });

  test("a tampered signature or authenticator data is refused", async () => {
    const { authenticator, key } = await enrolled();
    const assertion = await authenticator.assert(challengeOf(statement()));
    const signature = fromB64url(assertion.response.signature);
    signature[signature.length - 3]! ^= 0x01;
    const tampered = { ...assertion, response: { ...assertion.response, signature: b64url(signature) } };
    expect(await refusedBecause(tampered, [key])).toMatch(/does not verify|cannot be read/);
    const authData = fromB64url(assertion.response.authenticatorData);
    authData[36]! ^= 0x01; // counter's last byte: the signature no longer covers it
    const bumped = { ...assertion, response: { ...assertion.response, authenticatorData: b64url(authData) } };
    expect(await refusedBecause(bumped, [key])).toBe("a signature that does not verify with the enrolled passkey");
  });

  test("garbage never throws: it is refused with a reason", async () => {
    const { authenticator, key } = await enrolled();
    const assertion = await authenticator.assert(challengeOf(statement()));
    const notJson = { ...assertion, response: { ...assertion.response, clientDataJSON: b64url(Buffer.from("{not json")) } };
    expect(await refusedBecause(notJson, [key])).toBe("an approval for another call, or an altered one");
    const shortData = { ...assertion, response: { ...assertion.response, authenticatorData: b64url(new Uint8Array(10)) } };
    expect(await refusedBecause(shortData, [key])).toBe("a passkey response that cannot be read");
    const created = { ...assertion, response: { ...assertion.response, clientDataJSON: b64url(Buffer.from(JSON.stringify({ type: "webauthn.create", challenge: challengeOf(statement()), origin: RELAY.origin }))) } };
    expect(await refusedBecause(created, [key])).toBe("not a passkey signature (wrong type)");
    const brokenKey = { ...key, public_key: b64url(Buffer.from("nope")) };
    expect(await refusedBecause(assertion, [brokenKey])).toBe("a passkey response that cannot be read");
  });
});

describe("OwnerKeys", () => {
  const keyFor = (id: string, fingerprint: string, label = "phone"): OwnerKey => ({
    id,
    public_key: "pQECAyYgASFYIA",
    counter: 0,
    fingerprint,
    label,
    rp_id: RELAY.rpId,
    origin: RELAY.origin,
    added_at: "2025-01-02T03:04:05.000Z",
  });
  const FP1 = "3f9c 0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b";
  const FP2 = "aaaa bbbb cccc dddd eeee ffff 0000 1111";
  let n = 0;
  const freshFile = () => path.join(base, `keys-${++n}`, "owner-keys.json");

  test("no file is no key; add writes the file 600 and list reads it back", () => {
    const file = freshFile();
    const keys = new OwnerKeys(file);
    expect(keys.list()).toEqual([]);
    keys.add(keyFor("credential-one-AAAA", FP1));
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(new OwnerKeys(file).list()).toEqual([keyFor("credential-one-AAAA", FP1)]);
    expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual({ keys: [keyFor("credential-one-AAAA", FP1)] });
    keys.add({ ...keyFor("credential-one-AAAA", FP1), label: "again" }); // the same credential replaces its entry
    expect(keys.list().map((k) => k.label)).toEqual(["again"]);
    expect(fs.readdirSync(path.dirname(file))).toEqual(["owner-keys.json"]); // no temp file left behind
  });

  test("list hands out copies: changing one changes nothing stored", () => {
    const keys = new OwnerKeys(freshFile());
    keys.add(keyFor("credential-one-AAAA", FP1));
    keys.list()[0]!.counter = 99;
    expect(keys.list()[0]!.counter).toBe(0);
  });

  test("remove by id, by the start of an id, or by fingerprint (spaces and case aside)", () => {
    const keys = new OwnerKeys(freshFile());
    const add = () => {
      keys.add(keyFor("credential-one-AAAA", FP1, "phone"));
      keys.add(keyFor("credential-two-BBBB", FP2, "laptop"));
    };
    add();
    expect(keys.remove("credential-one-AAAA")?.label).toBe("phone");
    expect(keys.list().map((k) => k.label)).toEqual(["laptop"]);
    expect(keys.remove(FP2.replace(/ /g, "").toUpperCase())?.label).toBe("laptop");
    expect(keys.list()).toEqual([]);
    add();
    expect(() => keys.remove("credential-")).toThrow(PasskeyError); // the start of both
    expect(keys.remove("credential-tw…")?.label).toBe("laptop"); // as `owner-keys` lists it
    expect(keys.remove("cred")).toBeUndefined(); // too short to be taken as the start of one
    expect(keys.remove("nothing-like-it")).toBeUndefined();
    expect(keys.list().map((k) => k.label)).toEqual(["phone"]);
  });

  test("updateCounter stores the counter of the last approval", () => {
    const file = freshFile();
    const keys = new OwnerKeys(file);
    keys.add(keyFor("credential-one-AAAA", FP1));
    keys.add(keyFor("credential-two-BBBB", FP2));
    keys.updateCounter("credential-two-BBBB", 7);
    keys.updateCounter("unknown", 9); // nothing to update
    expect(new OwnerKeys(file).list().map((k) => k.counter)).toEqual([0, 7]);
  });

  test("a change made by another process is read at the next look (the daemon picks up an enrolment)", () => {
    const file = freshFile();
    const daemon = new OwnerKeys(file);
    expect(daemon.list()).toEqual([]);
    new OwnerKeys(file).add(keyFor("credential-one-AAAA", FP1)); // enroll-owner, in another process
    expect(daemon.list().map((k) => k.id)).toEqual(["credential-one-AAAA"]);
    new OwnerKeys(file).remove(FP1); // owner-keys remove
    expect(daemon.list()).toEqual([]);
    // Written in place with the same size: its stat still changes.
    new OwnerKeys(file).add(keyFor("credential-one-AAAA", FP1, "aaaa"));
    expect(daemon.list()[0]!.label).toBe("aaaa");
    const text = fs.readFileSync(file, "utf8").replace('"aaaa"', '"bbbb"');
    fs.writeFileSync(file, text);
    expect(daemon.list()[0]!.label).toBe("bbbb");
    fs.rmSync(file);
    expect(daemon.list()).toEqual([]);
  });

  test("a damaged file is an error that says what to do, never an empty list", () => {
    const file = freshFile();
    const keys = new OwnerKeys(file);
    keys.add(keyFor("credential-one-AAAA", FP1));
    fs.writeFileSync(file, "{ not json");
    expect(() => keys.list()).toThrow(ConfigError);
    expect(() => keys.list()).toThrow(/owner-keys\.json \(the owner's passkeys\) cannot be read: it is not JSON\. .*enroll-owner/);
    fs.writeFileSync(file, JSON.stringify({ keys: [{ ...keyFor("x", FP1), fingerprint: "short" }] }));
    expect(() => keys.list()).toThrow(/is damaged at keys\.0\.fingerprint/);
    fs.writeFileSync(file, JSON.stringify([]));
    expect(() => keys.list()).toThrow(/is damaged/);
    expect(() => keys.add(keyFor("credential-two-BBBB", FP2))).toThrow(ConfigError); // nor overwritten by an add
  });

  test("a file other users may change is refused: whoever writes it could enrol a key", () => {
    const file = freshFile();
    const keys = new OwnerKeys(file);
    keys.add(keyFor("credential-one-AAAA", FP1));
    fs.chmodSync(file, 0o664);
    expect(() => new OwnerKeys(file).list()).toThrow(/can be changed by other users \(mode 664\).*chmod 600/);
    fs.chmodSync(file, 0o644); // readable is fine: these are public keys
    expect(new OwnerKeys(file).list()).toHaveLength(1);
  });

  test("an enrolled key round-trips through the file and still verifies approvals", async () => {
    const { authenticator, key } = await enrolled("EdDSA");
    const file = freshFile();
    new OwnerKeys(file).add(key);
    const stored = new OwnerKeys(file);
    const verdict = await verifyApproval(await authenticator.assert(challengeOf(statement())), statement(), stored.list(), RELAY);
    expect(verdict.ok).toBe(true);
    if (!verdict.ok) return;
    stored.updateCounter(verdict.key.id, verdict.counter);
    // The same assertion again: the stored counter has moved past it.
    const replay = await authenticator.assert(challengeOf(statement()), { counter: 1 });
    expect(await verifyApproval(replay, statement(), stored.list(), RELAY)).toMatchObject({ ok: false, reason: expect.stringContaining("counter") });
  });
});

describe("argumentsDigest", () => {
  test("is the hex SHA-256 of the canonical JSON: keys sorted at every level, no spaces", () => {
    const digest = argumentsDigest({ b: 1, a: { d: [3, { y: 1, x: 2 }], c: "z" } });
    expect(digest).toBe(createHash("sha256").update('{"a":{"c":"z","d":[3,{"x":2,"y":1}]},"b":1}').digest("hex"));
    expect(argumentsDigest({ a: { c: "z", d: [3, { x: 2, y: 1 }] }, b: 1 })).toBe(digest);
  });

  test("any change to the arguments changes it; array order counts", () => {
    const digest = argumentsDigest({ argv: ["rm", "-rf", "build"] });
    expect(argumentsDigest({ argv: ["rm", "build", "-rf"] })).not.toBe(digest);
    expect(argumentsDigest({ argv: ["rm", "-rf", "build "] })).not.toBe(digest);
    expect(argumentsDigest({ argv: ["rm", "-rf", "build"], env: {} })).not.toBe(digest);
  });

  test("undefined members are left out as JSON leaves them out", () => {
    expect(argumentsDigest({ a: 1, b: undefined })).toBe(argumentsDigest({ a: 1 }));
    expect(argumentsDigest([undefined])).toBe(argumentsDigest([null]));
  });
});
