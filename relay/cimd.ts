// Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, MCP 2026-07-28 client registration):
// a client whose client_id is an https URL publishes its metadata at that URL, and the relay reads it there instead
// of keeping a registration. Fetching a URL a stranger chose is a server-side request forgery risk, so every fetch
// (documents, and the JWKS a private_key_jwt client points to) goes through one guard: https only; the host
// resolved once, refused when any of its addresses is not public, and the connection made to the address checked
// (so a second DNS answer cannot swap in a private one); no redirects; JSON only, 64 KiB within 5 s. What was
// fetched is cached as its Cache-Control allows, within bounds. The policy on the metadata itself (which redirect
// URIs, which authentication methods) is oauth.ts's, shared with registration.

import { lookup } from "node:dns/promises";
import { OAuthClientMetadataSchema } from "@modelcontextprotocol/core";
import type { OAuthClient } from "./credentials.ts";
import { rememberLatest } from "./limits.ts";
import { addressBytes, inNetworks, parseCidr } from "./networks.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** A metadata document or JWKS bigger than this is refused unread: real ones are a few hundred bytes. */
export const MAX_DOCUMENT_BYTES = 64 * 1024;
/** The whole fetch (DNS, connection, TLS, body) must be done within this. */
export const FETCH_TIMEOUT_MS = 5_000;
/** Documents and key sets kept at most (64 KiB each at worst); the least recently used goes first. */
export const MAX_CACHED = 100;
/** How long a fetched document is used at most, whatever its Cache-Control says (a client that removes a redirect
 *  URI is believed within this), and how long when it says nothing. */
export const MAX_CACHE_TTL_MS = 60 * 60 * 1000;
export const DEFAULT_CACHE_TTL_MS = 5 * 60 * 1000;
/** Fetches under way at once, in all and per source address: anyone may ask /authorize to fetch a URL of their
 *  choosing, so a flood of slow URLs holds a few slots for 5 s each, not the relay. */
const MAX_FETCHES_IN_FLIGHT = 16;
const MAX_FETCHES_PER_SOURCE = 4;
/** A host's addresses tried in turn when one refuses the connection (an IPv6 address with no IPv6 route). */
const MAX_ADDRESSES_TRIED = 3;

/** Where a metadata document may not be fetched from: anything but the public internet (RFC 6890 special-purpose
 *  ranges: this network, private, shared address space (CGNAT), loopback, link-local, documentation, benchmarking,
 *  multicast and reserved; IPv6 outside global unicast, unique-local, link-local, and the ranges that embed IPv4). */
const NON_PUBLIC_NETWORKS = [
  "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
  "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
  "::/3", "4000::/2", "8000::/1", "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20",
].map(parseCidr);
const LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"].map(parseCidr);

/** Why a metadata document (or key set) cannot be used, in words for the person or client that meets it. */
export class CimdError extends Error {}

/** Whether `clientId` is meant as a metadata document's URL rather than a registration: registered ids are
 *  base64url and never hold a ":", so anything URL-like (an http:// one too) is judged, and refused, as a URL. */
export const isDocumentClientId = (clientId: string) => clientId.includes(":");

/** What is wrong with a client_id URL (draft §3: https, a path, no fragment, no user name, no dot segments), or
 *  undefined. Checked on the text as sent, since `new URL` would quietly resolve "/a/../b". */
