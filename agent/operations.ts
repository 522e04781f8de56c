// What the agent does with one request frame: validate its arguments with the operation's schema from
// protocol.ts (the relay is not trusted to have done so), run the handler, and build the one result frame. An
// error a handler expects is a Failure with a code and a message for the model; anything else is logged here and
// reported as "internal" without details.

import * as os from "node:os";
import {
  Failure,
  VERSION,
  opSchemas,
  type AgentError,
  type AgentFrame,
  type AgentOp,
  type AgentStatus,
  type OpArgs,
  type OpResult,
  type RequestFrame,
} from "../protocol.ts";
import type { AskOwner, Gatekeeper } from "./approvals.ts";
import type { CommandRunner } from "./commands.ts";
import type { AgentConfig } from "./config.ts";
import { editFile } from "./edit.ts";
import { fileInfo, listDirectory, readFile, writeFile } from "./files.ts";
import { fileScope } from "./own-files.ts";
import type { FileScope } from "./paths.ts";
import type { Policy } from "./policy.ts";
import { searchFiles } from "./search.ts";
import { logger } from "../log.ts";

const log = logger("agent");

/** What every operation gets: the request's abort signal and arrival time, the configuration, the commands, the
 *  policy's gatekeeper and how to ask the owner, and where to report progress when the client asked for it. */
export interface OpContext {
  signal: AbortSignal;
  receivedAt: number;
  config: AgentConfig;
  commands: CommandRunner;
  gate: Gatekeeper;
  owner: AskOwner;
  onProgress?: (progress: { elapsed_ms: number; output_bytes: number; tail: string }) => void;
  /** The command id the relay chose (a run_shell_command's RequestFrame.command_id); the runner decides whether
   *  to take it. */
  commandId?: string;
}

function agentStatus(ctx: OpContext): AgentStatus {
  return {
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: ctx.config.shell,
    hostname: os.hostname(),
    allowed_roots: ctx.config.roots,
    excluded_paths: [...fileScope(ctx.config).ownFiles],
    pid: process.pid,
    uptime_s: Math.round(process.uptime()),
    running_commands: ctx.commands.running,
    queued_commands: ctx.commands.queued,
    policy: ctx.gate.summary(),
  };
}

/** A request's context once admitted, with what its file tools may reach. */
type RunContext = OpContext & { scope: FileScope };

type Handler<O extends AgentOp> = (args: OpArgs<O>, ctx: RunContext) => Promise<OpResult<O>> | OpResult<O>;

/** What the file tools of one request may reach: the roots minus the agent's own files, and minus what the policy in
 *  force hides from listings and searches. The policy is looked up once per request, and only by a walk that asks
 *  (not once per entry it visits, nor by every call beside the gatekeeper's own look). */
function scopeOf(ctx: OpContext): FileScope {
  let policy: Policy | undefined;
  return { ...fileScope(ctx.config), hidden: (real) => (policy ??= ctx.gate.policy.current()).hides(real) };
}

const HANDLERS: { [O in AgentOp]: Handler<O> } = {
  run_shell_command: (args, ctx) => ctx.commands.run(args, { ...ctx, ...ctx.scope, shell: ctx.config.shell }),
  get_command_output: (args, ctx) => ctx.commands.output(args, ctx.signal),
  send_command_input: (args, ctx) => ctx.commands.input(args),
  kill_command: (args, ctx) => ctx.commands.kill(args),
  list_commands: (args, ctx) => ctx.commands.list(args),
  read_file: (args, ctx) => readFile(args, ctx.scope),
  write_file: (args, ctx) => writeFile(args, ctx.scope),
  edit_file: (args, ctx) => editFile(args, ctx.scope),
  list_directory: (args, ctx) => listDirectory(args, ctx.scope),
  search_files: (args, ctx) => searchFiles(args, ctx.scope),
  file_info: (args, ctx) => fileInfo(args, ctx.scope),
  status: (_args, ctx) => agentStatus(ctx),
};

export const errorResult = (id: string, error: AgentError): AgentFrame => ({ type: "result", id, ok: false, error });

/** Texts of an error frame stay within the protocol's limit (AgentError): a message echoing a 4,000-character path
 *  would otherwise make the relay refuse the frame and drop this agent's connection, for every client. */
const ERROR_TEXT_MAX_CHARS = 2_000;

const shorten = (text: string) => (text.length > ERROR_TEXT_MAX_CHARS ? `${text.slice(0, ERROR_TEXT_MAX_CHARS - 1)}…` : text);

function failureFrame(e: Failure): AgentError {
  return { code: e.code, message: shorten(e.message), ...(e.quote && { quote: shorten(e.quote) }) };
}

/** Validates a request's arguments with the op's schema, lets the machine's policy (and through it the owner) judge
 *  it, runs it, and builds the one result frame. */
export async function execute(frame: RequestFrame, ctx: OpContext): Promise<AgentFrame> {
  const parsed = opSchemas(frame.op).args.safeParse(frame.args);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "arguments"}: ${i.message}`).join("; ");
    return errorResult(frame.id, { code: "invalid_arguments", message: issues.slice(0, 1000) });
  }
  try {
    const scope = scopeOf(ctx);
    const waited = await ctx.gate.admit(frame.op, parsed.data as Record<string, unknown>, scope, ctx.signal, ctx.owner);
    // After a wait for the owner, the policy may have changed, and a command's timeout and wait count from the
    // approval, not from the question.
    const runCtx: RunContext = waited ? { ...ctx, scope: scopeOf(ctx), receivedAt: Date.now(), commandId: frame.command_id } : { ...ctx, scope, commandId: frame.command_id };
    const handler = HANDLERS[frame.op] as Handler<AgentOp>;
    return { type: "result", id: frame.id, ok: true, value: await handler(parsed.data as never, runCtx) };
  } catch (e) {
    if (e instanceof Failure) return errorResult(frame.id, failureFrame(e));
    log("error", "operation failed unexpectedly", { op: frame.op, error: String(e) });
    return errorResult(frame.id, { code: "internal", message: "The agent hit an unexpected error; its log has the details." });
  }
}
