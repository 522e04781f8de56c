// The MCP tools as clients see them: registered from the table in protocol.ts, routed to a machine (by the
// `machine` argument, a command_id, or the only machine connected), audited, and answered with structured content
// plus a readable text. Errors come back as tool results with isError and a sentence on what to do next; the
// model never sees a stack, a token or relay internals.

import { createHash } from "node:crypto";
import {
  createRequestStateCodec,
  McpServer,
  type AuthInfo,
  type CallToolResult,
  type RequestStateCodec,
  type ServerContext,
  type StandardSchemaWithJSON,
} from "@modelcontextprotocol/server";
import {
  DEFAULT_COMMAND_TIMEOUT_S,
  DEFAULT_OUTPUT_WAIT_S,
  DEFAULT_WAIT_S,
  KILL_GRACE_MS,
  TOOLS,
  VERSION,
  machineOfCommandId,
  toolInputSchema,
  toolOutputSchema,
  type AgentOp,
  type AskFrame,
  type OpArgs,
  type PolicySummary,
  type ProgressFrame,
  type ToolName,
  type ToolResult,
} from "../protocol.ts";
import type { Approvals } from "./approvals.ts";
import type { AuditLog } from "./audit.ts";
import type { CallLimits } from "./limits.ts";
import { LinkLost, ToolError, type AgentConn, type Relay } from "./agents.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** The relay gives an agent this much longer than a command's own timeout (plus its kill grace) to answer. */
const CALL_DEADLINE_MARGIN_MS = 5_000;
/** File operations and status checks should take milliseconds; past these the agent is called unresponsive. */
const FILE_OP_DEADLINE_MS = 60_000;
const STATUS_DEADLINE_MS = 5_000;

/** The arguments as they go into the audit log: what was written or typed is kept as its size and SHA-256, and
 *  environment variables by name only, so the log never holds file contents, passwords or keys. */
function redactArguments(tool: ToolName, args: Record<string, unknown>): Record<string, unknown> {
  const redacted = { ...args };
  const digest = (field: string, text: unknown, encoding: BufferEncoding = "utf8") => {
    if (typeof text !== "string") return;
    const bytes = Buffer.from(text, encoding);
    delete redacted[field];
    redacted[`${field}_bytes`] = bytes.length;
    redacted[`${field}_sha256`] = createHash("sha256").update(bytes).digest("hex");
  };
  if (tool === "write_file") digest("content", args.content, args.encoding === "base64" ? "base64" : "utf8");
  if (tool === "send_command_input") digest("input", args.input);
  if (tool === "run_shell_command") {
    digest("stdin", args.stdin);
    if (args.env && typeof args.env === "object") redacted.env = Object.keys(args.env);
  }
  if (tool === "edit_file" && Array.isArray(args.edits)) {
    redacted.edits = args.edits.map((e: { old_text?: string; new_text?: string; replace_all?: boolean }) => ({
      old_bytes: Buffer.byteLength(e.old_text ?? ""),
      new_bytes: Buffer.byteLength(e.new_text ?? ""),
      replace_all: e.replace_all === true,
    }));
  }
  return redacted;
}


/** How long the relay waits for an agent's answer: a foreground command answers by its wait limit or its
 *  timeout (plus the kill grace), get_command_output by its wait; everything else within FILE_OP_DEADLINE_MS. */
function deadlineFor(op: AgentOp, args: Record<string, unknown>): number {
  const seconds = (value: unknown, fallback: number) => (typeof value === "number" ? value : fallback);
  if (op === "run_shell_command" && args.background !== true) {
    const wait = seconds(args.wait_seconds, DEFAULT_WAIT_S) * 1000;
    const timeout = seconds(args.timeout, DEFAULT_COMMAND_TIMEOUT_S) * 1000 + KILL_GRACE_MS;
    return Math.min(wait, timeout) + CALL_DEADLINE_MARGIN_MS;
  }
  if (op === "get_command_output") return seconds(args.wait_seconds, DEFAULT_OUTPUT_WAIT_S) * 1000 + CALL_DEADLINE_MARGIN_MS;
  return op === "status" ? STATUS_DEADLINE_MS : FILE_OP_DEADLINE_MS;
}