export function clientIdUrlProblem(clientId: string): string | undefined {
  let url: URL;
  try {
    url = new URL(clientId);
  } catch {
    return "it is not a URL";
  }
  if (url.protocol !== "https:") return "it must be an https URL";
  if (url.pathname === "/" || url.pathname === "") return "it must have a path (e.g. https://example.com/client.json)";
  if (url.hash || clientId.includes("#")) return "it must not have a fragment";
  if (url.username || url.password) return "it must not carry a user name or password";
  const rawPath = clientId.slice(clientId.indexOf("/", "https://".length)).split(/[?#]/)[0]!;
  const dotSegment = (segment: string) => [".", ".."].includes(segment.replace(/%2e/gi, "."));
  if (rawPath.split("/").some(dotSegment)) return "its path must not have . or .. segments";
  return undefined;
}

/** How long a response may be reused, from its Cache-Control: 0 for no-store or no-cache (not kept at all),
 *  max-age within MAX_CACHE_TTL_MS, DEFAULT_CACHE_TTL_MS when it says neither. */
export function cacheLifetimeMs(cacheControl: string | null): number {
  const directives = (cacheControl ?? "").toLowerCase().split(",").map((d) => d.trim());
  if (directives.includes("no-store") || directives.includes("no-cache")) return 0;
  const maxAge = directives.map((d) => /^max-age=(\d+)$/.exec(d)?.[1]).find((v) => v !== undefined);
  return maxAge === undefined ? DEFAULT_CACHE_TTL_MS : Math.min(Number(maxAge) * 1000, MAX_CACHE_TTL_MS);
}

/** A map that keeps at most `maxEntries`, each until its own expiry; the least recently used goes first. */
export class BoundedCache<V> {
  readonly #entries = new Map<string, { value: V; expires: number }>(); // insertion order = least recently used first

  constructor(
    readonly maxEntries: number,
    readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.#entries.size;
  }

  get(key: string): V | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    this.#entries.delete(key);
    if (entry.expires <= this.now()) return undefined;
    this.#entries.set(key, entry);
    return entry.value;
  }

  /** Keeps `value` for `ttlMs` (not at all when 0), dropping the least recently used beyond maxEntries. */
  set(key: string, value: V, ttlMs: number): void {
    if (ttlMs <= 0) {
      this.#entries.delete(key);
      return;
    }
    rememberLatest(this.#entries, key, { value, expires: this.now() + ttlMs }, this.maxEntries);
  }
}

export interface DocumentsOptions {
  /** PEM of a CA to trust and permission to fetch from loopback: CIMD_TEST_CA_FILE, for tests only. */
  testCa?: string;
  now?: () => number;
}

/** A JSON document fetched through the guard, and how long it may be reused. */
interface Fetched {
  json: unknown;
  ttlMs: number;
}

/** The metadata documents of URL-identified clients, and the keys of those that sign their assertions. */
export class ClientMetadataDocuments {
  readonly #cache: BoundedCache<unknown>;
  /** Fetches under way by URL, so that requests arriving together fetch once; and how many each source started. */
  readonly #pending = new Map<string, Promise<Fetched>>();
  readonly #bySource = new Map<string, number>();

  constructor(readonly options: DocumentsOptions = {}) {
    this.#cache = new BoundedCache(MAX_CACHED, options.now);
    if (options.testCa) log("warn", "CIMD_TEST_CA_FILE is set: metadata documents are fetched from loopback too, trusting its CA. For tests only, never in production.");
  }

  /** The client that the document at `clientId` describes, as a registration would (metadata as published, no
   *  secret), checked for what makes it a metadata document: a JSON object whose client_id is its own URL, valid
   *  client metadata with a name, no secret. Throws CimdError saying what is wrong. */
  async client(clientId: string, source: string): Promise<OAuthClient> {
    const problem = clientIdUrlProblem(clientId);
    if (problem) throw new CimdError(`The client_id ${clientId.slice(0, 200)} cannot name a metadata document: ${problem}.`);
    const document = await this.#cached(clientId, source, "metadata document");
    const fields = typeof document === "object" && document !== null && !Array.isArray(document) ? (document as Record<string, unknown>) : undefined;
    if (!fields) throw new CimdError(`The metadata document at ${clientId} is not a JSON object.`);
    if (fields.client_id !== clientId) {
      throw new CimdError(`The metadata document at ${clientId} names another client_id (${JSON.stringify(String(fields.client_id).slice(0, 200))}): a document must name exactly the URL it is served at.`);
    }
    if ("client_secret" in fields || "client_secret_expires_at" in fields) throw new CimdError(`The metadata document at ${clientId} holds a client_secret, which a published document must never do.`);
    const parsed = OAuthClientMetadataSchema.safeParse(fields);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new CimdError(`The metadata document at ${clientId} is not valid client metadata: ${issue?.path.join(".") || "it"}: ${issue?.message}.`);
    }
    if (!parsed.data.client_name) throw new CimdError(`The metadata document at ${clientId} has no client_name, which a metadata document must have.`);
    return { client_id: clientId, secret_hash: null, metadata: parsed.data, created_at: Math.floor((this.options.now ?? Date.now)() / 1000) };
  }

  /** The public keys a private_key_jwt client signs with: its document's `jwks`, or what its `jwks_uri` serves
   *  (fetched through the same guard, and cached alike). `fresh` skips the cache, for a key that was just rotated. */
  async keysOf(client: OAuthClient, source: string, fresh = false): Promise<unknown[]> {
    const { jwks, jwks_uri: uri } = client.metadata as { jwks?: unknown; jwks_uri?: string };
    const set = jwks ?? (uri ? await this.#cached(uri, source, "JWKS", fresh) : undefined);
    const keys = (set as { keys?: unknown } | undefined)?.keys;
    if (!Array.isArray(keys)) throw new CimdError(`The client ${client.client_id} publishes no key set (jwks with "keys", or a jwks_uri serving one) to check its signature with.`);
    return keys;
  }

  async #cached(url: string, source: string, what: string, fresh = false): Promise<unknown> {
    const cached = fresh ? undefined : this.#cache.get(url);
    if (cached !== undefined) return cached;
    const fetched = await this.#fetchOnce(url, source, what);
    this.#cache.set(url, fetched.json, fetched.ttlMs);
    return fetched.json;
  }

  /** One fetch per URL at a time, within the in-flight limits. */
  #fetchOnce(url: string, source: string, what: string): Promise<Fetched> {
    const pending = this.#pending.get(url);
    if (pending) return pending;
    const started = this.#bySource.get(source) ?? 0;
    if (this.#pending.size >= MAX_FETCHES_IN_FLIGHT || started >= MAX_FETCHES_PER_SOURCE) {
      return Promise.reject(new CimdError(`The relay is fetching too many client metadata documents at once; try again in a few seconds.`));
    }
    this.#bySource.set(source, started + 1);
    const fetching = fetchJson(new URL(url), what, this.options.testCa).finally(() => {
      this.#pending.delete(url);
      const left = (this.#bySource.get(source) ?? 1) - 1;
      if (left > 0) this.#bySource.set(source, left);
      else this.#bySource.delete(source);
    });
    this.#pending.set(url, fetching);
    return fetching;
  }
}

// --- the guarded fetch ---

/** Fetches `url` as JSON through the guard (see the top of this file). `testCa` also allows loopback addresses. */
async function fetchJson(url: URL, what: string, testCa: string | undefined): Promise<Fetched> {
  const signal = AbortSignal.timeout(FETCH_TIMEOUT_MS);
  const where = `The ${what} at ${url.href.slice(0, 200)}`;
  try {
    if (url.protocol !== "https:") throw new CimdError(`${where} is not https: the relay fetches only https URLs.`);
    const addresses = await withSignal(vettedAddresses(url.hostname, testCa !== undefined), signal);
    const response = await connectPinned(url, addresses, signal, testCa);
    if (response.status >= 300 && response.status < 400) {
      throw new CimdError(`${where} answered with a redirect (HTTP ${response.status}); the relay follows none: serve the document at that URL itself.`);
    }
    if (!response.ok) throw new CimdError(`${where} answered HTTP ${response.status}.`);
    const type = response.headers.get("content-type") ?? "";
    if (!/^application\/([\w.-]+\+)?json\s*(;|$)/i.test(type)) throw new CimdError(`${where} is not JSON (Content-Type ${JSON.stringify(type.slice(0, 100))}); serve it as application/json.`);
    const text = await readCapped(response, where);
    return { json: parseJson(text, where), ttlMs: cacheLifetimeMs(response.headers.get("cache-control")) };
  } catch (e) {
    if (e instanceof CimdError) throw e;
    if (signal.aborted) throw new CimdError(`${where} did not arrive within ${FETCH_TIMEOUT_MS / 1000} s.`);
    throw new CimdError(`${where} could not be fetched (${describeFailure(e)}).`);
  }
}

/** The addresses `hostname` resolves to (an address literal stands for itself), each checked: one that is not public
 *  (loopback allowed only for tests) refuses the whole host, since the resolver's next answer could be that one. */
async function vettedAddresses(hostname: string, allowLoopback: boolean): Promise<string[]> {
  const literal = addressBytes(hostname) ? hostname.replace(/^\[|\]$/g, "") : undefined;
  const addresses = literal ? [literal] : (await lookup(hostname, { all: true })).map((a) => a.address);
  const refused = addresses.find((address) => !isPublicAddress(address, allowLoopback));
  if (refused !== undefined) {
    throw new CimdError(`${hostname} resolves to ${refused}, which is not a public internet address (loopback, private, link-local or reserved); the relay fetches client metadata only from the public internet.`);
  }
  return addresses;
}

/** Whether the relay may connect to `address`: a public one, or loopback when testing. */
export function isPublicAddress(address: string, allowLoopback = false): boolean {
  if (!addressBytes(address)) return false;
  if (allowLoopback && inNetworks(address, LOOPBACK_NETWORKS)) return true;
  return !inNetworks(address, NON_PUBLIC_NETWORKS);
}

/** GET `url` from one of the checked `addresses`, never resolving its name again: the connection goes to the address,
 *  while TLS (SNI and the certificate check) and the Host header keep the name. The next address is tried only when
 *  one refuses the connection. */
async function connectPinned(url: URL, addresses: string[], signal: AbortSignal, testCa: string | undefined): Promise<Response> {
  const named = !addressBytes(url.hostname);
  let failure: unknown;
  for (const address of addresses.slice(0, MAX_ADDRESSES_TRIED)) {
    const target = new URL(url);
    target.hostname = address.includes(":") ? `[${address}]` : address;
    try {
      return await fetch(target, {
        headers: { Host: url.host, Accept: "application/json" },
        redirect: "manual",
        signal,
        tls: { ...(named ? { serverName: url.hostname } : {}), ...(testCa ? { ca: testCa } : {}) },
      });
    } catch (e) {
      if (!isRefusedConnection(e)) throw e;
      failure = e;
    }
  }
  throw failure;
}

const isRefusedConnection = (e: unknown) => ["ECONNREFUSED", "ConnectionRefused", "ENETUNREACH", "EHOSTUNREACH"].includes((e as { code?: string }).code ?? "");

/** The body as text, refused as soon as it passes MAX_DOCUMENT_BYTES (whatever Content-Length claimed). */
async function readCapped(response: Response, where: string): Promise<string> {
  const tooLarge = () => new CimdError(`${where} is larger than ${MAX_DOCUMENT_BYTES / 1024} KiB.`);
  if (Number(response.headers.get("content-length") ?? 0) > MAX_DOCUMENT_BYTES) {
    await response.body?.cancel();
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of response.body ?? []) {
    size += chunk.byteLength;
    if (size > MAX_DOCUMENT_BYTES) throw tooLarge(); // leaving the loop cancels the stream
    chunks.push(chunk);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new CimdError(`${where} is not UTF-8 text.`);
  }
}

function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new CimdError(`${where} is not valid JSON.`);
  }
}

/** A fetch failure in a few words: its code (a DNS or TLS error says which), never a stack. */
function describeFailure(e: unknown): string {
  const code = (e as { code?: string }).code;
  if (code === "ENOTFOUND") return "its host name does not resolve";
  if (code?.startsWith("ERR_TLS") || /CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code ?? "")) return `its TLS certificate is not valid for it: ${code}`;
  return code ?? (e instanceof Error ? e.message.slice(0, 120) : "unknown error");
}

/** `promise`, or a rejection when `signal` aborts first (node:dns takes no signal). */
function withSignal<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      signal.throwIfAborted();
      signal.addEventListener("abort", () => reject(signal.reason), { once: true });
    }),
  ]);
}
