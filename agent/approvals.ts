// The owner's say before a call runs. The machine's policy (policy.ts) judges each call: "deny" fails it at once,
// naming the rule; "ask" describes exactly what the call would do (the command, its working directory and the names
// of the variables it adds, or the path and the diff of a change) and waits for the owner's decision, which the
// relay carries back from the dashboard or the approvals API. The relay only carries it: it can neither turn a
// "deny" into a run nor skip the question, because the judging happens here, on the machine.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import {
  approvalStatement,
  Failure,
  fitToBudget,
  type AgentOp,
  type ApprovalSubject,
  type AskFrame,
  type DecisionFrame,
  type PasskeyAssertion,
  type PasskeyChallenge,
  type OpArgs,
  type PolicySummary,
} from "../protocol.ts";
import { editFile, unifiedDiff } from "./edit.ts";
import { isInsideRoots, resolveExisting, resolveForWrite, type FileScope } from "./paths.ts";
import type { OwnerKeys } from "./owner-keys.ts";
import { ConfigError } from "./config.ts";
import { argumentsDigest, verifyApproval, type OwnerKey, type RelayIdentity } from "./passkeys.ts";
import type { Judgement, Policy, PolicySource } from "./policy.ts";

/** The owner's answer, as the relay carried it. */
export interface OwnerDecision {
  approve: boolean;
  reason?: string;
  /** Approves the same call on this machine for this long. */
  forSeconds?: number;
  /** Which owner session decided, for the log. */
  by: string;
  /** The owner's passkey over the call's statement, when the agent asked for one. */
  assertion?: PasskeyAssertion;
}

/** The line to the owner for one call (its request id): `ask` resolves with the decision, and fails (a Failure for
 *  the model) when the relay cannot carry approvals, the time is up, the call is cancelled, or the link drops. */
export interface AskOwner {
  readonly callId: string;
  ask(subject: ApprovalSubject, expiresInMs: number, signal: AbortSignal, passkey?: PasskeyChallenge): Promise<OwnerDecision>;
}

/** The owner's enrolled passkeys and the relay's origin as this agent knows it (from its own RELAY_URL): what a
 *  policy with approvals = "passkey" checks every approval against. */
export interface OwnerPasskeys {
  keys: OwnerKeys;
  relay: RelayIdentity;
}

/** A diff shown for approval stays within this many characters (the frame allows 64,000). */
const DIFF_BUDGET_CHARS = 32_000;
/** Files larger than this are not diffed for the approval page: their sizes are shown instead. */
const MAX_DIFFED_BYTES = 256 * 1024;

/** Ops that work on a path, and whether they change what is there. */
const READS_PATH = new Set<AgentOp>(["read_file", "list_directory", "search_files", "file_info"]);
const CHANGES_PATH = new Set<AgentOp>(["write_file", "edit_file"]);

type AnyArgs = Record<string, unknown>;

/** Judges calls with the policy in force and remembers what the owner approved "for a while". One per agent. */
export class Gatekeeper {
  /** Calls the owner approved for a while: the call's key → until when (ms), and whether a passkey signed it. */
  readonly #standing = new Map<string, { until: number; signed: boolean }>();
  /** The policy the standing approvals were given under. */
  #approvedUnder?: Policy;

  constructor(
    readonly policy: PolicySource,
    readonly machine: string,
    readonly passkeys: OwnerPasskeys,
  ) {}

  summary(): PolicySummary {
    return this.policy.current().summary();
  }

