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
/** read_file returns at most this many bytes per call as base64, when the caller asks for them with `limit` (for
 *  copying files: far more than a model should see at once, so the default is much smaller). */
export const MAX_READ_BASE64_BYTES = 1024 * 1024;
/** SIGTERM first, then SIGKILL to the whole group after this grace, so well-behaved programs can clean up. */
export const KILL_GRACE_MS = 2_000;
/** Default and bounds of run_shell_command's timeout, in seconds. */
export const DEFAULT_COMMAND_TIMEOUT_S = 60;
export const MAX_COMMAND_TIMEOUT_S = 3600;
/** Heartbeats. The agent pings every HEARTBEAT_INTERVAL_MS and the relay answers each ping with a pong, so each side
 *  hears the other at least that often on a live link (the relay also pings an agent it has not heard from for
 *  HEARTBEAT_INTERVAL_MS + HEARTBEAT_CHECK_MS, which keeps an older agent that pings every 5 s alive). Both sides look
 *  for silence every HEARTBEAT_CHECK_MS and drop a link that has been silent for more than HEARTBEAT_TIMEOUT_MS (close
 *  4008), so a half-dead link (packets dropped without a FIN or RST: a dead NAT, a Wi-Fi change, a train) is found
 *  within timeout + check, ~7 s, on either side. Why these figures: a laptop user expects the machine back within
 *  seconds, not the 25 s of the old 5 s / 20 s; the timeout stays three pings long, so one or two pings lost or late
 *  (a loaded relay, a congested link) are not a disconnect; and a ping is ~60 bytes, so 10,000 agents cost the relay
 *  5,000 small frames a second in, as many out. The sweep that checks is a loop over sockets: cheap at once a second.
 *  Known limit: a frame that takes longer than the timeout to arrive whole (megabytes over a very slow link) holds
 *  the pings queued behind it, and can be taken for silence. */
export const HEARTBEAT_INTERVAL_MS = 2_000;
export const HEARTBEAT_TIMEOUT_MS = 6_000;
export const HEARTBEAT_CHECK_MS = 1_000;

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
  /** The machine name is pinned to another agent's key, or this agent could not prove it holds the pinned key,
   *  or (an agent without a key) another agent connected under the name holds it: retry with the usual backoff. */
  identityRefused: 4004,
  /** Nothing arrived for HEARTBEAT_TIMEOUT_MS. */
  heartbeatTimeout: 4008,
  /** Sent by an agent that finds its clock jumped (the machine slept, or the process was stopped, for more than a
   *  few seconds): its link is almost surely dead, so it drops it and reconnects at once, without backoff. A relay
   *  that still hears it treats it like any close: the calls in flight fail ("may or may not have run"). */
  wokeFromSleep: 4009,
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
  "policy_denied", // the machine's policy refuses this call (the message names the rule)
  "not_approved", // the policy asked the owner, who denied it or did not answer in time
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

/** `message` says what went wrong and may be logged and audited; `quote` holds words of the user's files that help
 *  the model's next try (the closest lines to a failed edit): shown to the caller only, never logged or audited. */
export const AgentError = z.object({ code: ErrorCode, message: z.string().max(4000), quote: z.string().max(4000).optional() });
export type AgentError = z.infer<typeof AgentError>;

// --- errors and result budgets (shared by the agent's modules) ---

/** An error meant for the model: the agent sends it across the wire as { code, message, quote? }. */
export class Failure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** Words of a file, for the caller's eyes only (see AgentError). */
    readonly quote?: string,
  ) {
    super(message);
  }
}

