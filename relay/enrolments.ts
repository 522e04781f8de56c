// The owner's passkeys, enrolled through the relay but never trusted to it. `code-remote-agent enroll-owner` dials in
// with a hello whose purpose is "enroll" (agents.ts admits it, once it proves the machine's key, without registering
// the machine) and asks for a page with `enroll_begin`. The relay checks that the agent expects a passkey for this
// relay's own origin, makes a one-time code (ten minutes) and answers with the page's URL. The owner, signed in to
// the dashboard, opens it; the browser creates the passkey and shows its fingerprint (assets/enroll.js); the relay
// passes what the browser made to the agent (`enroll_credential`), which verifies it, shows its own fingerprint of
// the key it received for the owner to compare, stores it or not, and says which (`enroll_result`): the page shows
// that. A relay that put its own key in place would be caught by the fingerprints. An enrolment ends with its
// connection; every start, key stored and refusal is audited.

import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import { CloseCode, PasskeyRegistration, type EnrollBeginFrame, type ServerFrame } from "../protocol.ts";
import type { AuditLog } from "./audit.ts";
import { enrolPage, errorPage, loginPage } from "./pages.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** How long an enrolment page may be used; the connection that asked for it is closed then. */
export const ENROLMENT_TTL_MS = 10 * 60 * 1000;

/** What a browser's page shows of the key it made: "3f9c 0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b". */
const FINGERPRINT = /^[0-9a-f]{4}( [0-9a-f]{4}){7}$/;
/** A code as enrolments make them (16 random bytes, base64url). */
const CODE = /^[A-Za-z0-9_-]{22}$/;

/** An enrol connection as enrolments see it (agents.ts makes one per admitted enroll hello). */
export interface EnrolLink {
  readonly machine: string;
  readonly address: string;
  /** The origin the agent dialed: its upgrade request's Host, with http or https. */
  readonly dialedOrigin: string;
  send(frame: ServerFrame): boolean;
  close(code: number, reason: string): void;
}

/** What the enrol connection's frames and its end do here (agents.ts calls these). */
export interface EnrolmentDesk {
  begin(link: EnrolLink, frame: EnrollBeginFrame): void;
  result(link: EnrolLink, frame: { stored: boolean; message: string }): void;
  ended(link: EnrolLink): void;
}

/** waiting: for the owner's browser; sent: the key went to the machine; stored / refused: the machine's answer. */
export type EnrolmentState = "waiting" | "sent" | "stored" | "refused";

export interface Enrolment {
  code: string;
  machine: string;
  label: string;
  /** The agent's challenge, user id, RP ID and origin, for the browser. */
  begin: EnrollBeginFrame;
  expiresAt: number;
  state: EnrolmentState;
  /** The machine's words about its answer, or why the enrolment ended. */
  message?: string;
  /** The fingerprint the owner's page showed (for the audit log). */
  fingerprint?: string;
}

interface Live extends Enrolment {
  link: EnrolLink;
  open: boolean;
}

/** The owner's dashboard session, as the enrolment pages need it. */
export interface OwnerSessions {
  ownerSession(req: Request): { label: string; csrf: string; proves: (csrf: string) => boolean } | undefined;
}

export class Enrolments implements EnrolmentDesk {
  readonly #byCode = new Map<string, Live>();
  readonly #byLink = new Map<EnrolLink, Live>();

  constructor(
    readonly audit: AuditLog,
    readonly options: { publicUrl?: URL },
  ) {}

  /** Where this relay's pages are, as a browser reaches them: PUBLIC_URL, else the origin the agent dialed. */
  publicOrigin(link: EnrolLink): string {
    return this.options.publicUrl?.origin ?? link.dialedOrigin;
  }