  /** Returns when the call may run, true if it waited for the owner; throws a Failure when the policy refuses it or
   *  the owner does not approve it. */
  async admit(op: AgentOp, args: AnyArgs, scope: FileScope, signal: AbortSignal, owner: AskOwner): Promise<boolean> {
    const policy = this.policy.current();
    if (policy !== this.#approvedUnder) {
      // A new policy (the owner edited the file) starts with no standing approvals: they were given under the old one.
      this.#standing.clear();
      this.#approvedUnder = policy;
    }
    // The path as the tool will resolve it, for path rules (resolving costs a realpath: skipped when no rule needs it).
    let realPath = policy.judgesPaths ? resolvedPath(op, args, scope) : undefined;
    const judgement = policy.judge(op, args, realPath);
    if (judgement.verdict === "allow") return false;
    if (judgement.verdict === "deny") throw new Failure("policy_denied", `Refused by the policy on '${this.machine}': ${judgement.rule}. The owner of the machine sets it there; no tool can change it.`);
    realPath ??= resolvedPath(op, args, scope); // the owner is shown, and approves, the real path
    const key = callKey(op, args, realPath, policy.approvals === "passkey");
    if (this.#stillApproved(key, policy.approvals === "passkey")) return false;
    const subject = await describeCall(op, args, scope, realPath, judgement, policy);
    const challenge = policy.approvals === "passkey" ? this.#passkeyChallenge(args, policy.approvalTimeoutMs) : undefined;
    const decision = await owner.ask(subject, policy.approvalTimeoutMs, signal, challenge);
    if (!decision.approve) {
      const reason = decision.reason?.trim() ? `: ${decision.reason.trim()}` : " (no reason given)";
      throw new Failure("not_approved", `The owner of '${this.machine}' denied this call${reason}. Nothing ran.`);
    }
    if (challenge) await this.#checkSigned(decision, { machine: this.machine, call: owner.callId, tool: op, challenge, forSeconds: decision.forSeconds });
    this.#recheck(op, args, scope, realPath, challenge !== undefined);
    if (decision.forSeconds) this.#rememberFor(key, decision.forSeconds, challenge !== undefined);
    return true;
  }

  /** After the owner's approval, the call runs only if it is still what was approved under the policy as it is now:
   *  the owner may have tightened the policy while the call waited (a deny now refuses it), and a file may have
   *  been swapped for a symlink to another (the approval was for the real path shown, not for wherever it leads). */
  #recheck(op: AgentOp, args: AnyArgs, scope: FileScope, approvedPath: string | undefined, signed: boolean): void {
    // Asked under approvals = "relay", answered after the owner switched to "passkey": the unsigned answer no longer
    // counts (the owner may have switched because they stopped trusting the relay).
    if (!signed && this.policy.current().approvals === "passkey") {
      throw new Failure("not_approved", "Not approved by the owner: this machine now accepts only approvals signed with the owner's passkey, and this one was given without; nothing ran. Try again.");
    }
    const nowPath = resolvedPath(op, args, scope);
    if (nowPath !== approvedPath) {
      throw new Failure("not_approved", `'${String(args.path)}' leads to ${nowPath} now, not to ${approvedPath}, which the owner approved; nothing ran. Try again to ask about the new place.`);
    }
    const judgement = this.policy.current().judge(op, args, nowPath);
    if (judgement.verdict === "deny") throw new Failure("policy_denied", `Refused by the policy on '${this.machine}', changed while the call waited: ${judgement.rule}. Nothing ran.`);
  }