/** Where a call goes: the named machine, the machine a command_id belongs to, or (undefined) the only one. */
function routeTo(machine: string | undefined, args: Record<string, unknown>): string | undefined {
  if (typeof args.command_id !== "string") return machine;
  const owner = machineOfCommandId(args.command_id);
  if (machine && machine !== owner) throw new ToolError(`Command ${args.command_id} runs on '${owner}', not on '${machine}'.`);
  return owner;
}

// --- how results read ---

type Shaped<N extends ToolName> = ToolResult<N> & ((typeof TOOLS)[N]["runsOn"] extends "agent" ? { machine: string } : object);

const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

function commandEnding(r: { state: string; exit_code: number | null; signal: string | null }): string {
  if (r.state === "running") return "still running";
  if (r.state === "queued") return "waiting for a free slot";
  if (r.state === "timed_out") return `timed out and was killed${r.signal ? ` (${r.signal})` : ""}`;
  if (r.state === "killed") return r.signal ? `killed by ${r.signal}` : "killed";
  return `exit code ${r.exit_code}`;
}

function renderShell(r: Shaped<"run_shell_command">): string {
  const running = r.state === "running" || r.state === "queued";
  const lines = [`[${r.machine}] ${commandEnding(r)}, ${seconds(r.duration_ms)} (command_id ${r.command_id})`];
  if (r.stdout) lines.push(r.stdout.replace(/\n$/, ""));
  if (r.stderr) lines.push("[stderr]", r.stderr.replace(/\n$/, ""));
  if (!r.stdout && !r.stderr && !running) lines.push("(no output)");
  if (r.truncated) lines.push(`[output shortened: ${r.stdout_bytes} bytes of stdout and ${r.stderr_bytes} of stderr; beginning and end kept]`);
  if (running) lines.push(`[it keeps running: get_command_output with command_id ${r.command_id} and offset ${r.next_offset} for more; kill_command to stop it]`);
  return lines.join("\n");
}

function renderRead(r: Shaped<"read_file">): string {
  const range =
    r.encoding === "base64"
      ? `bytes ${r.offset}-${r.offset + r.returned} of ${r.size}, base64`
      : r.returned === 0
        ? `no lines at ${r.offset} (the file has ${r.total_lines ?? "more than that many"} lines)`
        : r.offset === 0
          ? `its last ${r.returned} lines`
          : `lines ${r.offset}-${r.offset + r.returned - 1} of ${r.total_lines ?? "?"}`;
  const more = !r.truncated
    ? ""
    : r.next_offset === null
      ? "\n[the line is too long for one answer: only its end is shown; read every byte with encoding base64 and an offset]"
      : `\n[more follows: read again with offset ${r.next_offset}]`;
  return `[${r.machine}] ${r.path} (${range})\n${r.content}${more}`;
}

function renderWrite(r: Shaped<"write_file">): string {
  return `[${r.machine}] ${r.created ? "Created" : "Wrote"} ${r.path}: ${r.bytes_written} bytes written, ${r.size} bytes now.`;
}

function renderEdit(r: Shaped<"edit_file">): string {
  const verb = r.dry_run ? "Would replace" : "Replaced";
  return `[${r.machine}] ${verb} ${r.replacements} occurrence(s) in ${r.path} (${r.line_endings.toUpperCase()} line endings kept)\n${r.diff}`;
}

function renderList(r: Shaped<"list_directory">): string {
  const rows = r.entries.map((e) => {
    const name = e.type === "dir" ? `${e.name}/` : e.type === "symlink" ? `${e.name}@` : e.name;
    return `${e.type.padEnd(7)} ${String(e.size).padStart(10)}  ${e.modified.slice(0, 19)}  ${name}`;
  });
  const notes = [
    ...(r.truncated ? [`[cut short: ${r.entries.length} of ${r.total}+ entries shown]`] : []),
    ...(r.hidden_skipped ? [`[${r.hidden_skipped} hidden entries not shown: include_hidden]`] : []),
  ];
  return [`[${r.machine}] ${r.path}: ${r.entries.length} entries`, ...rows, ...notes].join("\n");
}

