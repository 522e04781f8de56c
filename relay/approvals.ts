// Calls waiting for the owner. When a machine's policy asks the owner before a call, its agent sends an `ask` with
// what the call would do; the relay records it here, shows it on the dashboard, posts it to the owner's webhook, and
// passes the owner's decision (from the dashboard or `POST /approvals/{id}`) back to the agent, which alone decides
// whether the call runs. Only the owner decides: the static AUTH_TOKEN or a dashboard session with its CSRF token,
// never an OAuth client's token or an agent's. Every question, decision, expiry and cancellation is audited.

import { randomBytes } from "node:crypto";
import { z } from "zod";
import { approvalStatement, MAX_APPROVAL_FOR_S, PasskeyAssertion, type ApprovalSubject, type AskFrame, type Decision, type PasskeyChallenge } from "../protocol.ts";
import type { AuditLog } from "./audit.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** The owner's webhook gets this long to answer; a slow one delays nothing but its own notification. */
const WEBHOOK_TIMEOUT_MS = 5_000;
/** One client may have this many calls waiting for the owner at once, and open this many questions a minute: a
 *  client (or a model talked into it) that floods the owner with questions and notifications, hoping for a tired
 *  "approve", is answered "no" by the relay instead. */
const MAX_WAITING_PER_CLIENT = 5;
const MAX_QUESTIONS_PER_CLIENT_PER_MINUTE = 60;

/** A pending approval as the dashboard, the API and the webhook show it. */
export interface ApprovalView extends Omit<ApprovalSubject, "tool"> {
  id: string;
  machine: string;
  /** The OAuth client (or "owner") whose call waits. */
  client: string;
  tool: string;
  requested_at: string;
  expires_at: string;
  /** Where the owner decides: the dashboard, at this approval's card. */
  url: string;
  /** When the machine accepts only approvals signed by the owner's passkey: what to sign. */
  passkey?: PasskeyRequest;
}

/** The scopes the dashboard offers an approval for: once, or the same call for 5 minutes, an hour, 8 hours. */
export const APPROVAL_SCOPES = ["once", "300", "3600", "28800"] as const;

/** What a passkey signs to approve a call: the statement for each scope the dashboard offers (its SHA-256 is the
 *  WebAuthn challenge), the passkeys the machine accepts, and the parts of the statement for a script that builds
 *  its own (approvalStatement in protocol.ts, with the call id and any for_seconds). */
export interface PasskeyRequest {
  rp_id: string;
  credential_ids: string[];
  call: string;
  challenge: PasskeyChallenge;
  statements: Record<(typeof APPROVAL_SCOPES)[number], string>;
}

function passkeyRequest(ask: AskFrame, machine: string, challenge: PasskeyChallenge): PasskeyRequest {
  const statement = (scope: (typeof APPROVAL_SCOPES)[number]) =>
    approvalStatement({ machine, call: ask.id, tool: ask.subject.tool, challenge, forSeconds: scope === "once" ? undefined : Number(scope) });
  return {
    rp_id: challenge.rp_id,
    credential_ids: challenge.credential_ids,
    call: ask.id,
    challenge,
    statements: Object.fromEntries(APPROVAL_SCOPES.map((scope) => [scope, statement(scope)])) as PasskeyRequest["statements"],
  };
}

/** Who asked: the call's machine and client, and the origin the client reached the relay at (for the link). */
export interface AskingCall {
  machine: string;
  client: string;
  origin: string;
}

/** Where the owner is told that an approval waits: one URL, a JSON body or (for ntfy and the like) plain text. */
export interface Webhook {
  url: string;
  format: "json" | "text";
}

interface Pending {
  view: ApprovalView;
  /** Passes the decision to the agent; false when the call no longer waits. */
  deliver: (decision: Decision) => boolean;
}

/** How an approval left the list without a decision. */
export type Unanswered = "expired" | "cancelled" | "ended";

export class Approvals {
  readonly #pending = new Map<string, Pending>();
  /** When each client's recent questions were opened (ms), for the per-minute limit. */
  readonly #asked = new Map<string, number[]>();

  constructor(
    readonly audit: AuditLog,
    readonly options: { publicUrl?: URL; webhook?: Webhook },
  ) {}