  /** What this call's approval must be signed over: the agent's own digest of the exact arguments, a fresh nonce, the
   *  expiry, and the passkeys it accepts. With none enrolled, no approval can count: the call fails at once. */
  #passkeyChallenge(args: AnyArgs, timeoutMs: number): PasskeyChallenge {
    const keys = this.#enrolledKeys();
    if (keys.length === 0) {
      throw new Failure("not_approved", `This call needs the approval of the owner of '${this.machine}' with their passkey, and none is enrolled there yet; nothing ran. The owner enrols one on that machine with: code-remote-agent enroll-owner`);
    }
    return {
      nonce: randomBytes(32).toString("base64url"),
      arguments_sha256: argumentsDigest(args),
      expires_at: new Date(Date.now() + timeoutMs).toISOString(),
      rp_id: this.passkeys.relay.rpId,
      credential_ids: keys.map((key) => key.id),
    };
  }

  /** The enrolled passkeys; a damaged owner-keys.json fails the call (and names the fix) rather than the agent. */
  #enrolledKeys(): OwnerKey[] {
    try {
      return this.passkeys.keys.list();
    } catch (e) {
      if (e instanceof ConfigError) throw new Failure("not_approved", `${e.message} Until then no call that needs the owner's passkey can be approved; nothing ran.`);
      throw e;
    }
  }

  /** An approval counts only with the owner's passkey over exactly this call's statement (rebuilt here from the
   *  agent's own values): anything the relay made up, replayed or changed fails the call. */
  async #checkSigned(decision: OwnerDecision, statement: Parameters<typeof approvalStatement>[0]): Promise<void> {
    const refuse = (why: string) => new Failure("not_approved", `Not approved by the owner: ${why}. This machine runs such calls only with an approval signed by the owner's passkey; nothing ran.`);
    if (!decision.assertion) throw refuse("the approval carried no passkey signature");
    if (Date.parse(statement.challenge.expires_at) <= Date.now()) throw refuse("the approval came after the question expired");
    const verdict = await verifyApproval(decision.assertion, approvalStatement(statement), this.#enrolledKeys(), this.passkeys.relay);
    if (!verdict.ok) throw refuse(verdict.reason);
    this.passkeys.keys.updateCounter(verdict.key.id, verdict.counter);
  }

  /** Whether the owner approved this call for a while, and it still holds: with passkey approvals, only a signed
   *  one counts (an approval given through the relay before the owner asked for passkeys does not). */
  #stillApproved(key: string, needsSignature: boolean): boolean {
    const standing = this.#standing.get(key);
    return standing !== undefined && standing.until > Date.now() && (standing.signed || !needsSignature);
  }

  #rememberFor(key: string, seconds: number, signed: boolean): void {
    const now = Date.now();
    for (const [k, { until }] of this.#standing) if (until <= now) this.#standing.delete(k);
    this.#standing.set(key, { until: now + seconds * 1000, signed });
  }
}

/** The real path a file tool would act on (resolved as the tool itself resolves it), or undefined for other ops.
 *  A path that cannot be resolved fails here with the error the tool would give. */
function resolvedPath(op: AgentOp, args: AnyArgs, scope: FileScope): string | undefined {
  if (typeof args.path !== "string") return undefined;
  if (CHANGES_PATH.has(op) && args.dry_run !== true) return resolveForWrite(args.path, scope);
  if (READS_PATH.has(op) || op === "edit_file") return resolveExisting(args.path, scope);
  return undefined;
}

/** What makes two calls "the same call" for an approval that lasts a while: a command with every argument the same
 *  but how long to wait for it (text or argv, shell, working directory, variables, stdin, background, timeout), the
 *  same input to the same command, or the same tool on the same file (a dry run of an edit is not the edit; with
 *  `exact`, for a signed approval, the same content too). */
function callKey(op: AgentOp, args: AnyArgs, realPath: string | undefined, exact: boolean): string {
  // With passkeys the owner signed these exact arguments: a signed approval for a while covers this content only.
  if (realPath !== undefined) return `${op}${args.dry_run === true ? " (dry run)" : ""}\n${realPath}${exact ? `\n${argumentsDigest(args)}` : ""}`;
  const { wait_seconds: _wait, ...rest } = args;
  return `${op}\n${argumentsDigest(rest)}`;
}