function renderSearch(r: Shaped<"search_files">): string {
  const rows = r.matches.map((m) => (m.line === null ? m.file : `${m.file}:${m.line}: ${m.text}`));
  const why = { max_results: "max_results reached", max_files: "too many files", time: "time limit", size: "result size limit" };
  const footer = `[${r.matches.length} matches, ${r.files_visited} files searched, ${r.skipped_binary} binary skipped, ${r.elapsed_ms} ms` +
    (r.truncated_reason ? `; stopped early: ${why[r.truncated_reason]}]` : "]");
  return [`[${r.machine}] ${r.path}`, ...rows, footer].join("\n");
}

function renderInfo(r: Shaped<"file_info">): string {
  const facts = [
    `${r.type}, ${r.size} bytes, ${r.permissions} (${r.mode}), owner ${r.owner ?? r.uid}:${r.group ?? r.gid}`,
    `modified ${r.modified}, changed ${r.changed}, accessed ${r.accessed}${r.created ? `, created ${r.created}` : ""}`,
    ...(r.symlink_target !== null ? [`symlink to ${r.symlink_target} (leads to ${r.resolved_path})`] : []),
    ...(r.binary !== null ? [r.binary ? "binary" : `text, ${r.line_count ?? "too many to count"} lines`] : []),
  ];
  return [`[${r.machine}] ${r.path}`, ...facts].join("\n");
}

function renderOutput(r: Shaped<"get_command_output">): string {
  const head = `[${r.machine}] ${r.command_id} (${r.command}): ${commandEnding(r)}, ${seconds(r.duration_ms)}; bytes ${r.offset}-${r.next_offset} of ${r.total_bytes}`;
  const next = r.more
    ? `[more output: call again with offset ${r.next_offset}]`
    : r.state === "running" || r.state === "queued"
      ? `[still running: call again with offset ${r.next_offset} to wait for more]`
      : "";
  return [head, r.output.replace(/\n$/, ""), next].filter(Boolean).join("\n");
}

function renderInput(r: Shaped<"send_command_input">): string {
  return `[${r.machine}] Wrote ${r.bytes_written} bytes to the stdin of ${r.command_id}${r.stdin_open ? "" : " and closed it"}; it is ${r.state}.`;
}

function renderKill(r: Shaped<"kill_command">): string {
  const what = r.signal_sent ? `sent ${r.signal_sent} to its process group` : "it had already finished";
  return `[${r.machine}] ${r.command_id}: ${what}; now ${r.state}.`;
}

function renderCommands(r: Shaped<"list_commands">, noMachine: string): string {
  if (r.machines.length === 0) return noMachine;
  const rows = r.commands.map(
    (c) => `${c.machine}  ${c.command_id}  ${commandEnding(c).padEnd(14)}  ${c.started_at.slice(0, 19)}  ${seconds(c.duration_ms).padStart(7)}  ${c.background ? "bg " : ""}${c.command}`,
  );
  const errors = r.errors.map((e) => `[${e}]`);
  return [`${r.commands.length} command(s) on ${r.machines.join(", ")}`, ...rows, ...errors].join("\n");
}

/** The agent's own files, which its file tools never reach (an older agent does not say). */
const excludedText = (paths: string[] | undefined) => (paths?.length ? ` (except the agent's own files: ${paths.join(", ")})` : "");

/** The machine's policy in a sentence, so the model can plan: what runs at once, what waits for the owner, what is
 *  refused. Older agents report none. */
const policyText = (policy: PolicySummary | undefined) =>
  policy ? `; policy ${policy.preset}: runs at once: ${policy.allows}; waits for the owner's approval: ${policy.asks}; refused: ${policy.denies}` : "";

function renderStatus(r: Shaped<"check_agent_status">, noMachine: string): string {
  if (r.connected === 0) return noMachine;
  const rows = r.machines.map((m) =>
    m.error
      ? `- ${m.machine}: connected since ${m.connected_since} but not answering: ${m.error}`
      : `- ${m.machine}: agent ${m.agent_version} on ${m.os} ${m.arch}, shell ${m.shell}, ` +
        `round trip ${m.round_trip_ms} ms, ${m.running_commands} running / ${m.queued_commands} queued commands, ` +
        `allowed roots ${m.allowed_roots?.join(", ")}${excludedText(m.excluded_paths)}, connected since ${m.connected_since}, last heartbeat ${m.last_heartbeat}` +
        policyText(m.policy),
  );
  return [`${r.connected} machine(s) connected:`, ...rows].join("\n");
}

