// The pure parts of client metadata documents (cimd.ts) and client assertions (assertions.ts): which addresses a
// document may come from, which client_id URLs name one, how long a fetched one is kept and how many, and the checks
// of a private_key_jwt assertion for each algorithm accepted, including the classic forgeries (alg none, a public key
// used as an HMAC secret). Assertions are signed by the MCP SDK's own signer. The flows run against a real relay in
// test/e2e/cimd.test.ts.

import { describe, expect, test } from "bun:test";
import { createHmac, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { createPrivateKeyJwtAuth } from "@modelcontextprotocol/client";
import { AssertionRefused, SpentAssertions, verifyClientAssertion, type Expectations } from "../../relay/assertions.ts";
import { BoundedCache, cacheLifetimeMs, clientIdUrlProblem, DEFAULT_CACHE_TTL_MS, isPublicAddress, MAX_CACHE_TTL_MS } from "../../relay/cimd.ts";

describe("where a metadata document may come from", () => {
  test.each(["93.184.215.14", "8.8.8.8", "2606:4700::6810:85e5", "2a00:1450:4001:82b::200e"])("%s, a public address, is allowed", (address) => {
    expect(isPublicAddress(address)).toBe(true);
  });

  test.each([
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "198.18.0.1",
    "::1", "::", "fd00::1", "fdaa::3", "fe80::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:7f00:1", "64:ff9b::a00:1", "2002:a00:1::1", "2001:db8::1", "not an address",
  ])("%s is refused", (address) => {
    expect(isPublicAddress(address)).toBe(false);
  });

  test("loopback is allowed only when testing, and nothing else private with it", () => {
    expect(isPublicAddress("127.0.0.1", true)).toBe(true);
    expect(isPublicAddress("::1", true)).toBe(true);
    expect(isPublicAddress("10.0.0.1", true)).toBe(false);
    expect(isPublicAddress("169.254.169.254", true)).toBe(false);
  });
});

describe("which client_id URLs can name a metadata document", () => {
  test.each(["https://claude.ai/oauth/claude-code-client-metadata", "https://chatgpt.com/oauth/client.json", "https://app.example:8443/c?v=2"])("%s can", (id) => {
    expect(clientIdUrlProblem(id)).toBeUndefined();
  });

  test.each([
    ["http://app.example/client.json", "https"],
    ["https://app.example/", "path"],
    ["https://app.example", "path"],
    ["https://app.example/client.json#x", "fragment"],
    ["https://user:pw@app.example/client.json", "user name"],
    ["https://app.example/a/../client.json", ". or .."],
    ["https://app.example/a/%2E%2e/client.json", ". or .."],
    ["https://app.example/./client.json", ". or .."],
    ["not a url:", "not a URL"],
  ])("%s cannot (%s)", (id, problem) => {
    expect(clientIdUrlProblem(id)).toContain(problem);
  });
});

describe("how long a fetched document is kept", () => {
  test.each([
    [null, DEFAULT_CACHE_TTL_MS],
    ["public", DEFAULT_CACHE_TTL_MS],
    ["max-age=60", 60_000],
    ["public, max-age=600", 600_000],
    ["max-age=31536000", MAX_CACHE_TTL_MS],
    ["no-store", 0],
    ["max-age=600, no-cache", 0],
    ["max-age=0", 0],
  ])("Cache-Control %p: %p ms", (header, ms) => {
    expect(cacheLifetimeMs(header)).toBe(ms);
  });

  test("the cache holds at most its bound, least recently used out first, each entry until it expires", () => {
    let now = 0;
    const cache = new BoundedCache<string>(3, () => now);
    for (const key of ["a", "b", "c"]) cache.set(key, key, 1_000);
    expect(cache.get("a")).toBe("a"); // a is now the most recently used
    cache.set("d", "d", 1_000);
    expect([cache.get("a"), cache.get("b"), cache.get("c"), cache.get("d")]).toEqual(["a", undefined, "c", "d"]);
    expect(cache.size).toBe(3);
    cache.set("e", "e", 0); // not kept at all
    expect(cache.get("e")).toBeUndefined();
    now = 1_000;
    expect(cache.get("a")).toBeUndefined();
    expect(cache.size).toBe(2);
  });
});

// --- client assertions ---

const CLIENT = "https://chatgpt.example/oauth/client.json";
const ISSUER = "https://relay.example";

/** A key pair and its public JWK, for each algorithm accepted. */
function keysFor(alg: "RS256" | "PS256" | "ES256" | "EdDSA"): { privateKey: KeyObject; jwk: Record<string, unknown> } {
  const { privateKey, publicKey } =
    alg === "ES256" ? generateKeyPairSync("ec", { namedCurve: "P-256" }) : alg === "EdDSA" ? generateKeyPairSync("ed25519") : generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { privateKey, jwk: { ...publicKey.export({ format: "jwk" }), kid: `${alg}-key` } };
}

/** An assertion signed by the MCP SDK's private_key_jwt signer. */
async function signed(privateKey: KeyObject, alg: string, options: { iss?: string; audience?: string; lifetimeSeconds?: number; claims?: Record<string, unknown> } = {}): Promise<string> {
  const params = new URLSearchParams();
  const sign = createPrivateKeyJwtAuth({
    issuer: options.iss ?? CLIENT,
    subject: CLIENT,
    privateKey: privateKey.export({ format: "jwk" }) as Record<string, unknown>,
    alg,
    audience: options.audience ?? ISSUER,
    lifetimeSeconds: options.lifetimeSeconds,
    claims: options.claims,
  });
  await sign(new Headers(), params, new URL(`${ISSUER}/token`), undefined);
  return params.get("client_assertion")!;
}

/** An RS256 assertion signed without the SDK, for headers and keys its signer does not make. */
function signedByHand(privateKey: KeyObject, header: Record<string, unknown>): string {
  const body = `${b64(header)}.${b64(claims())}`;
  return `${body}.${sign("sha256", Buffer.from(body), privateKey).toString("base64url")}`;
}

const expecting = (keys: unknown[], spent = new SpentAssertions()): Expectations => ({ clientId: CLIENT, audiences: [ISSUER, `${ISSUER}/token`], keys, spent });
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
const claims = () => ({ iss: CLIENT, sub: CLIENT, aud: ISSUER, exp: Math.floor(Date.now() / 1000) + 60, jti: crypto.randomUUID() });

/** Why `assertion` is refused (AssertionRefused's reason), or "accepted". */
async function verdict(assertion: string, expected: Expectations): Promise<string> {
  try {
    await verifyClientAssertion(assertion, expected);
    return "accepted";
  } catch (e) {
    if (e instanceof AssertionRefused) return e.reason;
    throw e;
  }
}

describe("a client assertion", () => {
  test.each(["RS256", "PS256", "ES256", "EdDSA"] as const)("signed with %s by a key of the client is accepted, once", async (alg) => {
    const { privateKey, jwk } = keysFor(alg);
    const expected = expecting([keysFor(alg).jwk, jwk]); // another key of the same kind is in the set too
    const assertion = await signed(privateKey, alg);
    expect(await verdict(assertion, expected)).toBe("accepted");
    expect(await verdict(assertion, expected)).toBe("replayed");
  });

  test("is refused when forged, expired, too long-lived, for another audience, or from another issuer", async () => {
    const { privateKey, jwk } = keysFor("RS256");
    const stranger = keysFor("RS256").privateKey;
    const cases: [Promise<string>, string][] = [
      [signed(stranger, "RS256"), "bad signature"],
      [signed(privateKey, "RS256", { lifetimeSeconds: -120 }), "expired"],
      [signed(privateKey, "RS256", { lifetimeSeconds: 3_600 }), "lives too long"],
      [signed(privateKey, "RS256", { audience: "https://other.example" }), "wrong audience"],
      [signed(privateKey, "RS256", { iss: "https://other.example/client.json" }), "wrong issuer"],
      [signed(privateKey, "RS256", { claims: { nbf: Math.floor(Date.now() / 1000) + 600 } }), "not yet valid"],
    ];
    for (const [assertion, reason] of cases) expect(await verdict(await assertion, expecting([jwk]))).toBe(reason);
  });

  test("alg none and an HMAC keyed with the client's public key (algorithm confusion) are refused", async () => {
    const { jwk } = keysFor("RS256");
    const unsigned = `${b64({ alg: "none" })}.${b64(claims())}.`;
    expect(await verdict(unsigned, expecting([jwk]))).toBe("malformed");
    expect(await verdict(`${unsigned}AAAA`, expecting([jwk]))).toBe("algorithm refused");
    const body = `${b64({ alg: "HS256" })}.${b64(claims())}`;
    const mac = createHmac("sha256", JSON.stringify(jwk)).update(body).digest("base64url");
    expect(await verdict(`${body}.${mac}`, expecting([jwk]))).toBe("algorithm refused");
  });

  test("only a key fit for it is tried: the kid named, the right type, use sig, an RSA modulus of 2048 bits or more", async () => {
    const { privateKey, jwk } = keysFor("RS256");
    const kidAssertion = signedByHand(privateKey, { alg: "RS256", kid: "RS256-key" });
    expect(await verdict(kidAssertion, expecting([{ ...jwk, kid: "another" }]))).toBe("bad signature");
    expect(await verdict(kidAssertion, expecting([{ ...jwk, kid: "another" }, jwk]))).toBe("accepted");
    const assertion = await signed(privateKey, "RS256"); // no kid: each fit key is tried
    expect(await verdict(assertion, expecting([{ ...jwk, use: "enc" }]))).toBe("bad signature");
    expect(await verdict(assertion, expecting([{ ...jwk, alg: "PS256" }]))).toBe("bad signature");
    const weak = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const weakAssertion = signedByHand(weak.privateKey, { alg: "RS256" }); // the SDK's signer refuses such a key
    expect(await verdict(weakAssertion, expecting([weak.publicKey.export({ format: "jwk" })]))).toBe("bad signature");
  });

  test("assertion ids are remembered until their assertion expires, and no more than the table holds", () => {
    const spent = new SpentAssertions();
    expect(spent.spend(CLIENT, "j1", 1_000, 0)).toBe("spent");
    expect(spent.spend(CLIENT, "j1", 1_000, 500)).toBe("replayed");
    expect(spent.spend("https://other.example/c.json", "j1", 1_000, 500)).toBe("spent"); // another client's id space
    expect(spent.spend(CLIENT, "j1", 200_000, 100_000)).toBe("spent"); // long expired (with the clock skew): forgotten
    for (let i = 0; i < 10_000; i++) spent.spend(CLIENT, `many-${i}`, 500_000, 100_000);
    expect(spent.spend(CLIENT, "one-more", 500_000, 100_000)).toBe("full");
  });
});