/** What the owner is shown for a call: the exact command and where it runs, or the path and the change. */
async function describeCall(op: AgentOp, args: AnyArgs, scope: FileScope, realPath: string | undefined, judgement: Judgement, policy: Policy): Promise<ApprovalSubject> {
  const base = { tool: op, rule: judgement.rule };
  if (op === "run_shell_command") return { ...base, ...describeCommand(args as OpArgs<"run_shell_command">, scope) };
  // A file the policy keeps from reads (deny or ask) is not shown to the relay either: sizes, not its content.
  const contentHidden = realPath !== undefined && policy.hides(realPath);
  if (op === "send_command_input") {
    const { command_id, input, close_stdin } = args as OpArgs<"send_command_input">;
    return { ...base, summary: oneLine(`send ${JSON.stringify(input)} to ${command_id}${close_stdin ? " and close its input" : ""}`), command: input };
  }
  if (op === "write_file" && realPath !== undefined) return { ...base, ...describeWrite(args as OpArgs<"write_file">, realPath, contentHidden) };
  if (op === "edit_file" && realPath !== undefined) {
    const preview = await editPreview(args as OpArgs<"edit_file">, scope);
    const dryRun = args.dry_run === true ? " (a dry run: it changes nothing, and shows the diff)" : "";
    const diff = contentHidden ? `(not shown: the policy keeps this file from reads; ${preview.replacements} replacement(s))` : cut(preview.diff);
    return { ...base, summary: oneLine(`edit ${realPath}: ${preview.replacements} replacement(s)${dryRun}`), path: realPath, diff };
  }
  const what = realPath ?? JSON.stringify(args);
  return { ...base, summary: oneLine(`${op} ${what}`), ...(realPath !== undefined && { path: realPath }) };
}

/** The edit as a diff, for the owner. When it cannot apply (an old_text not found), the call fails now, before anyone
 *  is asked, but without the closest lines the tool would quote: the file may be one the policy keeps from reads. */
async function editPreview(args: OpArgs<"edit_file">, scope: FileScope) {
  try {
    return await editFile({ ...args, dry_run: true }, scope);
  } catch (e) {
    throw e instanceof Failure ? new Failure(e.code, e.message) : e;
  }
}

function describeCommand(args: OpArgs<"run_shell_command">, scope: FileScope): Omit<ApprovalSubject, "tool" | "rule"> {
  const command = args.command ?? JSON.stringify(args.argv);
  // Where it will really run: the directory as the runner resolves it, or the runner's default.
  const workingDir = args.working_dir !== undefined ? resolveExisting(args.working_dir, scope) : isInsideRoots(scope.home, scope.roots) ? scope.home : scope.roots[0]!;
  const envNames = Object.keys(args.env ?? {});
  const extras = [args.background && "in the background", args.stdin !== undefined && `with ${args.stdin.length} characters on stdin`].filter(Boolean);
  // The program that reads the command comes first: text that reads as shell may be Python to another interpreter.
  const runner = args.argv ? "run (no shell)" : `run with ${args.shell ?? "the agent's shell"}`;
  return {
    summary: oneLine(`${runner}${extras.length ? `, ${extras.join(", ")}` : ""}: ${command} in ${workingDir}`),
    command,
    working_dir: workingDir,
    ...(args.shell !== undefined && { shell: args.shell }),
    ...(args.background === true && { background: true }),
    ...(args.timeout !== undefined && { timeout_s: args.timeout }),
    ...(envNames.length > 0 && { env_names: envNames }),
    // What a shell or an interpreter reads on stdin is code the owner approves too: shown, not just counted.
    ...(args.stdin !== undefined && { stdin: cut(args.stdin) }),
  };
}

/** A write as a diff against what is there (a new file is a diff from nothing); binary or large content by sizes. */
function describeWrite(args: OpArgs<"write_file">, realPath: string, contentHidden: boolean): Omit<ApprovalSubject, "tool" | "rule"> {
  const incoming = args.encoding === "base64" ? Buffer.from(args.content, "base64") : Buffer.from(args.content);
  if (contentHidden) {
    const verb = args.append ? "append to" : "write";
    return { summary: oneLine(`${verb} ${realPath} (${incoming.length} bytes)`), path: realPath, diff: "(not shown: the policy keeps this file from reads)" };
  }
  const before = currentContent(realPath);
  const verb = args.append ? "append to" : before === undefined ? "create" : "replace";
  const summary = oneLine(`${verb} ${realPath} (${incoming.length} bytes)`);
  const after = textOf(incoming);
  if (before === null || after === undefined || incoming.length > MAX_DIFFED_BYTES) {
    return { summary, path: realPath, diff: `(not shown: binary or over ${MAX_DIFFED_BYTES / 1024} KiB; ${incoming.length} bytes would be written)` };
  }
  const old = before ?? "";
  return { summary, path: realPath, diff: cut(unifiedDiff(old, args.append ? old + after : after, realPath)) };
}