/** Each tool's text; `noMachine` is what the relay says when no machine is connected (Relay.noMachineMessage). */
const RENDERERS: { [N in ToolName]: (r: Shaped<N>, noMachine: string) => string } = {
  run_shell_command: renderShell,
  read_file: renderRead,
  write_file: renderWrite,
  list_directory: renderList,
  check_agent_status: renderStatus,
  get_command_output: renderOutput,
  send_command_input: renderInput,
  kill_command: renderKill,
  list_commands: renderCommands,
  edit_file: renderEdit,
  search_files: renderSearch,
  file_info: renderInfo,
};

// --- running a call ---

const toolError = (message: string): CallToolResult => ({ isError: true, content: [{ type: "text", text: message }] });

/** What every tool call needs of the relay, the same for every client and request: made once per process. */
export interface ToolServices {
  relay: Relay;
  audit: AuditLog;
  /** Per-client concurrency and rate limits. */
  limits: CallLimits;
  calls: CallsInFlight;
  /** Calls waiting for the owner's approval. */
  approvals: Approvals;
}

/** Tool calls in flight by client, so that revoking a client ends its calls on every transport: a 2026-07-28 call
 *  belongs to no session whose closing would end it. */
export class CallsInFlight {
  readonly #byClient = new Map<string, Set<AbortController>>();

