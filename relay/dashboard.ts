// The owner's dashboard at `/`: calls waiting for the owner's approval (first, each with its decision forms, which
// post to the approvals API in approvals.ts), connected machines, approved OAuth applications, running commands and
// recent tool calls, and three actions (disconnect a machine, revoke its agent token, revoke an application's
// access), each behind a confirmation page and audited. A visitor without a session sees only the login form. The
// session is a signed cookie (HMAC with a key derived from the owner secret, so changing the secret signs everyone
// out), HttpOnly, SameSite=Strict, Secure over https; every form also carries a token derived from the session.
// Plain HTML, no external asset (pages.ts); a script of the relay's own only where passkeys are used.

import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Approvals } from "./approvals.ts";
import type { AuditLog } from "./audit.ts";
import type { AgentTokens } from "./credentials.ts";
import { secretMatches } from "./credentials.ts";
import { Penalties, tooManyAttempts } from "./limits.ts";
import type { AuthorizationServer } from "./oauth.ts";
import { confirmPage, dashboardPage, errorPage, loginPage, type DashboardView } from "./pages.ts";
import type { Relay } from "./agents.ts";
import { listCommands } from "./tools.ts";

/** A dashboard session lasts this long; then the owner types the secret again. */
const SESSION_TTL_MS = 12 * 60 * 60 * 1000;
/** A machine the owner disconnects is turned away this long, so it does not just reconnect a second later. */
export const DISCONNECT_HOLD_MS = 10 * 60 * 1000;
/** Recent calls and events shown. */
const RECENT_CALLS = 50;
const RECENT_EVENTS = 15;

export interface DashboardOptions {
  ownerSecret: string;
  publicUrl?: URL;
  relay: Relay;
  audit: AuditLog;
  agentTokens: AgentTokens;
  /** The approved OAuth clients, to list and revoke. */
  oauth: Pick<AuthorizationServer, "approvedClients" | "revokeClient">;
  /** Wrong owner secrets at /login (shared with the OAuth consent page). */
  ownerSecretPenalties: Penalties;
  /** Calls waiting for the owner's approval, shown first. */
  approvals: Approvals;
}

type Handler = (req: Request, address: string) => Response | Promise<Response>;

export class Dashboard {
  readonly #key: Buffer;
  /** Sessions signed out before they expired (nonce → expiry), so a copied cookie stops working too. */
  readonly #signedOut = new Map<string, number>();

  constructor(readonly options: DashboardOptions) {
    this.#key = createHmac("sha256", options.ownerSecret).update("code-remote dashboard sessions").digest();
  }

