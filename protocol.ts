// The contract between the relay (server.ts) and the agents (agent.ts), and between the relay and MCP clients:
// the WebSocket frames, the tool table (names, schemas, annotations, descriptions) and the limits both sides
// enforce. Every shape is written here once; the server registers tools by looping over TOOLS and the agent
// validates each request with the same schema. This file imports only zod, so tests may import it freely.

import { z } from "zod";

/** Product version, shown by `--version` and in `hello`. Kept equal to package.json (a unit test checks). */
export const VERSION = "0.1.0";

/** Relay wire protocol version. The server refuses an agent that speaks another one. */
export const PROTOCOL_VERSION = 1;

// --- limits ---

/** A whole tool result (text and structured content, JSON-encoded) stays under this, so clients never cut it. */
export const MAX_RESULT_CHARS = 100_000;
/** Budget for one large field of a result (a stream, a file chunk) as JSON characters; two copies (text and
 *  structured) of two such fields plus the envelope fit in MAX_RESULT_CHARS. */
export const FIELD_BUDGET_CHARS = 22_000;
/** Largest frame either side accepts on the relay WebSocket (write_file content travels in one frame). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** Largest content write_file takes in one call, in bytes after decoding. Bigger files go in appended chunks. */
export const MAX_WRITE_BYTES = 3 * 1024 * 1024;
/** Default and bounds of run_shell_command's timeout, in seconds. */
export const DEFAULT_COMMAND_TIMEOUT_S = 60;
export const MAX_COMMAND_TIMEOUT_S = 3600;
/** Agents send a ping this often, and both sides look for silence this often; a link silent for
 *  HEARTBEAT_TIMEOUT_MS is dropped, so a dead link is noticed within 25 s on either side. */
export const HEARTBEAT_INTERVAL_MS = 5_000;
export const HEARTBEAT_TIMEOUT_MS = 20_000;

// --- names ---

/** A machine name: what `MACHINE_NAME` sets and what tools take as `machine`. Safe in logs, URLs and file names. */
export const MachineName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a machine name is 1-64 letters, digits, '.', '_' or '-'");

/** WebSocket close codes the relay uses (4000-4999 is the application range). */
export const CloseCode = {
  /** Normal shutdown of either side. */
  normal: 1000,
  /** The server is shutting down; reconnect with backoff. */
  goingAway: 1001,
  /** A frame that does not parse, or a frame out of order (no hello first). */
  protocolError: 4000,
  /** Another agent registered under the same machine name; the old one must back off. */
  replaced: 4001,
  /** The agent speaks a protocol version the server does not. */
  unsupportedVersion: 4002,
  /** The credential was revoked or no longer admits this machine. */
  forbidden: 4003,
  /** Nothing arrived for HEARTBEAT_TIMEOUT_MS. */
  heartbeatTimeout: 4008,
} as const;