  /** A call's signal: aborted when the SDK's is, or when its client is revoked; `end` forgets the call. */
  begin(client: string, signal: AbortSignal): { signal: AbortSignal; end: () => void } {
    const revocation = new AbortController();
    const calls = this.#byClient.get(client) ?? new Set();
    this.#byClient.set(client, calls.add(revocation));
    const end = () => {
      calls.delete(revocation);
      if (calls.size === 0 && this.#byClient.get(client) === calls) this.#byClient.delete(client);
    };
    return { signal: AbortSignal.any([signal, revocation.signal]), end };
  }

  /** Cancels every call of the clients `revoked` names (asked once per client). */
  closeRevoked(revoked: (client: string) => boolean): void {
    for (const [client, calls] of this.#byClient) {
      if (revoked(client)) for (const call of calls) call.abort();
    }
  }
}

/** Where a request's AuthInfo carries the protocol revision it came in on (for the audit) and the origin the client
 *  reached the relay at (for links to the approval page); the transports write both. */
const PROTOCOL_KEY = "protocol";
const ORIGIN_KEY = "origin";

/** The legacy HTTP+SSE transport's only revision. */
export const SSE_PROTOCOL = "2024-11-05";

/** The principal as the transports hand it to the SDK, with the protocol revision and origin of this request. */
export function withProtocol(auth: AuthInfo, protocol: string, req: Request): AuthInfo {
  return { ...auth, extra: { ...auth.extra, [PROTOCOL_KEY]: protocol, [ORIGIN_KEY]: new URL(req.url).origin } };
}

/** Who is calling: the authenticated principal, its session if it has one, the protocol revision, and the origin it
 *  reached the relay at. */
interface Caller {
  client: string;
  session: string | null;
  protocol: string | null;
  origin: string;
}

/** The caller, read from the request's own context: an McpServer may live for one request only, so nothing about
 *  the caller is kept in it. Undefined when the transport passed no principal (then the call is refused). */
function callerOf(ctx: ServerContext): Caller | undefined {
  const auth = ctx.http?.authInfo;
  if (!auth) return undefined;
  const { [PROTOCOL_KEY]: protocol, [ORIGIN_KEY]: origin } = auth.extra ?? {};
  return {
    client: auth.clientId,
    session: ctx.sessionId ?? null,
    protocol: typeof protocol === "string" ? protocol : null,
    origin: typeof origin === "string" ? origin : "",
  };
}

/** What the SDK hands a tool handler that we use: the cancel signal, and a way to send a progress message (present
 *  when the client asked for progress). */
interface CallExtra {
  signal: AbortSignal;
  /** Aborts when the client hangs up the HTTP request carrying the call. A running call goes on (its command's
   *  result is kept for get_command_output); a call still waiting for the owner's approval is cancelled, so that an
   *  approval given after its client went away runs nothing. */
  hungUp?: AbortSignal;
  progress?: (message: string) => void;
  /** Asks the client to open `url` (URL-mode elicitation), where it declared it can; ends with `signal`. */
  openPage: (page: { message: string; url: string; elicitationId: string }, signal: AbortSignal) => void;
}

async function checkAgentStatus(relay: Relay, machine: string | undefined): Promise<ToolResult<"check_agent_status">> {
  const conns = machine ? [relay.pick(machine)] : [...relay.agents.values()];
  const machines = await Promise.all(
    conns.map(async (conn) => {
      const base = {
        machine: conn.machine,
        connected_since: conn.connectedAt.toISOString(),
        last_heartbeat: new Date(conn.ws.data.lastHeard).toISOString(),
      };
      const started = performance.now();
      try {
        const status = await relay.call(conn, "status", {}, { deadlineMs: STATUS_DEADLINE_MS });
        return { ...base, ...status, round_trip_ms: Math.round((performance.now() - started) * 10) / 10 };
      } catch (e) {
        return { ...base, round_trip_ms: null, error: e instanceof Error ? e.message : String(e) };
      }
    }),
  );
  return { machines, connected: machines.length };
}

/** list_commands: one machine, or every connected machine merged newest first (a silent one is named in errors). */
export async function listCommands(relay: Relay, machine: string | undefined, args: OpArgs<"list_commands">): Promise<ToolResult<"list_commands">> {
  const conns = machine ? [relay.pick(machine)] : [...relay.agents.values()];
  const answers = await Promise.allSettled(conns.map((conn) => relay.call(conn, "list_commands", args, { deadlineMs: STATUS_DEADLINE_MS })));
  const commands = answers
    .flatMap((answer, i) => (answer.status === "fulfilled" ? answer.value.commands.map((c) => ({ ...c, machine: conns[i]!.machine })) : []))
    .sort((a, b) => b.started_at.localeCompare(a.started_at));
  const errors = answers.flatMap((answer, i) => (answer.status === "rejected" ? [`${conns[i]!.machine}: ${(answer.reason as Error).message}`] : []));
  return { commands, machines: conns.map((c) => c.machine), errors };
}

/** The tools the relay answers itself (asking agents as it needs). */
const SERVER_TOOLS: Partial<{ [N in ToolName]: (relay: Relay, machine: string | undefined, args: never) => Promise<ToolResult<N>> }> = {
  check_agent_status: (relay, machine) => checkAgentStatus(relay, machine),
  list_commands: (relay, machine, args) => listCommands(relay, machine, args),
};

/** Runs one tool call: audit row, routing, the agent round trip, and a result with both renderings. */
async function callTool(name: ToolName, input: Record<string, unknown>, extra: CallExtra, caller: Caller, services: ToolServices): Promise<CallToolResult> {
  const { relay, audit, limits, calls } = services;
  const { machine, ...args } = input as { machine?: string } & Record<string, unknown>;
  const finish = audit.begin({ tool: name, machine: machine ?? null, arguments: redactArguments(name, args), ...caller });
  let target = machine; // the machine the call went to, once known
  const release = limits.acquire(caller.client);
  if (typeof release === "string") {
    finish({ outcome: "error", error: release });
    return toolError(release);
  }
  const waitEnded = new AbortController(); // aborted by OwnerWait when the client hangs up while the owner decides
  const call = calls.begin(caller.client, AbortSignal.any([extra.signal, waitEnded.signal]));
  try {
    const serverTool = SERVER_TOOLS[name];
    if (serverTool) {
      const result = await serverTool(relay, machine, args as never);
      return respond(name, result, relay, (outputBytes) => finish({ outcome: "ok", outputBytes }));
    }
    const send = async (machineName: string | undefined) => {
      // A machine that dropped a moment ago (a Wi-Fi change, a lid closed) is waited for, with progress, for the grace.
      const conn = await relay.connection(machineName, { signal: call.signal, waiting: extra.progress });
      target = conn.machine;
      const waiting = new OwnerWait(services, conn, caller, extra, () => waitEnded.abort());
      const onProgress = extra.progress && ((p: ProgressFrame) => extra.progress!(progressMessage(p)));
      return relay
        .call(conn, name as AgentOp, args as never, { deadlineMs: deadlineFor(name as AgentOp, args), signal: call.signal, onProgress, onAsk: waiting.asked, onQuiet: extra.progress })
        .finally(() => waiting.end(call.signal.aborted));
    };
    const value = await sendRidingBlips(name, routeTo(machine, args), send, extra.progress, () => target);
    const shell = name === "run_shell_command" ? (value as ToolResult<"run_shell_command">) : undefined;
    const outcome = shell?.timed_out ? "timed_out" : "ok";
    return respond(name, { ...(value as object), machine: target }, relay, (outputBytes) => finish({ outcome, machine: target, exitCode: shell?.exit_code, outputBytes }));
  } catch (e) {
    const error = e instanceof ToolError ? e : new ToolError("The relay hit an unexpected error; its log has the details.");
    if (!(e instanceof ToolError)) log("error", "tool call failed unexpectedly", { tool: name, error: String(e) });
    // Decided while the call is still open: on 2026-07-28 the SDK also aborts the signal just after every answer.
    finish({ outcome: call.signal.aborted ? "cancelled" : error.outcome, machine: target, error: error.message });
    if (error.code === "path_denied") audit.event("path_denied", { machine: target, client: caller.client, detail: `${name}: ${error.message}` });
    return toolError(error.quote ? `${error.message} ${error.quote}` : error.message);
  } finally {
    call.end();
    release();
  }
}

/** How many times a read is sent again after its link died before the answer (each waits for the machine's return). */
const MAX_READ_RESENDS = 3;

/** Sends a call to its machine. A read (a tool with no effect) whose link dies before the answer, as on a network
 *  blip, is sent again once the machine is back (within the reconnect grace), so the client sees only a slower
 *  answer; anything else is sent at most once, and its failure says it may or may not have run. */
async function sendRidingBlips(
  name: ToolName,
  machine: string | undefined,
  send: (machine: string | undefined) => Promise<unknown>,
  progress: ((message: string) => void) | undefined,
  sentTo: () => string | undefined,
): Promise<unknown> {
  for (let resends = 0; ; resends++) {
    try {
      return await send(machine);
    } catch (e) {
      if (!(e instanceof LinkLost) || !TOOLS[name].annotations.readOnlyHint || resends === MAX_READ_RESENDS) throw e;
      machine = sentTo(); // the same machine, whichever way it was picked
      progress?.(`the link to ${machine} dropped before the answer; sending the ${name} again once it is back`);
    }
  }
}

/** The result with both renderings; the audit's end event is written before it goes out, so every call a client
 *  got an answer to is recorded as finished, even if the relay dies right after. */
function respond(name: ToolName, result: object, relay: Relay, finish: (outputBytes: number) => void): CallToolResult {
  const render = RENDERERS[name] as (r: object, noMachine: string) => string;
  const text = render(result, relay.agents.size === 0 ? relay.noMachineNow() : relay.noMachineMessage);
  finish(text.length);
  return { structuredContent: result as Record<string, unknown>, content: [{ type: "text", text }] };
}

/** While a call waits for the owner to approve it, the client hears this often where to look (progress notifications
 *  also reset clients' idle timers). */
const WAITING_PROGRESS_MS = 5_000;

/** A call's side of an approval: opens it when the agent asks, tells the client where the owner decides and keeps
 *  telling it while the call waits, and closes it with the call (expired, cancelled or ended, if still open). */
class OwnerWait {
  #approval?: { id: string; expiresAt: number };
  #ticker?: ReturnType<typeof setInterval>;
  readonly #ended = new AbortController();

