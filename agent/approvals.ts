// The owner's say before a call runs. The machine's policy (policy.ts) judges each call: "deny" fails it at once,
// naming the rule; "ask" describes exactly what the call would do (the command, its working directory and the names
// of the variables it adds, or the path and the diff of a change) and waits for the owner's decision, which the
// relay carries back from the dashboard or the approvals API. The relay only carries it: it can neither turn a
// "deny" into a run nor skip the question, because the judging happens here, on the machine.

import * as fs from "node:fs";
import {
  Failure,
  fitToBudget,
  type AgentOp,
  type ApprovalSubject,
  type AskFrame,
  type DecisionFrame,
  type OpArgs,
  type PolicySummary,
} from "../protocol.ts";
import { editFile, unifiedDiff } from "./edit.ts";
import { resolveExisting, resolveForWrite, type FileScope } from "./paths.ts";
import type { Judgement, PolicySource } from "./policy.ts";

/** The owner's answer, as the relay carried it. */
export interface OwnerDecision {
  approve: boolean;
  reason?: string;
  /** Approves the same call on this machine for this long. */
  forSeconds?: number;
  /** Which owner session decided, for the log. */
  by: string;
}

/** Asks the owner about one call and resolves with the decision; fails (a Failure for the model) when the relay
 *  cannot carry approvals, the time is up, the call is cancelled, or the link drops. */