/** Throws a Failure; typed `never` so it reads as a guard: `if (!ok) fail("not_found", "...")`. */
export const fail = (code: ErrorCode, message: string, quote?: string): never => {
  throw new Failure(code, message, quote);
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

/** How long run_shell_command waits before handing a still-running command back (clients cap calls near 60 s). */
export const DEFAULT_WAIT_S = 50;
/** get_command_output waits at most this long for new output, and this long when not told. */
export const MAX_OUTPUT_WAIT_S = 50;
export const DEFAULT_OUTPUT_WAIT_S = 10;

/** A command's handle: a random part and the machine it runs on, so the relay can route by it alone. */
export const CommandId = z
  .string()
  .regex(/^[0-9a-f]{12}@[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a command_id looks like 3f9c0a1b2c3d@machine")
  .describe("The handle run_shell_command returned, e.g. 3f9c0a1b2c3d@laptop.");

/** The machine a command id names. */
export const machineOfCommandId = (id: string) => id.slice(id.indexOf("@") + 1);

/** What a command is doing. `queued` waits for a free slot; the last three are final. */
export const CommandState = z.enum(["queued", "running", "exited", "killed", "timed_out"]);
export type CommandState = z.infer<typeof CommandState>;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

const RunShellCommandArgs = z
  .object({
    command: z.string().min(1).max(100_000).optional().describe("Command line, run as `$SHELL -c command`."),
    argv: z
      .array(z.string().max(100_000))
      .min(1)
      .max(1_000)
      .optional()
      .describe("Program and arguments, run without a shell, for exact quoting. Give command or argv, not both."),
    shell: z.string().min(1).max(4096).optional().describe("Absolute path of another shell to run command with."),
    working_dir: pathArg.optional().describe("Directory to run in; defaults to home (or the first allowed root if home is outside them)."),
    env: z
      .record(z.string().regex(ENV_NAME, "an environment variable name"), z.string().max(100_000))
      .optional()
      .describe("Variables added to the command's clean environment."),
    stdin: z.string().max(MAX_WRITE_BYTES).optional().describe("Text fed to the command's stdin, which is then closed."),
    timeout: z
      .number()
      .int()
      .min(1)
      .max(MAX_COMMAND_TIMEOUT_S)
      .optional()
      .describe(`Seconds before the command and everything it started are killed (default ${DEFAULT_COMMAND_TIMEOUT_S}; none for background).`),
    background: z.boolean().optional().describe("Return at once with a command_id (for servers, watchers, long builds)."),
    wait_seconds: z
      .number()
      .int()
      .min(0)
      .max(MAX_COMMAND_TIMEOUT_S)
      .optional()
      .describe(`Return after this many seconds if the command is still running (default ${DEFAULT_WAIT_S}); it keeps running.`),
  })
  .strict();

const RunShellCommandResult = z.object({
  command_id: CommandId,
  state: CommandState,
  exit_code: z.number().int().nullable().describe("Exit status; null while running or when killed by a signal."),
  signal: z.string().nullable().describe("Name of the signal that ended the command, if any."),
  stdout: z.string(),
  stderr: z.string(),
  timed_out: z.boolean(),
  duration_ms: z.number().int(),
  truncated: z.boolean().describe("True when the middle of stdout or stderr was left out to fit the result."),
  stdout_bytes: z.number().int().describe("Bytes written to stdout so far, kept or not."),
  stderr_bytes: z.number().int(),
  next_offset: z.number().int().describe("Where get_command_output continues in the combined output."),
});

const CommandIdArgs = { command_id: CommandId };

const GetCommandOutputArgs = z
  .object({
    ...CommandIdArgs,
    offset: z.number().int().min(0).optional().describe("Byte offset in the combined output (default 0: the start)."),
    wait_seconds: z
      .number()
      .int()
      .min(0)
      .max(MAX_OUTPUT_WAIT_S)
      .optional()
      .describe(`If nothing new is there yet, wait up to this long for output or the end (default ${DEFAULT_OUTPUT_WAIT_S}).`),
  })
  .strict();

const CommandSummary = z.object({
  command_id: CommandId,
  command: z.string().describe("The command line (or argv joined), shortened if long."),
  state: CommandState,
  background: z.boolean(),
  started_at: z.string(),
  duration_ms: z.number().int(),
  exit_code: z.number().int().nullable(),
  signal: z.string().nullable(),
});

const GetCommandOutputResult = CommandSummary.extend({
  output: z.string().describe("stdout and stderr as they arrived, from offset."),
  offset: z.number().int().describe("Where output starts (later than asked when older output was pruned)."),
  next_offset: z.number().int().describe("Pass this as offset next time."),
  total_bytes: z.number().int().describe("Bytes of output so far."),
  more: z.boolean().describe("More output is already there beyond next_offset."),
});

const SendCommandInputArgs = z
  .object({
    ...CommandIdArgs,
    input: z.string().max(MAX_WRITE_BYTES).describe("Text to write to stdin; include \\n to end a line."),
    close_stdin: z.boolean().optional().describe("Close stdin after writing (end of input)."),
  })
  .strict();

const SendCommandInputResult = z.object({
  command_id: CommandId,
  state: CommandState,
  bytes_written: z.number().int(),
  stdin_open: z.boolean(),
});

export const KILL_SIGNALS = ["SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"] as const;

const KillCommandArgs = z
  .object({
    ...CommandIdArgs,
    signal: z
      .enum(KILL_SIGNALS)
      .optional()
      .describe("Signal for the whole process group (default: SIGTERM, then SIGKILL after 2 s)."),
  })
  .strict();

const KillCommandResult = z.object({ command_id: CommandId, state: CommandState, signal_sent: z.string().nullable() });

const ListCommandsArgs = z.object({ state: CommandState.optional().describe("Only commands in this state.") }).strict();

/** What one agent answers to list_commands; the relay merges machines into ListCommandsResult. */
export const AgentCommandList = z.object({ commands: z.array(CommandSummary), total: z.number().int() });

const ListCommandsResult = z.object({
  commands: z.array(CommandSummary.extend({ machine: z.string() })),
  machines: z.array(z.string()).describe("The machines asked."),
  errors: z.array(z.string()).describe("Machines that did not answer, and why."),
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
    limit: z
      .number()
      .int()
      .min(1)
      .optional()
      .describe(`Text: how many lines. Base64: how many bytes (default 32 KiB; at most ${MAX_READ_BASE64_BYTES / 1024 / 1024} MiB, for copying files).`),
    tail: z.number().int().min(1).optional().describe("Text: return the last this many lines (instead of offset)."),
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
  truncated: z
    .boolean()
    .describe("True when more of the file follows: read again from next_offset. With next_offset null (a tail), the last line was too long and only its end is returned."),
  next_offset: z.number().int().nullable(),
});

const WriteFileArgs = z
  .object({
    path: pathArg,
    content: z.string().max(2 * MAX_WRITE_BYTES).describe(`What to write (at most ${MAX_WRITE_BYTES} bytes per call).`),
    encoding: z.enum(["utf8", "base64"]).optional().describe("How content is encoded (default utf8)."),
    append: z
      .boolean()
      .optional()
      .describe("Add to the end of the file, in place, instead of replacing it. An append that fails partway (a full disk) is taken back unless another program appended after it."),
  })
  .strict();

const WriteFileResult = z.object({
  path: z.string().describe("The real path that was written."),
  bytes_written: z.number().int().describe("Bytes written by this call (after decoding)."),
  size: z.number().int().describe("File size after the write."),
  created: z.boolean(),
});

const EditFileArgs = z
  .object({
    path: pathArg,
    edits: z
      .array(
        z
          .object({
            old_text: z.string().min(1).max(100_000).describe("Exact text to find (whitespace and indentation included)."),
            new_text: z.string().max(MAX_WRITE_BYTES).describe("Text to put in its place."),
            replace_all: z.boolean().optional().describe("Replace every occurrence (otherwise it must occur exactly once)."),
          })
          .strict(),
      )
      .min(1)
      .max(100)
      .describe("Applied in order, each to the result of the previous; all or nothing."),
    dry_run: z.boolean().optional().describe("Show the diff without writing."),
  })
  .strict();

const EditFileResult = z.object({
  path: z.string(),
  replacements: z.number().int().describe("Occurrences replaced, all edits together."),
  line_endings: z.enum(["lf", "crlf"]).describe("The file's line endings, kept as they were."),
  dry_run: z.boolean(),
  diff: z.string().describe("Unified diff of the change."),
  size: z.number().int().describe("File size after the edit (or that it would have)."),
});

const SearchFilesArgs = z
  .object({
    path: pathArg.describe("Directory to search under (inside the allowed roots)."),
    pattern: z.string().min(1).max(1_000).optional().describe("Glob on paths relative to path, e.g. **/*.ts or src/*.json."),
    content: z.string().min(1).max(1_000).optional().describe("Regular expression (JavaScript syntax) to find in file contents."),
    case_sensitive: z.boolean().optional().describe("Match content case-sensitively (default true)."),
    max_results: z.number().int().min(1).max(1_000).optional().describe("Stop after this many matches (default 100)."),
    include_hidden: z.boolean().optional().describe("Also search hidden files and directories (default false)."),
  })
  .strict();

const SearchFilesResult = z.object({
  path: z.string(),
  matches: z.array(
    z.object({
      file: z.string().describe("Path relative to the searched directory."),
      line: z.number().int().nullable().describe("Line number (from 1) of a content match."),
      text: z.string().nullable().describe("The matching line, shortened if long."),
    }),
  ),
  files_visited: z.number().int(),
  skipped_binary: z.number().int(),
  truncated: z.boolean(),
  truncated_reason: z.enum(["max_results", "max_files", "time", "size"]).nullable(),
  elapsed_ms: z.number().int(),
});

const FileInfoArgs = z.object({ path: pathArg }).strict();

const FileInfoResult = z.object({
  path: z.string().describe("The path of the entry itself (a symlink is not followed)."),
  type: z.enum(["file", "dir", "symlink", "fifo", "socket", "device", "other"]),
  size: z.number().int(),
  mode: z.string().describe("Permission bits in octal, e.g. 0644."),
  permissions: z.string().describe("As ls shows them, e.g. -rw-r--r--."),
  uid: z.number().int(),
  gid: z.number().int(),
  owner: z.string().nullable(),
  group: z.string().nullable(),
  modified: z.string(),
  accessed: z.string(),
  changed: z.string(),
  created: z.string().nullable(),
  symlink_target: z.string().nullable().describe("What a symlink points to, as written in it."),
  resolved_path: z.string().nullable().describe("Where a symlink leads, when that is inside the allowed roots."),
  line_count: z.number().int().nullable().describe("Lines, for a text file (up to 64 MiB)."),
  binary: z.boolean().nullable().describe("Whether a file looks binary (NUL bytes or invalid UTF-8)."),
});

const ListDirectoryArgs = z
  .object({
    path: pathArg,
    depth: z.number().int().min(1).max(5).optional().describe("Levels to descend (default 1: just this directory)."),
    include_hidden: z.boolean().optional().describe("Also list names starting with a dot (default false)."),
  })
  .strict();

const DirectoryEntry = z.object({
  name: z.string().describe("Path relative to the listed directory."),
  type: z.enum(["file", "dir", "symlink", "other"]),
  size: z.number().int(),
  modified: z.string().describe("ISO 8601 time of the last change."),
});

const ListDirectoryResult = z.object({
  path: z.string().describe("The real path that was listed."),
  entries: z.array(DirectoryEntry),
  total: z.number().int().describe("Entries seen, listed or not."),
  hidden_skipped: z.number().int().describe("Hidden entries left out (see include_hidden)."),
  truncated: z.boolean(),
});

const CheckAgentStatusArgs = z.object({}).strict();

/** A machine's policy in short, as the owner set it on the machine: what runs at once, what waits for the owner's
 *  approval, what is refused. */
export const PolicySummary = z.object({
  preset: z.string().max(64),
  file: z.string().max(4096).nullable().describe("The policy file, or null when there is none (preset open)."),
  allows: z.string().max(2000).describe("What runs at once."),
  asks: z.string().max(2000).describe("What waits for the owner's approval."),
  denies: z.string().max(2000).describe("What is refused."),
});
export type PolicySummary = z.infer<typeof PolicySummary>;

/** What an agent reports about itself; answered live to the `status` op. */
export const AgentStatus = z.object({
  agent_version: z.string(),
  os: z.string(),
  arch: z.string(),
  shell: z.string(),
  hostname: z.string(),
  allowed_roots: z.array(z.string()),
  excluded_paths: z
    .array(z.string())
    .optional()
    .describe("The agent's own files (settings, state, service, logs): no file tool reaches them, whatever the roots. Absent from older agents."),
  pid: z.number().int(),
  uptime_s: z.number().int(),
  running_commands: z.number().int(),
  queued_commands: z.number().int(),
  policy: PolicySummary.optional().describe("What the machine's owner lets an assistant do there. Absent from older agents."),
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

const READ_ONLY: Annotations = { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false };
const CHANGES_FILES: Annotations = { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false };
const RUNS_CODE: Annotations = { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true };

interface ToolDef<Args extends z.ZodObject, Result extends z.ZodObject, RunsOn extends "agent" | "server"> {
  title: string;
  description: string;
  /** Arguments as the agent receives them (without `machine`). */
  args: Args;
  /** Result as the agent sends it; the server adds `machine`. */
  result: Result;
  annotations: Annotations;
  /** "agent": forwarded to one machine as a request; "server": answered by the relay (asking agents itself). */
  runsOn: RunsOn;
}

const tool = <A extends z.ZodObject, R extends z.ZodObject, O extends "agent" | "server">(def: ToolDef<A, R, O>) => def;

/** The tool table. The first five keep the original project's names and arguments; order is the listing order. */
export const TOOLS = {
  run_shell_command: tool({
    title: "Run shell command",
    description:
      "Run a command on a connected machine, as the agent's user with full access (not confined to the allowed " +
      "roots). Returns exit code, stdout and stderr when it ends. Still running after wait_seconds (default " +
      `${DEFAULT_WAIT_S}), it is handed back with state "running" and a command_id: read more with ` +
      "get_command_output, answer prompts with send_command_input, stop it with kill_command. Use background: " +
      "true for servers and watchers, and argv instead of command for exact quoting. stdin is empty unless given " +
      `or background. Killed with everything it started at the timeout (default ${DEFAULT_COMMAND_TIMEOUT_S} s).`,
    args: RunShellCommandArgs,
    result: RunShellCommandResult,
    annotations: RUNS_CODE,
    runsOn: "agent",
  }),
  read_file: tool({
    title: "Read file",
    description:
      "Read a file inside the agent's allowed roots. Text comes back by line range (offset from 1 and limit, or " +
      "tail for the last lines); binary or non-UTF-8 files come back base64. Long files come in parts: read " +
      "again from next_offset.",
    args: ReadFileArgs,
    result: ReadFileResult,
    annotations: READ_ONLY,
    runsOn: "agent",
  }),
  write_file: tool({
    title: "Write file",
    description:
      "Create or replace a whole file inside the agent's allowed roots, creating parent directories. The write is " +
      `atomic (never half-written) and keeps an existing file's mode. At most ${MAX_WRITE_BYTES} bytes per call; ` +
      "use append for more, encoding base64 for binary content, and edit_file to change part of a file.",
    args: WriteFileArgs,
    result: WriteFileResult,
    annotations: CHANGES_FILES,
    runsOn: "agent",
  }),
  list_directory: tool({
    title: "List directory",
    description:
      "List a directory inside the agent's allowed roots, optionally several levels deep: name, type, size and " +
      "modification time of each entry, sorted. Hidden entries only with include_hidden. Cut short when very large.",
    args: ListDirectoryArgs,
    result: ListDirectoryResult,
    annotations: READ_ONLY,
    runsOn: "agent",
  }),
  check_agent_status: tool({
    title: "Check agent status",
    description:
      "List the connected machines with a live round trip to each: agent version, OS, shell, allowed roots, " +
      "running commands and latency. Call it first to learn the machine names.",
    args: CheckAgentStatusArgs,
    result: CheckAgentStatusResult,
    annotations: READ_ONLY,
    runsOn: "server",
  }),
  get_command_output: tool({
    title: "Get command output",
    description:
      "Read what a command started by run_shell_command has printed (stdout and stderr as they arrived) from " +
      "offset, and whether it is still running, exited, killed or timed out. Pass the previous next_offset to get " +
      "only what is new; it waits up to wait_seconds for new output or the end.",
    args: GetCommandOutputArgs,
    result: GetCommandOutputResult,
    annotations: READ_ONLY,
    runsOn: "agent",
  }),
  send_command_input: tool({
    title: "Send command input",
    description:
      "Write text to the stdin of a running command (started with background: true), e.g. to answer a prompt or " +
      "drive a REPL; end lines with \\n. close_stdin ends its input.",
    args: SendCommandInputArgs,
    result: SendCommandInputResult,
    annotations: RUNS_CODE,
    runsOn: "agent",
  }),
  kill_command: tool({
    title: "Kill command",
    description: "Stop a command and everything it started (its whole process group): SIGTERM, then SIGKILL after 2 s.",
    args: KillCommandArgs,
    result: KillCommandResult,
    annotations: { ...RUNS_CODE, idempotentHint: true, openWorldHint: false },
    runsOn: "agent",
  }),
  list_commands: tool({
    title: "List commands",
    description:
      "Recent commands on one machine (or all), newest first, with their command_id, state, start time and duration.",
    args: ListCommandsArgs,
    result: ListCommandsResult,
    annotations: READ_ONLY,
    runsOn: "server",
  }),
  edit_file: tool({
    title: "Edit file",
    description:
      "Replace exact text in a file inside the allowed roots and return a unified diff. Each old_text must occur " +
      "exactly once (or use replace_all); otherwise nothing is changed and the error shows the closest matches. " +
      "Edits apply in order, all or nothing; the file's line endings (LF or CRLF) are kept. dry_run shows the diff only.",
    args: EditFileArgs,
    result: EditFileResult,
    annotations: CHANGES_FILES,
    runsOn: "agent",
  }),
  search_files: tool({
    title: "Search files",
    description:
      "Find files under a directory by name (glob pattern) and/or content (regular expression), with file, line " +
      "number and line. Skips .git, node_modules, hidden and binary files; bounded in results, files and time.",
    args: SearchFilesArgs,
    result: SearchFilesResult,
    annotations: READ_ONLY,
    runsOn: "agent",
  }),
  file_info: tool({
    title: "File info",
    description:
      "Type, size, mode, owner, times and symlink target of a path inside the allowed roots, and line count for text files.",
    args: FileInfoArgs,
    result: FileInfoResult,
    annotations: READ_ONLY,
    runsOn: "agent",
  }),
} as const;

export type ToolName = keyof typeof TOOLS;
export type ToolArgs<N extends ToolName> = z.infer<(typeof TOOLS)[N]["args"]>;
export type ToolResult<N extends ToolName> = z.infer<(typeof TOOLS)[N]["result"]>;

/** The MCP input schema of a tool: its agent arguments plus the optional `machine`, unknown fields rejected. */
export function toolInputSchema(name: ToolName) {
  return TOOLS[name].args.extend({ machine: machineArg }).strict();
}

/** The MCP output schema of a tool: its result plus, for tools run on one agent, the machine that ran it. */
export function toolOutputSchema(name: ToolName) {
  const result = TOOLS[name].result;
  return TOOLS[name].runsOn === "agent" ? result.extend({ machine: z.string() }) : result;
}

// --- agent operations ---

/** Tools an agent runs as they are: the relay forwards the arguments and adds `machine` to the result. */
type DirectTool = { [N in ToolName]: (typeof TOOLS)[N]["runsOn"] extends "agent" ? N : never }[ToolName];

/** Operations that are not a tool as such: the relay composes them into check_agent_status and list_commands. */
const OTHER_OPS = {
  status: { args: z.object({}).strict(), result: AgentStatus },
  list_commands: { args: ListCommandsArgs, result: AgentCommandList },
} as const;

/** What the server may ask an agent to do. */
export type AgentOp = DirectTool | keyof typeof OTHER_OPS;
export type OpArgs<O extends AgentOp> = O extends DirectTool ? ToolArgs<O> : z.infer<(typeof OTHER_OPS)[O & keyof typeof OTHER_OPS]["args"]>;
export type OpResult<O extends AgentOp> = O extends DirectTool ? ToolResult<O> : z.infer<(typeof OTHER_OPS)[O & keyof typeof OTHER_OPS]["result"]>;

const isOtherOp = (op: string): op is keyof typeof OTHER_OPS => op in OTHER_OPS;

/** The schemas an agent validates an op's arguments with, and the relay its result with. */
export function opSchemas(op: AgentOp): { args: z.ZodType; result: z.ZodType } {
  return isOtherOp(op) ? OTHER_OPS[op] : TOOLS[op];
}

export const AGENT_OP_NAMES = [
  ...(Object.keys(TOOLS) as ToolName[]).filter((name) => TOOLS[name].runsOn === "agent"),
  ...(Object.keys(OTHER_OPS) as (keyof typeof OTHER_OPS)[]),
] as AgentOp[];
const AgentOpName = z.enum(AGENT_OP_NAMES as [AgentOp, ...AgentOp[]]);

// --- frames ---

/** A request id: opaque to the agent, echoed in the progress and result frames that answer it. */
const RequestId = z.string().min(1).max(64);

/** `bytes` bytes in unpadded base64url, in its one canonical spelling (so one key is never two different strings). */
const base64url = (bytes: number, what: string) =>
  z
    .string()
    .length(Math.ceil((bytes * 4) / 3))
    .regex(/^[A-Za-z0-9_-]+$/, `${what} must be base64url`)
    .refine((s) => Buffer.from(s, "base64url").toString("base64url") === s, `${what} is not canonical base64url`);

/** An agent's Ed25519 public key (32 bytes), made at its first start; the relay pins it to the machine name. */
export const PublicKey = base64url(32, "a public key");
/** A relay's challenge: 32 random bytes, fresh for each connection. */
const Nonce = base64url(32, "a nonce");
/** An Ed25519 signature (64 bytes). */
const Signature = base64url(64, "a signature");

/** Agent → server, first frame after the upgrade: who this agent is. With `public_key` the relay answers with a
 *  challenge and registers the agent only once it proves it holds that key; an agent without one (older than
 *  keys) may take only a name that no key is pinned to and no other agent holds. */
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
  public_key: PublicKey.optional(),
  /** "enroll": this connection only pairs an owner passkey with the machine (`enroll-owner`): it is not registered as
   *  the machine and gets no requests, so the daemon's own link is untouched. It must prove its key. */
  purpose: z.enum(["serve", "enroll"]).optional(),
});
export type HelloFrame = z.infer<typeof HelloFrame>;

/** Server → agent, answer to a hello with a public key: prove you hold its private key. Only sent before welcome,
 *  and only to an agent whose hello carried a key (an older agent would not know the frame). */
export const ChallengeFrame = z.object({ type: z.literal("challenge"), nonce: Nonce });

/** Agent → server, answer to a challenge: the Ed25519 signature of identityTranscript(machine, public_key, nonce). */
export const ProofFrame = z.object({ type: z.literal("proof"), signature: Signature });
export type ProofFrame = z.infer<typeof ProofFrame>;

/** What an agent signs to prove it holds its machine's key: the relay's fresh nonce bound to the machine name and
 *  the key, under a label of its own, so a signature proves this one connection and is good for nothing else. */
export function identityTranscript(machine: string, publicKey: string, nonce: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(`code-remote agent identity v1\n${machine}\n${publicKey}\n${nonce}`);
}

/** What a relay can do beyond the first protocol, named in its welcome: "approvals" = it carries `ask` frames to the
 *  owner and their `decision` back (an agent whose policy asks refuses such calls on a relay without it);
 *  "passkeys" = it serves enrolment links (hello purpose "enroll") and pages, and carries assertions. */
export const RELAY_FEATURES = ["approvals", "passkeys"] as const;

/** Server → agent, answer to hello: the agent is registered and may expect requests. `notice` is a warning for the
 *  agent's log (its token is the shared one, kept only for compatibility). */
export const WelcomeFrame = z.object({
  type: z.literal("welcome"),
  machine: MachineName,
  server_version: z.string(),
  notice: z.string().max(1000).optional(),
  features: z.array(z.string().max(64)).max(64).optional(),
});

/** Server → agent: do `op` with `args` (validated by the agent against opSchemas(op).args). With `progress`,
 *  the agent sends progress frames while the request runs (the MCP client asked for progress). `command_id`, on a
 *  run_shell_command, is the id the relay chose for the command (a CommandId of this machine), so that the relay can
 *  name it even if the link dies before the answer; the agent takes it when it is a valid, unused id of its own
 *  machine, and makes its own otherwise (as it does for a relay that sends none). Any string up to 200 characters
 *  parses: a bad id costs the relay its choice, never the link. */
export const RequestFrame = z.object({
  type: z.literal("request"),
  id: RequestId,
  op: AgentOpName,
  args: z.unknown(),
  progress: z.boolean().optional(),
  command_id: z.string().max(200).optional(),
});
export type RequestFrame = z.infer<typeof RequestFrame>;

/** Server → agent: stop the request `id` (its caller gave up or its deadline passed). No result is expected. */
export const CancelFrame = z.object({ type: z.literal("cancel"), id: RequestId });

// --- passkeys: the owner's approvals signed on the owner's device, checked by the agent ---

/** base64url text of at most `max` characters (a WebAuthn field as the browser's JSON form carries it). */
const b64url = (max: number) => z.string().max(max).regex(/^[A-Za-z0-9_-]*$/, "base64url");

/** What a browser returns from navigator.credentials.create, in its JSON form (RegistrationResponseJSON). */
export const PasskeyRegistration = z.object({
  id: b64url(1024),
  rawId: b64url(1024),
  type: z.literal("public-key"),
  response: z.object({
    clientDataJSON: b64url(16_384),
    attestationObject: b64url(65_536),
    transports: z.array(z.string().max(32)).max(16).optional(),
    publicKeyAlgorithm: z.number().int().optional(),
    publicKey: b64url(16_384).optional(),
    authenticatorData: b64url(65_536).optional(),
  }),
  clientExtensionResults: z.record(z.string(), z.unknown()),
  authenticatorAttachment: z.enum(["platform", "cross-platform"]).optional(),
});
export type PasskeyRegistration = z.infer<typeof PasskeyRegistration>;

/** What a browser returns from navigator.credentials.get, in its JSON form (AuthenticationResponseJSON). */
export const PasskeyAssertion = z.object({
  id: b64url(1024),
  rawId: b64url(1024),
  type: z.literal("public-key"),
  response: z.object({
    clientDataJSON: b64url(16_384),
    authenticatorData: b64url(65_536),
    signature: b64url(16_384),
    userHandle: b64url(1024).optional(),
  }),
  clientExtensionResults: z.record(z.string(), z.unknown()),
  authenticatorAttachment: z.enum(["platform", "cross-platform"]).optional(),
});
export type PasskeyAssertion = z.infer<typeof PasskeyAssertion>;

/** What an agent whose policy wants passkey approvals adds to its question: the parts of the statement the owner
 *  signs that only the agent knows, and which passkeys it accepts. */
export const PasskeyChallenge = z.object({
  nonce: base64url(32, "a nonce"),
  arguments_sha256: z.string().regex(/^[0-9a-f]{64}$/, "a SHA-256 in hex"),
  expires_at: z.string().max(64),
  rp_id: z.string().max(255),
  credential_ids: z.array(b64url(1024)).max(32),
});
export type PasskeyChallenge = z.infer<typeof PasskeyChallenge>;

/** The statement an owner's passkey signs to approve one call (its SHA-256 is the WebAuthn challenge): the machine,
 *  the call, the tool, a digest of the exact arguments, when the question expires, the agent's nonce, and how far
 *  the approval reaches. The relay renders it for the page; the agent rebuilds it from its own values to check. */
export function approvalStatement(fields: { machine: string; call: string; tool: string; challenge: Omit<PasskeyChallenge, "rp_id" | "credential_ids">; forSeconds?: number }): string {
  const { machine, call, tool, challenge, forSeconds } = fields;
  return [
    "code-remote approval v1",
    `machine=${machine}`,
    `call=${call}`,
    `tool=${tool}`,
    `arguments=${challenge.arguments_sha256}`,
    `expires=${challenge.expires_at}`,
    `nonce=${challenge.nonce}`,
    `scope=${forSeconds ? `for ${forSeconds} s` : "once"}`,
  ].join("\n");
}

/** Agent → server (enroll connection): open an enrolment page for this machine. The agent chose the challenge and
 *  the user id, and says which RP ID and origin it will accept (from its RELAY_URL). */
export const EnrollBeginFrame = z.object({
  type: z.literal("enroll_begin"),
  challenge: base64url(32, "a challenge"),
  user_id: base64url(16, "a user id"),
  rp_id: z.string().max(255),
  origin: z.string().max(2048),
  label: z.string().max(100),
});
export type EnrollBeginFrame = z.infer<typeof EnrollBeginFrame>;

/** Server → agent (enroll connection): where the owner creates the passkey. */
export const EnrollPageFrame = z.object({ type: z.literal("enroll_page"), url: z.string().max(2048) });

/** Server → agent (enroll connection): what the owner's browser made, for the agent to verify and show. */
export const EnrollCredentialFrame = z.object({ type: z.literal("enroll_credential"), credential: PasskeyRegistration });

/** Agent → server (enroll connection): whether the owner confirmed the fingerprint and the key was stored. */
export const EnrollResultFrame = z.object({ type: z.literal("enroll_result"), stored: z.boolean(), message: z.string().max(1000) });

/** What a call waiting for the owner's approval would do, as the agent that will run it describes it: the exact
 *  command with its working directory and the names (never the values) of the variables it adds, or the path and,
 *  for a change, its diff against what is there; and the policy rule that asked. */
export const ApprovalSubject = z.object({
  tool: AgentOpName,
  summary: z.string().max(500).describe("One line: what would happen, and where."),
  rule: z.string().max(500).describe("The policy rule that asked."),
  command: z.string().max(100_000).optional(),
  working_dir: z.string().max(4096).optional(),
  env_names: z.array(z.string().max(256)).max(1000).optional(),
  stdin: z.string().max(64_000).optional().describe("What the command would read on stdin (a script, for a shell), cut if long."),
  shell: z.string().max(4096).optional().describe("The program that would read the command, when not the agent's shell."),
  background: z.boolean().optional(),
  timeout_s: z.number().int().optional(),
  path: z.string().max(4096).optional(),
  diff: z.string().max(64_000).optional().describe("For a change: a unified diff against what is there, cut if long."),
});
export type ApprovalSubject = z.infer<typeof ApprovalSubject>;

/** Agent → server: request `id` waits for the owner's approval until `expires_in_ms` from now; the agent runs it only
 *  on a `decision` that approves it, and fails it itself when the time is up. */
export const AskFrame = z.object({
  type: z.literal("ask"),
  id: RequestId,
  subject: ApprovalSubject,
  expires_in_ms: z.number().int().min(1).max(24 * 60 * 60 * 1000),
  /** Present when the machine's policy wants the owner's passkey on every approval. */
  passkey: PasskeyChallenge.optional(),
});
export type AskFrame = z.infer<typeof AskFrame>;

/** The longest "approve the same call for a while" an owner may give. */
export const MAX_APPROVAL_FOR_S = 24 * 60 * 60;

/** Server → agent: the owner's answer to an `ask`. `for_seconds` approves the same call on this machine for that
 *  long; `by` says which owner session decided (for the agent's log). */
export const DecisionFrame = z.object({
  type: z.literal("decision"),
  id: RequestId,
  approve: z.boolean(),
  reason: z.string().max(1000).optional(),
  for_seconds: z.number().int().min(1).max(MAX_APPROVAL_FOR_S).optional(),
  by: z.string().max(200),
  /** The owner's passkey over approvalStatement(...), when the machine asked for one. */
  assertion: PasskeyAssertion.optional(),
});
export type DecisionFrame = z.infer<typeof DecisionFrame>;
/** The owner's decision as the relay passes it on (a DecisionFrame without its type and request id). */
export type Decision = Omit<DecisionFrame, "type" | "id">;

/** Agent → server, about once a second while a request with `progress` runs (also when nothing is printed). */
export const ProgressFrame = z.object({
  type: z.literal("progress"),
  id: RequestId,
  elapsed_ms: z.number().int().min(0),
  output_bytes: z.number().int().min(0),
  /** The last lines of output, at most PROGRESS_TAIL_CHARS characters. */
  tail: z.string().max(2_000),
});
export type ProgressFrame = z.infer<typeof ProgressFrame>;

/** Agent → server: the one answer to request `id`: a value matching opSchemas(op).result, or an error. */
export const ResultFrame = z.discriminatedUnion("ok", [
  z.object({ type: z.literal("result"), id: RequestId, ok: z.literal(true), value: z.unknown() }),
  z.object({ type: z.literal("result"), id: RequestId, ok: z.literal(false), error: AgentError }),
]);
export type ResultFrame = z.infer<typeof ResultFrame>;

/** Either way: a heartbeat. The receiver answers pong with the same `t` (sender's clock, milliseconds). */
export const PingFrame = z.object({ type: z.literal("ping"), t: z.number() });
export const PongFrame = z.object({ type: z.literal("pong"), t: z.number() });

// Discriminated by `type`: a frame is checked against its own schema only (a plain union tries each in turn, and a
// result frame, the most common, paid for failing the hello and proof schemas first: ~10 µs a frame).
export const AgentFrame = z.discriminatedUnion("type", [HelloFrame, ProofFrame, ResultFrame, ProgressFrame, AskFrame, EnrollBeginFrame, EnrollResultFrame, PingFrame, PongFrame]);
export type AgentFrame = z.infer<typeof AgentFrame>;
export const ServerFrame = z.discriminatedUnion("type", [WelcomeFrame, ChallengeFrame, RequestFrame, CancelFrame, DecisionFrame, EnrollPageFrame, EnrollCredentialFrame, PingFrame, PongFrame]);
export type ServerFrame = z.infer<typeof ServerFrame>;

const FRAME_TYPES = ["hello", "challenge", "proof", "welcome", "request", "cancel", "progress", "result", "ask", "decision", "enroll_begin", "enroll_page", "enroll_credential", "enroll_result", "ping", "pong"];

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