  begin(link: EnrolLink, frame: EnrollBeginFrame): void {
    if (this.#byLink.has(link)) return link.close(CloseCode.protocolError, "one enrolment per connection: run enroll-owner again for another");
    const { machine, address } = link;
    const origin = this.publicOrigin(link);
    const rpId = new URL(origin).hostname;
    if (frame.origin !== origin || frame.rp_id !== rpId) {
      const detail = `the agent expects a passkey for ${frame.origin} (RP ID ${frame.rp_id}), but this relay's pages are at ${origin} (RP ID ${rpId})`;
      log("warn", "enrolment refused: the agent expects another origin", { machine, address, expected: frame.origin, origin });
      this.audit.event("owner_key_refused", { machine, address, detail });
      return link.close(CloseCode.protocolError, closeReason(`this relay is ${origin}, not ${frame.origin}: set RELAY_URL (or the relay's PUBLIC_URL) to match`));
    }
    if (isIP(rpId.replace(/^\[|\]$/g, ""))) {
      this.audit.event("owner_key_refused", { machine, address, detail: `this relay was reached at ${origin}: a passkey needs a host name, not an IP address` });
      return link.close(CloseCode.protocolError, "a passkey needs a host name, not an IP address: set RELAY_URL to the relay's name (localhost if on this machine)");
    }
    const code = randomBytes(16).toString("base64url");
    const enrolment: Live = { code, machine, label: frame.label, begin: frame, expiresAt: Date.now() + ENROLMENT_TTL_MS, state: "waiting", link, open: true };
    this.#byCode.set(code, enrolment);
    this.#byLink.set(link, enrolment);
    setTimeout(() => this.#expire(enrolment), ENROLMENT_TTL_MS).unref();
    link.send({ type: "enroll_page", url: `${origin}/enroll/${code}` });
    log("info", "owner passkey enrolment started", { machine, address });
    this.audit.event("owner_key_enrolment_started", { machine, address, detail: `label "${frame.label}", for ${origin}` });
  }

  result(link: EnrolLink, frame: { stored: boolean; message: string }): void {
    const enrolment = this.#byLink.get(link);
    if (!enrolment) return link.close(CloseCode.protocolError, "enroll_result before enroll_begin");
    if (enrolment.state === "stored" || enrolment.state === "refused") return link.close(CloseCode.protocolError, "enroll_result sent twice");
    if (frame.stored && enrolment.state !== "sent") return link.close(CloseCode.protocolError, "enroll_result says stored, but no passkey was sent");
    enrolment.state = frame.stored ? "stored" : "refused";
    enrolment.message = frame.message;
    const fingerprint = enrolment.fingerprint ? `; the page showed ${enrolment.fingerprint}` : "";
    log("info", frame.stored ? "owner passkey stored on the machine" : "owner passkey not stored", { machine: link.machine, message: frame.message });
    this.audit.event(frame.stored ? "owner_key_enrolled" : "owner_key_refused", { machine: link.machine, address: link.address, detail: `${frame.message}${fingerprint}` });
  }

  ended(link: EnrolLink): void {
    const enrolment = this.#byLink.get(link);
    if (!enrolment) return;
    this.#byLink.delete(link);
    enrolment.open = false;
    if (enrolment.state === "stored" || enrolment.state === "refused") return; // kept for the page to read, until it expires
    const was = enrolment.state === "waiting" ? "no passkey had been made" : "a passkey had been sent, the machine did not answer";
    enrolment.state = "refused";
    enrolment.message = `enroll-owner on ${enrolment.machine} stopped before storing a passkey`;
    this.audit.event("owner_key_refused", { machine: enrolment.machine, address: link.address, detail: `the enrolment's connection closed before the machine stored a key (${was})` });
  }

  /** The enrolment a page's code names, unless it is unknown or expired. */
  find(code: string): Enrolment | undefined {
    const enrolment = CODE.test(code) ? this.#byCode.get(code) : undefined;
    return enrolment && enrolment.expiresAt > Date.now() ? enrolment : undefined;
  }

  /** The owner's browser made a passkey: pass it to the machine, once. An error says why not. */
  submit(code: string, credential: PasskeyRegistration, fingerprint: string | undefined): { ok: true } | { ok: false; status: number; error: string } {
    const enrolment = this.find(code) as Live | undefined;
    if (!enrolment) return { ok: false, status: 404, error: "No such enrolment: the link is unknown or expired. Run code-remote-agent enroll-owner on the machine again." };
    if (enrolment.state !== "waiting") return { ok: false, status: 409, error: "A passkey was already sent for this enrolment. Run code-remote-agent enroll-owner again for another." };
    if (!enrolment.open || !enrolment.link.send({ type: "enroll_credential", credential })) {
      return { ok: false, status: 410, error: `enroll-owner on ${enrolment.machine} is no longer waiting. Run it again.` };
    }
    enrolment.state = "sent";
    enrolment.fingerprint = fingerprint;
    log("info", "owner passkey sent to the machine", { machine: enrolment.machine });
    return { ok: true };
  }

  #expire(enrolment: Live): void {
    this.#byCode.delete(enrolment.code);
    if (enrolment.open) enrolment.link.close(CloseCode.normal, "the enrolment page expired (10 minutes)");
  }
}

/** A WebSocket close reason fits in 123 bytes of UTF-8. */
function closeReason(text: string): string {
  let reason = text;
  while (Buffer.byteLength(reason) > 123) reason = reason.slice(0, -1);
  return reason;
}

const noStore = { "Cache-Control": "no-store" };
const jsonError = (status: number, error: string) => Response.json({ error }, { status, headers: noStore });
const gone = () =>
  errorPage(404, "No such enrolment", "This enrolment link is unknown or has expired (a link lasts 10 minutes). Run code-remote-agent enroll-owner on the machine again for a new one.");

type Handler = (req: Request, address: string) => Response | Promise<Response>;

/** The routes of the enrolment pages, for the owner's dashboard session only: the page, where it posts the passkey,
 *  and where it reads the machine's answer. */
export function enrolmentRoutes(enrolments: Enrolments, sessions: OwnerSessions): Record<string, Partial<Record<"GET" | "POST", Handler>>> {
  const codeOf = (req: Request) => decodeURIComponent(new URL(req.url).pathname.split("/")[2] ?? "");
  const page = (req: Request) => {
    const session = sessions.ownerSession(req);
    const code = codeOf(req);
    if (!session) return loginPage("Sign in to create a passkey for your machine.", 401, CODE.test(code) ? `/enroll/${code}` : undefined);
    const enrolment = enrolments.find(code);
    return enrolment ? enrolPage({ ...enrolment, csrf: session.csrf }) : gone();
  };
  const post = async (req: Request) => {
    const session = sessions.ownerSession(req);
    if (!session) return jsonError(401, "Your dashboard session has ended: sign in again, then reload this page.");
    if (!session.proves(req.headers.get("x-csrf-token") ?? "")) return jsonError(403, "A dashboard session must send its CSRF token in X-CSRF-Token.");
    const body = (await req.json().catch(() => undefined)) as { credential?: unknown; fingerprint?: unknown } | undefined;
    const credential = PasskeyRegistration.safeParse(body?.credential);
    if (!credential.success) return jsonError(400, 'Send {"credential": <the browser\'s RegistrationResponseJSON>, "fingerprint": "xxxx xxxx …"}.');
    const fingerprint = typeof body?.fingerprint === "string" && FINGERPRINT.test(body.fingerprint) ? body.fingerprint : undefined;
    const sent = enrolments.submit(codeOf(req), credential.data, fingerprint);
    return sent.ok ? Response.json({ state: "sent" }, { status: 202, headers: noStore }) : jsonError(sent.status, sent.error);
  };
  const status = (req: Request) => {
    if (!sessions.ownerSession(req)) return jsonError(401, "Your dashboard session has ended: sign in again.");
    const enrolment = enrolments.find(codeOf(req));
    if (!enrolment) return jsonError(404, "No such enrolment: the link is unknown or expired.");
    return Response.json({ state: enrolment.state, ...(enrolment.message !== undefined && { message: enrolment.message }) }, { headers: noStore });
  };
  return { "/enroll/:code": { GET: page, POST: post }, "/enroll/:code/status": { GET: status } };
}