/** Error codes an agent puts in a failed result; the server turns them into a tool error for the model. */
export const ErrorCode = z.enum([
  "invalid_arguments", // the arguments did not match the schema
  "path_denied", // outside the allowed roots, or a special file
  "not_found",
  "wrong_type", // a directory where a file was expected, or the reverse
  "too_large",
  "io_error",
  "busy", // the agent is shutting down
  "internal",
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const AgentError = z.object({ code: ErrorCode, message: z.string().max(4000) });
export type AgentError = z.infer<typeof AgentError>;

// --- errors and result budgets (shared by the agent's modules) ---

/** An error meant for the model: the agent sends it across the wire as { code, message }. */
export class Failure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Throws a Failure; typed `never` so it reads as a guard: `if (!ok) fail("not_found", "...")`. */
export const fail = (code: ErrorCode, message: string): never => {
  throw new Failure(code, message);
};


/** How many characters `text` takes once JSON-encoded (without the quotes): control characters cost six. */
export function jsonCost(text: string): number {
  return JSON.stringify(text).length - 2;
}

/** Keeps the beginning and end of `text` so that its JSON form fits `budget` characters, marking the cut. */
export function fitToBudget(text: string, budget: number, omittedBytes = 0): { text: string; cut: boolean } {
  if (omittedBytes === 0 && jsonCost(text) <= budget) return { text, cut: false };
  const chars = Array.from(text); // code points, so a surrogate pair is never split
  const half = Math.floor((budget - 80) / 2);
  const head = takeWithinCost(chars, half);
  const tail = takeWithinCost(chars.slice(head.length).reverse(), half).reverse();
  const kept = head.join("") + tail.join("");
  const omitted = omittedBytes + Buffer.byteLength(text) - Buffer.byteLength(kept);
  return { text: `${head.join("")}\n[... ${omitted} bytes omitted ...]\n${tail.join("")}`, cut: true };
}

export function takeWithinCost(chars: string[], budget: number): string[] {
  let cost = 0;
  let n = 0;
  for (; n < chars.length; n++) {
    cost += jsonCost(chars[n]!);
    if (cost > budget) break;
  }
  return chars.slice(0, n);
}

// --- tool arguments, results and descriptions ---

const machineArg = MachineName.optional().describe(
  "Name of the machine to act on. May be left out when exactly one machine is connected.",
);
const pathArg = z
  .string()
  .min(1)
  .max(4096)
  .describe("Absolute path, or starting with ~ for the home directory. Must be inside the agent's allowed roots.");

const RunShellCommandArgs = z
  .object({
    command: z.string().min(1).max(100_000).describe("Shell command line, run with the user's shell as `$SHELL -c`."),
    working_dir: pathArg.optional().describe("Directory to run in; defaults to the home directory."),
    timeout: z
      .number()
      .int()
      .min(1)
      .max(MAX_COMMAND_TIMEOUT_S)
      .optional()
      .describe(`Seconds before the command and everything it started are killed (default ${DEFAULT_COMMAND_TIMEOUT_S}).`),
  })
  .strict();

const RunShellCommandResult = z.object({
  exit_code: z.number().int().nullable().describe("Exit status, or null when killed by a signal."),
  signal: z.string().nullable().describe("Name of the signal that ended the command, if any."),
  stdout: z.string(),
  stderr: z.string(),
  timed_out: z.boolean(),
  duration_ms: z.number().int(),
  truncated: z.boolean().describe("True when the middle of stdout or stderr was left out to fit the result."),
  stdout_bytes: z.number().int().describe("Total bytes the command wrote to stdout, kept or not."),
  stderr_bytes: z.number().int(),
});

const ReadFileArgs = z
  .object({
    path: pathArg,
    offset: z
      .number()
      .int()
      .min(0)
      .optional()
      .describe("Text: first line to return, counted from 1 (default 1). Base64: first byte, counted from 0."),
    limit: z.number().int().min(1).optional().describe("Text: how many lines. Base64: how many bytes."),
    encoding: z
      .enum(["auto", "utf8", "base64"])
      .optional()
      .describe("auto (default) returns text, or base64 when the file is binary or not valid UTF-8."),
  })
  .strict();

const ReadFileResult = z.object({
  path: z.string().describe("The real path that was read."),
  encoding: z.enum(["utf8", "base64"]),
  content: z.string(),
  size: z.number().int().describe("File size in bytes."),
  offset: z.number().int().describe("First line (text, from 1) or byte (base64, from 0) returned."),
  returned: z.number().int().describe("Lines (text) or bytes (base64) returned."),
  total_lines: z.number().int().nullable().describe("Lines in the whole file (text only)."),
  truncated: z.boolean().describe("True when more of the file follows; read again from next_offset."),
  next_offset: z.number().int().nullable(),
});

const WriteFileArgs = z
  .object({
    path: pathArg,
    content: z.string().max(2 * MAX_WRITE_BYTES).describe(`What to write (at most ${MAX_WRITE_BYTES} bytes per call).`),
    encoding: z.enum(["utf8", "base64"]).optional().describe("How content is encoded (default utf8)."),
    append: z.boolean().optional().describe("Add to the end of the file instead of replacing it."),
  })
  .strict();

const WriteFileResult = z.object({
  path: z.string().describe("The real path that was written."),
  bytes_written: z.number().int().describe("Bytes written by this call (after decoding)."),
  size: z.number().int().describe("File size after the write."),
  created: z.boolean(),
});

const ListDirectoryArgs = z.object({ path: pathArg }).strict();

const DirectoryEntry = z.object({
  name: z.string(),
  type: z.enum(["file", "dir", "symlink", "other"]),
  size: z.number().int(),
  modified: z.string().describe("ISO 8601 time of the last change."),
});

const ListDirectoryResult = z.object({
  path: z.string().describe("The real path that was listed."),
  entries: z.array(DirectoryEntry),
  total: z.number().int().describe("Entries in the directory, listed or not."),
  truncated: z.boolean(),
});

const CheckAgentStatusArgs = z.object({}).strict();

/** What an agent reports about itself; answered live to the `status` op. */
export const AgentStatus = z.object({
  agent_version: z.string(),
  os: z.string(),
  arch: z.string(),
  shell: z.string(),
  hostname: z.string(),
  allowed_roots: z.array(z.string()),
  pid: z.number().int(),
  uptime_s: z.number().int(),
  running_commands: z.number().int(),
  queued_commands: z.number().int(),
});
export type AgentStatus = z.infer<typeof AgentStatus>;

const MachineStatus = AgentStatus.partial().extend({
  machine: z.string(),
  connected_since: z.string(),
  last_heartbeat: z.string(),
  round_trip_ms: z.number().nullable(),
  error: z.string().optional().describe("Why the live check failed, when it did."),
});

const CheckAgentStatusResult = z.object({
  machines: z.array(MachineStatus),
  connected: z.number().int(),
});

/** Tool annotations (MCP hints: clients use them to decide which calls need confirmation). */
type Annotations = { readOnlyHint: boolean; destructiveHint: boolean; idempotentHint: boolean; openWorldHint: boolean };

interface ToolDef<Args extends z.ZodObject, Result extends z.ZodObject> {
  title: string;
  description: string;
  /** Arguments as the agent receives them (without `machine`). */
  args: Args;
  /** Result as the agent sends it; the server adds `machine`. */
  result: Result;
  annotations: Annotations;
  /** "agent": forwarded to the machine as a request; "server": answered by the relay itself. */
  runsOn: "agent" | "server";
}

const tool = <A extends z.ZodObject, R extends z.ZodObject>(def: ToolDef<A, R>) => def;

/** The tool table. Names stay compatible with the original project; order is the order clients list them. */
export const TOOLS = {
  run_shell_command: tool({
    title: "Run shell command",
    description:
      "Run a command line in the user's shell on a connected machine and return its exit code, stdout and stderr. " +
      "Runs as the agent's user with full access to the machine (not confined to the allowed roots); stdin is empty. " +
      `The command and everything it starts are killed at the timeout (default ${DEFAULT_COMMAND_TIMEOUT_S} s, at most ` +
      `${MAX_COMMAND_TIMEOUT_S} s). Long output keeps its beginning and end.`,
    args: RunShellCommandArgs,
    result: RunShellCommandResult,
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true },
    runsOn: "agent",
  }),
  read_file: tool({
    title: "Read file",
    description:
      "Read a file inside the agent's allowed roots. Text comes back by line range (offset from 1, limit lines); " +
      "binary or non-UTF-8 files come back base64. Long files are returned in parts: read again from next_offset.",
    args: ReadFileArgs,
    result: ReadFileResult,
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    runsOn: "agent",
  }),
  write_file: tool({
    title: "Write file",
    description:
      "Create or replace a file inside the agent's allowed roots, creating parent directories. The write is atomic " +
      `(never half-written) and keeps an existing file's mode. At most ${MAX_WRITE_BYTES} bytes per call; use append ` +
      "for more. Use encoding base64 for binary content.",
    args: WriteFileArgs,
    result: WriteFileResult,
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
    runsOn: "agent",
  }),
  list_directory: tool({
    title: "List directory",
    description:
      "List a directory inside the agent's allowed roots: name, type (file, dir, symlink, other), size and " +
      "modification time of each entry, sorted by name. Very large directories are cut short (truncated).",
    args: ListDirectoryArgs,
    result: ListDirectoryResult,
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    runsOn: "agent",
  }),
  check_agent_status: tool({
    title: "Check agent status",
    description:
      "List the connected machines with a live round trip to each: agent version, OS, shell, allowed roots, " +
      "running commands and latency. Call it first to learn the machine names.",
    args: CheckAgentStatusArgs,
    result: CheckAgentStatusResult,
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    runsOn: "server",
  }),
} as const;

export type ToolName = keyof typeof TOOLS;
export type ToolArgs<N extends ToolName> = z.infer<(typeof TOOLS)[N]["args"]>;
export type ToolResult<N extends ToolName> = z.infer<(typeof TOOLS)[N]["result"]>;

/** The MCP input schema of a tool: its agent arguments plus the optional `machine`, unknown fields rejected. */
export function toolInputSchema(name: ToolName) {
  return TOOLS[name].args.extend({ machine: machineArg }).strict();
}

/** The MCP output schema of a tool: its result plus the machine that produced it. */
export function toolOutputSchema(name: ToolName) {
  const result = TOOLS[name].result;
  return TOOLS[name].runsOn === "agent" ? result.extend({ machine: z.string() }) : result;
}

// --- agent operations ---

/** What the server may ask an agent to do: every agent-run tool, plus `status` (the live health check). */
export const AGENT_OPS = {
  run_shell_command: { args: TOOLS.run_shell_command.args, result: TOOLS.run_shell_command.result },
  read_file: { args: TOOLS.read_file.args, result: TOOLS.read_file.result },
  write_file: { args: TOOLS.write_file.args, result: TOOLS.write_file.result },
  list_directory: { args: TOOLS.list_directory.args, result: TOOLS.list_directory.result },
  status: { args: z.object({}).strict(), result: AgentStatus },
} as const;
export type AgentOp = keyof typeof AGENT_OPS;
export type OpArgs<O extends AgentOp> = z.infer<(typeof AGENT_OPS)[O]["args"]>;
export type OpResult<O extends AgentOp> = z.infer<(typeof AGENT_OPS)[O]["result"]>;
const AgentOpName = z.enum(Object.keys(AGENT_OPS) as [AgentOp, ...AgentOp[]]);

// --- frames ---

/** A request id: opaque to the agent, echoed in the progress and result frames that answer it. */
const RequestId = z.string().min(1).max(64);

/** Agent → server, first frame after the upgrade: who this agent is. */
export const HelloFrame = z.object({
  type: z.literal("hello"),
  protocol_version: z.number().int(),
  machine: MachineName,
  agent_version: z.string().max(64),
  os: z.string().max(64),
  arch: z.string().max(64),
  shell: z.string().max(4096),
  hostname: z.string().max(255),
  allowed_roots: z.array(z.string().max(4096)).max(64),
});
export type HelloFrame = z.infer<typeof HelloFrame>;

/** Server → agent, answer to hello: the agent is registered and may expect requests. */
export const WelcomeFrame = z.object({ type: z.literal("welcome"), machine: MachineName, server_version: z.string() });

/** Server → agent: do `op` with `args` (validated by the agent against AGENT_OPS[op].args). */
export const RequestFrame = z.object({ type: z.literal("request"), id: RequestId, op: AgentOpName, args: z.unknown() });
export type RequestFrame = z.infer<typeof RequestFrame>;

/** Server → agent: stop the request `id` (its caller gave up or its deadline passed). No result is expected. */
export const CancelFrame = z.object({ type: z.literal("cancel"), id: RequestId });

/** Agent → server: the one answer to request `id`: a value matching AGENT_OPS[op].result, or an error. */
export const ResultFrame = z.discriminatedUnion("ok", [
  z.object({ type: z.literal("result"), id: RequestId, ok: z.literal(true), value: z.unknown() }),
  z.object({ type: z.literal("result"), id: RequestId, ok: z.literal(false), error: AgentError }),
]);
export type ResultFrame = z.infer<typeof ResultFrame>;

/** Either way: a heartbeat. The receiver answers pong with the same `t` (sender's clock, milliseconds). */
export const PingFrame = z.object({ type: z.literal("ping"), t: z.number() });
export const PongFrame = z.object({ type: z.literal("pong"), t: z.number() });

export const AgentFrame = z.union([HelloFrame, ResultFrame, PingFrame, PongFrame]);
export type AgentFrame = z.infer<typeof AgentFrame>;
export const ServerFrame = z.union([WelcomeFrame, RequestFrame, CancelFrame, PingFrame, PongFrame]);
export type ServerFrame = z.infer<typeof ServerFrame>;

const FRAME_TYPES = ["hello", "welcome", "request", "cancel", "result", "ping", "pong"];

/** Parses one text frame; returns the frame or a short reason (never echoing the frame, which may hold secrets). */
export function parseFrame<S extends z.ZodType>(
  schema: S,
  data: string | Buffer | ArrayBuffer | Uint8Array,
): { ok: true; frame: z.infer<S> } | { ok: false; reason: string } {
  if (typeof data !== "string") return { ok: false, reason: "binary frames are not part of the protocol" };
  // length counts UTF-16 units; a frame of multi-byte characters can be three times larger in bytes
  if (data.length > MAX_FRAME_BYTES || Buffer.byteLength(data) > MAX_FRAME_BYTES) return { ok: false, reason: "frame too large" };
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    return { ok: false, reason: "frame is not JSON" };
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const type = typeof json === "object" && json && "type" in json ? json.type : undefined;
    // Name the type only when it is one of ours: any other value could be a secret sent by mistake.
    return { ok: false, reason: FRAME_TYPES.includes(type as string) ? `invalid '${type}' frame` : "unknown frame type" };
  }
  return { ok: true, frame: parsed.data };
}