export type AskOwner = (subject: ApprovalSubject, expiresInMs: number, signal: AbortSignal) => Promise<OwnerDecision>;

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
  /** Calls the owner approved for a while: the call's key → until when (ms). */
  readonly #standing = new Map<string, number>();

  constructor(
    readonly policy: PolicySource,
    readonly machine: string,
  ) {}

  summary(): PolicySummary {
    return this.policy.current().summary();
  }

  /** Returns when the call may run, true if it waited for the owner; throws a Failure when the policy refuses it or
   *  the owner does not approve it. */
  async admit(op: AgentOp, args: AnyArgs, scope: FileScope, signal: AbortSignal, askOwner: AskOwner): Promise<boolean> {
    const policy = this.policy.current();
    // The path as the tool will resolve it, for path rules (resolving costs a realpath: skipped when no rule needs it).
    let realPath = policy.judgesPaths ? resolvedPath(op, args, scope) : undefined;
    const judgement = policy.judge(op, args, realPath);
    if (judgement.verdict === "allow") return false;
    if (judgement.verdict === "deny") throw new Failure("policy_denied", `Refused by the policy on '${this.machine}': ${judgement.rule}. The owner of the machine sets it there; no tool can change it.`);
    realPath ??= resolvedPath(op, args, scope); // the owner is shown, and approves, the real path
    const key = callKey(op, args, realPath);
    if ((this.#standing.get(key) ?? 0) > Date.now()) return false;
    const subject = await describeCall(op, args, scope, realPath, judgement);
    const decision = await askOwner(subject, policy.approvalTimeoutMs, signal);
    if (!decision.approve) {
      const reason = decision.reason?.trim() ? `: ${decision.reason.trim()}` : " (no reason given)";
      throw new Failure("not_approved", `The owner of '${this.machine}' denied this call${reason}. Nothing ran.`);
    }
    if (decision.forSeconds) this.#rememberFor(key, decision.forSeconds);
    // The file may have moved while the owner decided: judge the path as it is now, so an approval for one place
    // never writes through a symlink swapped in to another that the policy refuses.
    if (realPath !== undefined) this.#recheck(op, args, scope);
    return true;
  }

  #recheck(op: AgentOp, args: AnyArgs, scope: FileScope): void {
    const judgement = this.policy.current().judge(op, args, resolvedPath(op, args, scope));
    if (judgement.verdict === "deny") throw new Failure("policy_denied", `Refused by the policy on '${this.machine}': ${judgement.rule}.`);
  }

  #rememberFor(key: string, seconds: number): void {
    const now = Date.now();
    for (const [k, until] of this.#standing) if (until <= now) this.#standing.delete(k);
    this.#standing.set(key, now + seconds * 1000);
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

/** What makes two calls "the same call" for an approval that lasts a while: the same command (text or argv, shell,
 *  working directory and variables), the same input to the same command, or the same tool on the same file. */
function callKey(op: AgentOp, args: AnyArgs, realPath: string | undefined): string {
  if (realPath !== undefined) return `${op}\n${realPath}`;
  if (op === "run_shell_command") {
    const { command, argv, shell, working_dir, env } = args;
    return `${op}\n${JSON.stringify({ command, argv, shell, working_dir, env })}`;
  }
  return `${op}\n${JSON.stringify(args)}`;
}

/** What the owner is shown for a call: the exact command and where it runs, or the path and the change. */
async function describeCall(op: AgentOp, args: AnyArgs, scope: FileScope, realPath: string | undefined, judgement: Judgement): Promise<ApprovalSubject> {
  const base = { tool: op, rule: judgement.rule };
  if (op === "run_shell_command") return { ...base, ...describeCommand(args as OpArgs<"run_shell_command">, scope) };
  if (op === "send_command_input") {
    const { command_id, input, close_stdin } = args as OpArgs<"send_command_input">;
    return { ...base, summary: oneLine(`send ${JSON.stringify(input)} to ${command_id}${close_stdin ? " and close its input" : ""}`), command: input };
  }
  if (op === "write_file" && realPath !== undefined) return { ...base, ...describeWrite(args as OpArgs<"write_file">, realPath) };
  if (op === "edit_file" && realPath !== undefined) {
    const preview = await editFile({ ...(args as OpArgs<"edit_file">), dry_run: true }, scope);
    return { ...base, summary: oneLine(`edit ${realPath}: ${preview.replacements} replacement(s)`), path: realPath, diff: cut(preview.diff) };
  }
  const what = realPath ?? JSON.stringify(args);
  return { ...base, summary: oneLine(`${op} ${what}`), ...(realPath !== undefined && { path: realPath }) };
}

function describeCommand(args: OpArgs<"run_shell_command">, scope: FileScope): Omit<ApprovalSubject, "tool" | "rule"> {
  const command = args.command ?? JSON.stringify(args.argv);
  const workingDir = args.working_dir ?? scope.home;
  const envNames = Object.keys(args.env ?? {});
  const extras = [args.shell && `with ${args.shell}`, args.background && "in the background", args.stdin !== undefined && `with ${args.stdin.length} characters on stdin`].filter(Boolean);
  return {
    summary: oneLine(`run ${command} in ${workingDir}${extras.length ? ` (${extras.join(", ")})` : ""}`),
    command,
    working_dir: workingDir,
    ...(envNames.length > 0 && { env_names: envNames }),
    // What a shell or an interpreter reads on stdin is code the owner approves too: shown, not just counted.
    ...(args.stdin !== undefined && { stdin: cut(args.stdin) }),
  };
}

/** A write as a diff against what is there (a new file is a diff from nothing); binary or large content by sizes. */
function describeWrite(args: OpArgs<"write_file">, realPath: string): Omit<ApprovalSubject, "tool" | "rule"> {
  const incoming = args.encoding === "base64" ? Buffer.from(args.content, "base64") : Buffer.from(args.content);
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
    return (subject, expiresInMs, signal) => this.#ask(id, subject, expiresInMs, signal);
  }

  decided(frame: DecisionFrame): void {
    this.#open.get(frame.id)?.({ approve: frame.approve, reason: frame.reason, forSeconds: frame.for_seconds, by: frame.by });
  }

  /** The link ended: every open question fails, and its call does not run. */
  dropAll(): void {
    for (const settle of this.#open.values()) settle(linkDropped());
  }

  #ask(id: string, subject: ApprovalSubject, expiresInMs: number, signal: AbortSignal): Promise<OwnerDecision> {
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
      if (!this.send({ type: "ask", id, subject, expires_in_ms: expiresInMs })) settle(linkDropped());
    });
  }
}