  constructor(
    readonly services: ToolServices,
    readonly conn: AgentConn,
    readonly caller: Caller,
    readonly client: Pick<CallExtra, "progress" | "openPage" | "hungUp">,
    /** Cancels the call. */
    readonly cancel: () => void,
  ) {}

  readonly asked = (ask: AskFrame) => {
    const { approvals, relay, audit } = this.services;
    const tooMany = approvals.tooMany(this.caller.client);
    if (tooMany) {
      audit.event("approval_declined", { machine: this.conn.machine, client: this.caller.client, detail: `${ask.subject.tool}: ${tooMany}` });
      relay.decide(this.conn, ask.id, { approve: false, reason: `the relay did not ask the owner: ${tooMany}`, by: "the relay" });
      return;
    }
    const view = approvals.open(ask, { machine: this.conn.machine, client: this.caller.client, origin: this.caller.origin }, (decision) => relay.decide(this.conn, ask.id, decision));
    this.#approval = { id: view.id, expiresAt: Date.parse(view.expires_at) };
    const hungUp = () => approvals.isWaiting(view.id) && this.cancel();
    if (this.client.hungUp?.aborted) hungUp();
    this.client.hungUp?.addEventListener("abort", hungUp, { once: true, signal: this.#ended.signal });
    const message = `waiting for the owner to approve on ${this.conn.machine}: ${view.url} (${view.summary}; expires ${view.expires_at})`;
    this.client.openPage({ message: `The owner of ${this.conn.machine} decides on this call here: ${view.summary}`, url: view.url, elicitationId: view.id }, this.#ended.signal);
    const { progress } = this.client;
    if (!progress) return;
    progress(message);
    this.#ticker = setInterval(() => progress(message), WAITING_PROGRESS_MS);
  };

  end(cancelled: boolean): void {
    clearInterval(this.#ticker);
    this.#ended.abort();
    if (!this.#approval) return;
    const how = cancelled ? "cancelled" : Date.now() >= this.#approval.expiresAt ? "expired" : "ended";
    this.services.approvals.ended(this.#approval.id, how);
  }
}

/** A progress message: how long, how much output, and the last lines (what a person would glance at). */
function progressMessage(p: ProgressFrame): string {
  const last = p.tail.trimEnd().split("\n").slice(-3).join(" | ");
  return `running ${seconds(p.elapsed_ms)}, ${p.output_bytes} bytes of output${last ? `: ${last}` : ""}`;
}

const INSTRUCTIONS =
  "Code Remote runs commands and edits files on the user's own machines. Call check_agent_status to see which " +
  "machines are connected; pass `machine` when more than one is. File tools are limited to each machine's allowed " +
  "roots. Each machine's owner sets a policy there (check_agent_status tells it): some calls wait for the owner's " +
  "approval, some are refused. Long commands come back with a command_id while they run: follow them with get_command_output.";

// --- the McpServer ---

/** A schema whose JSON Schema is converted once per process. The SDK converts a tool's schemas again for every
 *  tools/list and once per McpServer for tools/call, and the relay makes an McpServer per session, and on 2026-07-28
 *  per request: converting all twelve tools costs about 2 ms, which every request would otherwise pay. The JSON is
 *  frozen because every McpServer shares it: a change by one would show in all. */
export function convertedOnce<T>(schema: StandardSchemaWithJSON<T>): StandardSchemaWithJSON<T> {
  const standard = schema["~standard"];
  const converted = new Map<string, Record<string, unknown>>();
  const converter = (io: "input" | "output") => (options: JsonSchemaOptions) => {
    const key = `${io} ${options.target}`;
    let json = converted.get(key);
    if (!json) converted.set(key, (json = deepFreeze(standard.jsonSchema[io](options))));
    return json;
  };
  return { "~standard": { ...standard, jsonSchema: { input: converter("input"), output: converter("output") } } };
}

type JsonSchemaOptions = Parameters<StandardSchemaWithJSON["~standard"]["jsonSchema"]["input"]>[0];

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** A tool as registered with the SDK. */
function toolConfig(name: ToolName) {
  const def = TOOLS[name];
  return {
    title: def.title,
    description: def.description,
    inputSchema: convertedOnce<Record<string, unknown>>(toolInputSchema(name)),
    outputSchema: convertedOnce<Record<string, unknown>>(toolOutputSchema(name)),
    annotations: { title: def.title, ...def.annotations },
  };
}

/** Every tool's registration, made once per process. */
const TOOL_CONFIGS = (Object.keys(TOOLS) as ToolName[]).map((name) => ({ name, config: toolConfig(name) }));

/** A tool's handler: one per tool and process, shared by every McpServer; whatever differs per request (the caller,
 *  its cancel signal, its progress token) comes from the SDK's context. */
function toolHandler(name: ToolName, services: ToolServices) {
  return (args: Record<string, unknown>, ctx: ServerContext): Promise<CallToolResult> => {
    const caller = callerOf(ctx);
    if (!caller) {
      log("error", "a tool call reached the SDK without its principal; refused", { tool: name });
      return Promise.resolve(toolError("The relay could not tell who sent this call; it was refused."));
    }
    const token = ctx.mcpReq._meta?.progressToken;
    const progress = token === undefined ? undefined : progressNotifier(ctx, token);
    // The SDK sends the elicitation only to a session client that declared URL mode, and refuses it on 2026-07-28.
    const openPage: CallExtra["openPage"] = (page, signal) => void ctx.mcpReq.elicitInput({ mode: "url", ...page }, { signal }).catch(() => {});
    return callTool(name, args, { signal: ctx.mcpReq.signal, hungUp: carryingRequest(ctx, caller), progress, openPage }, caller, services);
  };
}

/** Over Streamable HTTP, the request that carries the call: it aborts when the client hangs up. On /sse the request
 *  that posted the call is answered at once, so its end says nothing (the stream's end closes the session instead). */
function carryingRequest(ctx: ServerContext, caller: Caller): AbortSignal | undefined {
  const request = ctx.http?.req;
  return caller.protocol !== SSE_PROTOCOL && request instanceof Request ? request.signal : undefined;
}

/** Sends progress notifications for one call: the value is the seconds since the call began, so it grows with every
 *  notification as MCP requires, whatever the message is about (the owner's approval, then the command's output). */
function progressNotifier(ctx: ServerContext, token: string | number): (message: string) => void {
  const began = performance.now();
  let last = 0;
  return (message) => {
    last = Math.max(last + 0.001, Math.round(performance.now() - began) / 1000);
    void ctx.mcpReq
      .notify({ method: "notifications/progress", params: { progressToken: token, progress: last, message } })
      .catch(() => {}); // the client went away; the call itself decides what happens
  };
}

/** How long a client may take to bring back a state the relay handed it. */
const REQUEST_STATE_TTL_S = 600;

/** Signs what the relay hands a client to bring back with a retried 2026-07-28 call (`requestState`, HMAC with the
 *  relay's key, bound to the method and the principal, for ten minutes) and checks it on the way back, before any
 *  handler runs: a forged, altered, expired or another client's state gets -32602. No tool asks for input yet, so
 *  the relay mints none today; the check stands so that nothing a client makes up reaches a handler as the relay's. */
export function requestStateCodec(key: Uint8Array): RequestStateCodec {
  return createRequestStateCodec({ key, ttlSeconds: REQUEST_STATE_TTL_S, bind: (ctx) => `${ctx.mcpReq.method}\n${ctx.http?.authInfo?.clientId ?? ""}` });
}

/** What makes the relay's McpServers: one per session (the SDK allows one transport per server), and on 2026-07-28
 *  one per request. The schemas and handlers are made here once, so each McpServer costs only its registration
 *  (about 20 us). */
export function mcpServerFactory(services: ToolServices, requestState: RequestStateCodec): () => McpServer {
  const tools = TOOL_CONFIGS.map(({ name, config }) => ({ name, config, handler: toolHandler(name, services) }));
  // Shared by every McpServer, so frozen like the schemas.
  const options = deepFreeze({
    instructions: INSTRUCTIONS,
    // The tool list never changes while the relay runs, so no client needs to watch it.
    capabilities: { tools: { listChanged: false } },
    requestState: { verify: requestState.verify },
  });
  return () => {
    const server = new McpServer({ name: "code-remote", version: VERSION }, options);
    for (const { name, config, handler } of tools) server.registerTool(name, config, handler);
    return server;
  };
}