  /** Why a question of `client` is not put to the owner, if it is one too many. */
  tooMany(client: string, now = Date.now()): string | undefined {
    const waiting = [...this.#pending.values()].filter((p) => p.view.client === client).length;
    if (waiting >= MAX_WAITING_PER_CLIENT) return `${waiting} calls of this client already wait for the owner's approval; wait for their answers before asking more`;
    const recent = (this.#asked.get(client) ?? []).filter((t) => t > now - 60_000);
    this.#asked.set(client, recent);
    if (recent.length >= MAX_QUESTIONS_PER_CLIENT_PER_MINUTE) return `this client asked the owner ${recent.length} times in the last minute; try again later`;
    return undefined;
  }

  /** Records an agent's question about a call and tells the owner; returns the approval as shown. The caller reports
   *  the call's end with `ended` (a no-op once the owner decided), and checks `tooMany` first. */
  open(ask: AskFrame, call: AskingCall, deliver: (decision: Decision) => boolean): ApprovalView {
    const asked = this.#asked.get(call.client) ?? [];
    this.#asked.set(call.client, [...asked, Date.now()]);
    const id = randomBytes(9).toString("base64url");
    const now = Date.now();
    const origin = this.options.publicUrl?.origin ?? call.origin;
    const { tool, ...subject } = ask.subject;
    const view: ApprovalView = {
      id,
      machine: call.machine,
      client: call.client,
      tool,
      ...subject,
      requested_at: new Date(now).toISOString(),
      expires_at: new Date(now + ask.expires_in_ms).toISOString(),
      url: `${origin}/#approval-${id}`,
      ...(ask.passkey && { passkey: passkeyRequest(ask, call.machine, ask.passkey) }),
    };
    this.#pending.set(id, { view, deliver });
    this.audit.event("approval_requested", { machine: call.machine, client: call.client, detail: `${id}: ${shareable(view)} (${subject.rule})` });
    log("info", "a call waits for the owner's approval", { id, machine: call.machine, tool, client: call.client });
    if (this.options.webhook) void notify(this.options.webhook, view, this.audit);
    return view;
  }

  /** The approvals still waiting, oldest first. */
  list(now = Date.now()): ApprovalView[] {
    return [...this.#pending.values()].map((p) => p.view).filter((v) => Date.parse(v.expires_at) > now);
  }

  /** Whether approval `id` still waits for the owner's decision. */
  isWaiting(id: string): boolean {
    return this.#pending.has(id);
  }

  /** The owner's decision on approval `id`, passed to its agent. False when no such approval waits any more. */
  decide(id: string, decision: OwnerDecision, by: string): boolean {
    const pending = this.#pending.get(id);
    if (!pending || Date.parse(pending.view.expires_at) <= Date.now()) return false;
    const { approve, reason, for_seconds, assertion } = decision;
    if (!pending.deliver({ approve, reason, for_seconds, by, ...(assertion && { assertion }) })) {
      this.ended(id, "ended"); // its call ended a moment ago; recorded as such, not as decided
      return false;
    }
    this.#pending.delete(id);
    const { machine, client, tool } = pending.view;
    const detail = `${id}: ${approve ? "approved" : "denied"}${for_seconds ? ` for ${for_seconds} s` : ""}${reason ? `: ${reason}` : ""} by ${by}${assertion ? " with a passkey" : ""}`;
    this.audit.event("approval_decided", { machine, client, detail: `${detail} (${tool})` });
    return true;
  }

  /** The call behind approval `id` ended while it still waited: expired, cancelled, or its agent went away. */
  ended(id: string, how: Unanswered): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    const { machine, client, tool } = pending.view;
    this.audit.event(`approval_${how === "ended" ? "cancelled" : how}`, { machine, client, detail: `${id}: ${tool}${how === "ended" ? " (the call ended: its agent went away or the relay gave up)" : ""}` });
  }
}

/** The body of `POST /approvals/{id}`: what the owner decided. */
export const OwnerDecision = z
  .object({
    decision: z.enum(["approve", "deny"]),
    reason: z.string().max(1000).optional(),
    for_seconds: z.number().int().min(1).max(MAX_APPROVAL_FOR_S).optional(),
    /** The owner's passkey over the approval's statement (the machine checks it). */
    assertion: PasskeyAssertion.optional(),
  })
  .strict()
  .transform(({ decision, reason, for_seconds, assertion }) => ({ approve: decision === "approve", reason: reason?.trim() || undefined, for_seconds, assertion }));
export type OwnerDecision = z.output<typeof OwnerDecision>;

/** What an approval asks, for the audit log and the webhook: the command or the path, but never the text typed into
 *  a running command (it may be a password a prompt asked for; the call's own audit row keeps only its digest). */
function shareable(view: ApprovalView): string {
  return view.tool === "send_command_input" ? `${view.tool}: input to a running command` : `${view.tool}: ${view.summary}`;
}

/** Posts one notification to the owner's webhook. A failure is logged and audited, and changes nothing else: the
 *  approval still waits on the dashboard. */
async function notify(webhook: Webhook, view: ApprovalView, audit: AuditLog): Promise<void> {
  const text = `${view.machine}: ${shareable(view)} (asked by ${view.client}; expires ${view.expires_at})`;
  const { id, machine, client, tool, rule, requested_at, expires_at, url } = view;
  const request: { headers: Record<string, string>; body: string } =
    webhook.format === "text"
      ? { headers: { "Content-Type": "text/plain; charset=utf-8", Title: `Approve on ${machine}?`, Click: url, Tags: "lock" }, body: text }
      : { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ event: "approval_requested", id, machine, client, tool, summary: shareable(view), rule, requested_at, expires_at, url, text }) };
  try {
    const response = await fetch(webhook.url, { method: "POST", ...request, redirect: "error", signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS) });
    await response.body?.cancel();
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    log("warn", "the approval webhook failed; the approval still waits on the dashboard", { id: view.id, error: why });
    audit.event("approval_webhook_failed", { machine: view.machine, detail: `${view.id}: ${why}` });
  }
}

