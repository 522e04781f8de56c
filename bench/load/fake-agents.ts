// Load generator for scenario 6: holds AGENT_COUNT agent connections to a relay from one process, speaking the
// real agent protocol of protocol.ts: hello with a unique machine name, heartbeats, and one result per
// request. read_file is answered for real (a small file inside ALLOWED_ROOT, read from disk) and so is status;
// any other operation gets an error result. Prints "ready N" on stdout once every connection is welcomed, and
// exits on SIGTERM or by itself after LIFETIME_MS. Not a product agent: no shell, no writes, no reconnects.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  HEARTBEAT_INTERVAL_MS,
  PROTOCOL_VERSION,
  ServerFrame,
  TOOLS,
  VERSION,
  parseFrame,
  type AgentFrame,
  type AgentStatus,
  type RequestFrame,
  type ToolResult,
} from "../../protocol.ts";

/** Connections opened at once: each batch is welcomed before the next starts, so the relay is not flooded. */
const CONNECT_BATCH = 50;
/** A connection not welcomed this soon is a failure of the run, not something to wait out. */
const WELCOME_TIMEOUT_MS = 30_000;
/** The generator stops by itself after this long even if nobody stops it (the bench sets a shorter one). */
const DEFAULT_LIFETIME_MS = 10 * 60 * 1000;
/** read_file answers only small files: this is a latency probe, not a file server. */
const MAX_READ_BYTES = 64 * 1024;

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const config = {
  relayUrl: required("RELAY_URL"),
  token: required("AGENT_TOKEN"),
  count: Number(required("AGENT_COUNT")),
  prefix: required("NAME_PREFIX"),
  root: fs.realpathSync(required("ALLOWED_ROOT")),
  lifetimeMs: Number(process.env.LIFETIME_MS ?? DEFAULT_LIFETIME_MS),
};
const started = Date.now();

// --- answers ---

class Refusal extends Error {}

function readFile(rawArgs: unknown): ToolResult<"read_file"> {
  const args = TOOLS.read_file.args.parse(rawArgs); // the tool's own schema, as the real agent validates
  const real = fs.realpathSync(args.path);
  if (!real.startsWith(config.root + path.sep)) throw new Refusal(`'${args.path}' is outside ${config.root}`);
  const bytes = fs.readFileSync(real);
  if (bytes.length > MAX_READ_BYTES) throw new Refusal(`the load generator reads files up to ${MAX_READ_BYTES} bytes`);
  const content = bytes.toString("utf8");
  const lines = content.split("\n").length - (content.endsWith("\n") ? 1 : 0);
  return { path: real, encoding: "utf8", content, size: bytes.length, offset: 1, returned: lines, total_lines: lines, truncated: false, next_offset: null };
}

function status(): AgentStatus {
  return {
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: "none",
    hostname: os.hostname(),
    allowed_roots: [config.root],
    pid: process.pid,
    uptime_s: Math.round((Date.now() - started) / 1000),
    running_commands: 0,
    queued_commands: 0,
  };
}

function answer(frame: RequestFrame): AgentFrame {
  try {
    if (frame.op === "read_file") return { type: "result", id: frame.id, ok: true, value: readFile(frame.args) };
    if (frame.op === "status") return { type: "result", id: frame.id, ok: true, value: status() };
    throw new Refusal(`the load generator does not do ${frame.op}`);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    return { type: "result", id: frame.id, ok: false, error: { code: e instanceof Refusal ? "internal" : "io_error", message } };
  }
}

// --- connections ---

const sockets = new Set<WebSocket>();
let unexpectedCloses = 0;
/** Set on the way out, so the closes we cause are not counted as the relay's. */
let stopping = false;

function hello(machine: string): AgentFrame {
  return {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    machine,
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: "none",
    hostname: os.hostname(),
    allowed_roots: [config.root],
  };
}

/** Opens one agent connection; resolves once the relay welcomes it. */
function connect(machine: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(config.relayUrl, { headers: { Authorization: `Bearer ${config.token}` } });
    const send = (frame: AgentFrame) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(frame));
    const timer = setTimeout(() => reject(new Error(`${machine}: no welcome within ${WELCOME_TIMEOUT_MS} ms`)), WELCOME_TIMEOUT_MS);
    // Heartbeats start at a random phase, so a thousand agents don't ping in step.
    let heartbeat: ReturnType<typeof setInterval> | undefined;
    const firstBeat = setTimeout(() => {
      heartbeat = setInterval(() => send({ type: "ping", t: Date.now() }), HEARTBEAT_INTERVAL_MS);
    }, Math.random() * HEARTBEAT_INTERVAL_MS);
    sockets.add(ws);
    ws.addEventListener("open", () => send(hello(machine)));
    ws.addEventListener("message", (event) => {
      const parsed = parseFrame(ServerFrame, event.data as string);
      if (!parsed.ok) return void console.error(`${machine}: bad frame from the relay: ${parsed.reason}`);
      const frame = parsed.frame;
      if (frame.type === "welcome") return (clearTimeout(timer), resolve());
      if (frame.type === "request") return void send(answer(frame));
      if (frame.type === "ping") return void send({ type: "pong", t: frame.t });
      // pong and cancel need nothing: every answer is sent at once, so there is nothing to cancel.
    });
    ws.addEventListener("close", (event) => {
      clearTimeout(firstBeat);
      clearInterval(heartbeat);
      sockets.delete(ws);
      if (stopping) return;
      unexpectedCloses++;
      console.error(`${machine}: closed by the relay: ${event.code} ${event.reason}`);
      clearTimeout(timer);
      reject(new Error(`${machine}: closed before its welcome (${event.code})`));
    });
  });
}

function stop(code: number): never {
  stopping = true;
  for (const ws of sockets) ws.close(1000, "load generator stopping");
  process.exit(code);
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
setTimeout(() => stop(0), config.lifetimeMs).unref();

try {
  for (let first = 0; first < config.count; first += CONNECT_BATCH) {
    const batch = Array.from({ length: Math.min(CONNECT_BATCH, config.count - first) }, (_, i) => `${config.prefix}-${first + i}`);
    await Promise.all(batch.map(connect));
  }
  console.log(`ready ${sockets.size}`);
} catch (e) {
  console.log(`failed: ${e instanceof Error ? e.message : String(e)} (${unexpectedCloses} closed by the relay)`);
  stop(1);
}