  routes(): Record<string, Partial<Record<"GET" | "POST", Handler>>> {
    return {
      "/": { GET: (req) => this.#home(req) },
      "/login": { POST: (req, address) => this.#login(req, address) },
      "/logout": { POST: (req) => this.#logout(req) },
      "/confirm": { GET: (req) => this.#confirm(req) },
      "/actions": { POST: (req, address) => this.#act(req, address) },
    };
  }

  /** Whether the request carries a valid owner session. */
  isOwner(req: Request): boolean {
    return this.#session(req) !== undefined;
  }

  /** The owner's session on this request, if any: a label for the audit (a short digest of its nonce, so the log
   *  tells sessions apart without holding any part of a cookie), the session's CSRF token (for a page that posts
   *  from a script), and whether `csrf` is this session's token (a cross-site request cannot know it). */
  ownerSession(req: Request): { label: string; csrf: string; proves: (csrf: string) => boolean } | undefined {
    const nonce = this.#session(req);
    if (!nonce) return undefined;
    const label = `dashboard session ${createHash("sha256").update(nonce).digest("base64url").slice(0, 8)}`;
    return { label, csrf: this.#csrf(nonce), proves: (csrf) => this.#csrfMatches(csrf, nonce) };
  }

  // --- session ---

  #sign(payload: string): string {
    return createHmac("sha256", this.#key).update(payload).digest("base64url");
  }

  #cookieName(req: Request): string {
    return this.#secure(req) ? "__Host-code-remote-session" : "code-remote-session";
  }

  #secure(req: Request): boolean {
    return (this.options.publicUrl?.protocol ?? new URL(req.url).protocol) === "https:";
  }

  #newSession(req: Request): string {
    const expires = Date.now() + SESSION_TTL_MS;
    const payload = `v1.${expires}.${randomBytes(16).toString("base64url")}`;
    const secure = this.#secure(req) ? "; Secure" : "";
    return `${this.#cookieName(req)}=${payload}.${this.#sign(payload)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_TTL_MS / 1000}${secure}`;
  }

  /** The session's nonce when the cookie is ours, unexpired and not signed out. */
  #session(req: Request): string | undefined {
    const name = this.#cookieName(req);
    const value = (req.headers.get("cookie") ?? "").split(";").map((c) => c.trim()).find((c) => c.startsWith(`${name}=`))?.slice(name.length + 1);
    const match = value ? /^(v1\.(\d+)\.([A-Za-z0-9_-]+))\.([A-Za-z0-9_-]+)$/.exec(value) : null;
    if (!match || Number(match[2]) < Date.now() || this.#signedOut.has(match[3]!)) return undefined;
    const expected = Buffer.from(this.#sign(match[1]!));
    const given = Buffer.from(match[4]!);
    return expected.length === given.length && timingSafeEqual(expected, given) ? match[3] : undefined;
  }

  /** The token every form of a session carries: a cross-site form cannot know it. */
  #csrf(nonce: string): string {
    return this.#sign(`csrf.${nonce}`);
  }

  // --- pages ---

  async #home(req: Request): Promise<Response> {
    const nonce = this.#session(req);
    if (!nonce) return loginPage();
    return dashboardPage(await this.#view(new URL(req.url).searchParams.get("machine") ?? undefined, this.#csrf(nonce)));
  }

  async #view(machine: string | undefined, csrf: string): Promise<DashboardView> {
    const { relay, audit, agentTokens } = this.options;
    const tokens = new Map(agentTokens.list().map((t) => [t.machine, t]));
    const connected = [...relay.agents.values()].sort((a, b) => a.machine.localeCompare(b.machine));
    const running = connected.length ? await listCommands(relay, undefined, { state: "running" }) : { commands: [], machines: [], errors: [] };
    return {
      csrf,
      filter: machine,
      machines: connected.map((conn) => ({
        name: conn.machine,
        version: conn.hello.agent_version,
        os: `${conn.hello.os} ${conn.hello.arch}`,
        roots: conn.hello.allowed_roots,
        connectedSince: conn.connectedAt.toISOString(),
        lastHeartbeat: new Date(conn.ws.data.lastHeard).toISOString(),
        credential: conn.ws.data.credential.kind === "machine" ? "its own token" : "the shared token",
        hasToken: tokens.has(conn.machine),
      })),
      offlineTokens: [...tokens.values()].filter((t) => !relay.agents.has(t.machine)),
      running: running.commands,
      calls: audit.calls({ machine, limit: RECENT_CALLS }),
      events: audit.events({ machine, limit: RECENT_EVENTS }),
      clients: this.options.oauth.approvedClients(),
      approvals: this.options.approvals.list(),
    };
  }

  #confirm(req: Request): Response {
    const nonce = this.#session(req);
    if (!nonce) return loginPage();
    const params = new URL(req.url).searchParams;
    const action = params.get("action");
    const machine = params.get("machine") ?? "";
    if (action === "revoke-client") {
      const client = this.options.oauth.approvedClients().find((c) => c.client_id === params.get("client_id"));
      return client ? confirmPage({ action, client, csrf: this.#csrf(nonce) }) : noSuchClient();
    }
    if ((action !== "disconnect" && action !== "revoke") || !machine) return errorPage(400, "Nothing to confirm", "Go back to the dashboard and choose an action.");
    return confirmPage({ action, machine, csrf: this.#csrf(nonce), holdMinutes: DISCONNECT_HOLD_MS / 60_000 });
  }

  // --- form posts ---

  async #login(req: Request, address: string): Promise<Response> {
    const wait = this.options.ownerSecretPenalties.retryAfter(address);
    if (wait > 0) return tooManyAttempts(wait, (message) => errorPage(429, "Too many attempts", message));
    const form = new URLSearchParams(await req.text());
    // Back to the page that asked the owner to sign in (an enrolment link opened on a phone), if it is one of ours.
    const next = /^\/enroll\/[A-Za-z0-9_-]{1,64}$/.test(form.get("next") ?? "") ? form.get("next")! : undefined;
    if (!secretMatches(form.get("owner_secret") ?? "", this.options.ownerSecret)) {
      this.options.ownerSecretPenalties.failed(address, { path: "/login", reason: "wrong owner secret" });
      return loginPage("Wrong owner secret.", 401, next);
    }
    this.options.ownerSecretPenalties.succeeded(address);
    this.options.audit.event("owner_login", { address });
    return new Response(null, { status: 303, headers: { Location: next ?? "/", "Set-Cookie": this.#newSession(req), "Cache-Control": "no-store" } });
  }

  async #logout(req: Request): Promise<Response> {
    const nonce = this.#session(req);
    const form = new URLSearchParams(await req.text());
    if (nonce && this.#formIsOurs(form, nonce)) {
      const now = Date.now();
      for (const [n, expires] of this.#signedOut) if (expires < now) this.#signedOut.delete(n);
      this.#signedOut.set(nonce, now + SESSION_TTL_MS);
    }
    const cleared = `${this.#cookieName(req)}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${this.#secure(req) ? "; Secure" : ""}`;
    return new Response(null, { status: 303, headers: { Location: "/", "Set-Cookie": cleared, "Cache-Control": "no-store" } });
  }

  #formIsOurs(form: URLSearchParams, nonce: string): boolean {
    return this.#csrfMatches(form.get("csrf") ?? "", nonce);
  }

  #csrfMatches(csrf: string, nonce: string): boolean {
    const given = Buffer.from(csrf);
    const expected = Buffer.from(this.#csrf(nonce));
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  /** A confirmed action: disconnect a machine, revoke its agent token, or revoke an application's access. Audited
   *  with the owner's address. */
  async #act(req: Request, address: string): Promise<Response> {
    const nonce = this.#session(req);
    if (!nonce) return loginPage(undefined, 401);
    const form = new URLSearchParams(await req.text());
    if (!this.#formIsOurs(form, nonce)) return errorPage(403, "Action refused", "This form did not come from your dashboard. Go back and try again.");
    const machine = form.get("machine") ?? "";
    const action = form.get("action");
    if (action === "disconnect") {
      const was = this.options.relay.disconnect(machine, DISCONNECT_HOLD_MS);
      this.options.audit.event("agent_disconnected_by_owner", { machine, address, detail: was ? "disconnected" : "not connected; held off" });
    } else if (action === "revoke") {
      const revoked = this.options.agentTokens.revoke(machine);
      if (revoked) this.options.audit.event("agent_token_revoked", { machine, address, detail: "from the dashboard" });
    } else if (action === "revoke-client") {
      if (!this.options.oauth.revokeClient(form.get("client_id") ?? "", { address, via: "from the dashboard" })) return noSuchClient();
    } else {
      return errorPage(400, "Unknown action", "Go back to the dashboard and choose an action.");
    }
    return new Response(null, { status: 303, headers: { Location: "/", "Cache-Control": "no-store" } });
  }
}

const noSuchClient = () => errorPage(404, "No such application", "It is not approved (any more): it may have been revoked already. Go back to the dashboard.");