// --- the owner's API: GET /approvals, POST /approvals/{id} ---

/** The owner, as a request proves it: a label for the audit and, for a dashboard session (a cookie the browser sends
 *  by itself), the check of its CSRF token; or the refusal to send. */
export type OwnerOf<S> = (req: Request, server: S) => { by: string; proves?: (csrf: string) => boolean } | Response;

const noStore = { "Cache-Control": "no-store" };

/** Whether a request is a dashboard form's post (then it is answered with pages and redirects, not JSON). */
export const isFormPost = (req: Request) => (req.headers.get("content-type") ?? "").startsWith("application/x-www-form-urlencoded");
const jsonError = (status: number, error: string) => Response.json({ error }, { status, headers: noStore });

/** The routes of the approvals API. A form from the dashboard (application/x-www-form-urlencoded, with its csrf
 *  field) is answered with a redirect to the dashboard or a page; anything else speaks JSON. */
export function approvalRoutes<S>(approvals: Approvals, ownerOf: OwnerOf<S>, page: (status: number, title: string, message: string) => Response) {
  const list = (req: Request, server: S) => {
    const owner = ownerOf(req, server);
    return owner instanceof Response ? owner : Response.json({ approvals: approvals.list() }, { headers: noStore });
  };
  const decide = async (req: Request & { params: { id: string } }, server: S) => {
    const owner = ownerOf(req, server);
    if (owner instanceof Response) return owner;
    const fromForm = isFormPost(req);
    const body = await readDecision(req, fromForm);
    const csrf = fromForm ? (body.csrf ?? "") : (req.headers.get("x-csrf-token") ?? "");
    if (owner.proves && !owner.proves(csrf)) {
      return fromForm ? page(403, "Decision refused", "This form did not come from your dashboard. Go back and try again.") : jsonError(403, "A dashboard session must send its CSRF token in X-CSRF-Token.");
    }
    const parsed = OwnerDecision.safeParse(body.fields);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; ");
      return fromForm ? page(400, "Decision not understood", why) : jsonError(400, `${why}. Send {"decision": "approve" | "deny", "reason"?: string, "for_seconds"?: number, "assertion"?: a passkey's AuthenticationResponseJSON}.`);
    }
    if (!approvals.decide(req.params.id, parsed.data, owner.by)) {
      const gone = "No such approval is waiting: it was decided, expired, or its call was cancelled.";
      return fromForm ? page(404, "No longer waiting", gone) : jsonError(404, gone);
    }
    const decision = parsed.data.approve ? "approve" : "deny";
    return fromForm ? new Response(null, { status: 303, headers: { Location: "/", ...noStore } }) : Response.json({ id: req.params.id, decision }, { headers: noStore });
  };
  return { "/approvals": { GET: list }, "/approvals/:id": { POST: decide } };
}

/** The decision's fields from a JSON body or a dashboard form (whose numbers arrive as text; empty fields are left
 *  out), and the form's csrf field. A body that is not an object yields fields the schema refuses. */
async function readDecision(req: Request, fromForm: boolean): Promise<{ fields: unknown; csrf?: string }> {
  if (!fromForm) return { fields: await req.json().catch(() => "not JSON") };
  const form = new URLSearchParams(await req.text());
  const fields: Record<string, unknown> = {};
  for (const [key, value] of form) {
    if (key === "csrf" || value === "") continue;
    fields[key] = key === "for_seconds" && /^\d+$/.test(value) ? Number(value) : value;
  }
  return { fields, csrf: form.get("csrf") ?? undefined };
}