/** The text of the regular file at `realPath`: undefined when there is none, null when it cannot be shown (binary,
 *  too large, not a regular file). Only for display: the write itself opens the file its own careful way. */
function currentContent(realPath: string): string | undefined | null {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(realPath);
  } catch {
    return undefined;
  }
  if (!stat.isFile() || stat.size > MAX_DIFFED_BYTES) return null;
  return textOf(fs.readFileSync(realPath)) ?? null;
}

function textOf(bytes: Buffer): string | undefined {
  if (bytes.includes(0)) return undefined;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

const cut = (text: string) => fitToBudget(text, DIFF_BUDGET_CHARS).text;

/** One line of at most 300 characters (the frame allows 500), control characters shown escaped. */
function oneLine(text: string): string {
  const flat = text.replace(/[\u0000-\u001f\u007f]/g, (c) => (c === "\n" ? "⏎" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`));
  return flat.length > 300 ? `${flat.slice(0, 299)}…` : flat;
}

const linkDropped = () => new Failure("not_approved", "The link to the relay dropped while the call waited for the owner's approval; nothing ran. Try again.");

/** The questions one link to the relay has open: each waits for its `decision` frame, its expiry, its call's cancel,
 *  or the end of the link, whichever comes first. A decision for a question not open (answered, expired, or never
 *  asked) is ignored: the relay cannot make a call run by answering late or inventing an id. */
export class OwnerQuestions {
  readonly #open = new Map<string, (outcome: OwnerDecision | Failure) => void>();

  constructor(
    readonly machine: string,
    /** Sends the ask frame; false when the link is gone. */
    readonly send: (frame: AskFrame) => boolean,
    /** Whether the relay said it carries approvals (its welcome's features). */
    readonly relayCarriesApprovals: () => boolean,
  ) {}

  /** The AskOwner of request `id`. */
  askerFor(id: string): AskOwner {
    return { callId: id, ask: (subject, expiresInMs, signal, passkey) => this.#ask(id, { subject, expiresInMs, passkey }, signal) };
  }

  decided(frame: DecisionFrame): void {
    this.#open.get(frame.id)?.({ approve: frame.approve, reason: frame.reason, forSeconds: frame.for_seconds, by: frame.by, assertion: frame.assertion });
  }

  /** The link ended: every open question fails, and its call does not run. */
  dropAll(): void {
    for (const settle of this.#open.values()) settle(linkDropped());
  }

  #ask(id: string, question: { subject: ApprovalSubject; expiresInMs: number; passkey?: PasskeyChallenge }, signal: AbortSignal): Promise<OwnerDecision> {
    const { subject, expiresInMs, passkey } = question;
    if (!this.relayCarriesApprovals()) {
      return Promise.reject(new Failure("not_approved", `The policy on '${this.machine}' asks the owner before this call, but the relay is older than approvals and cannot ask; nothing ran. Update the relay, or change the policy on the machine.`));
    }
    return new Promise((resolve, reject) => {
      const settle = (outcome: OwnerDecision | Failure) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        this.#open.delete(id);
        if (outcome instanceof Failure) reject(outcome);
        else resolve(outcome);
      };
      const onAbort = () => settle(new Failure("not_approved", "The call was cancelled while it waited for the owner's approval; nothing ran."));
      const timer = setTimeout(
        () => settle(new Failure("not_approved", `The owner of '${this.machine}' did not answer within ${Math.round(expiresInMs / 1000)} s; nothing ran. They can approve from the relay's dashboard when you try again.`)),
        expiresInMs,
      );
      if (signal.aborted) return onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      this.#open.set(id, settle);
      if (!this.send({ type: "ask", id, subject, expires_in_ms: expiresInMs, ...(passkey && { passkey }) })) settle(linkDropped());
    });
  }
}
