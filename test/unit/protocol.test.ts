// The wire contract and the pure helpers both sides rely on: frame parsing under hostile input, the identity proof
// and the rule for who may take a machine name, the tool input schemas, the reconnect backoff, the agent's sleep
// detector and how a failed connection is told apart, and the output shaping that keeps results inside the clients' limits.

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import pkg from "../../package.json";
import { classifyEnd, nextDelayMs, SleepDetector, unreachedDelayMs } from "../../agent/link.ts";
import { OutputCapture } from "../../agent/commands.ts";
import { loadIdentity } from "../../agent/identity.ts";
import { judgeIdentity, proofVerifies } from "../../relay/identity.ts";
import { tempDir } from "../helpers/processes.ts";
import {
  AgentFrame,
  CloseCode,
  FIELD_BUDGET_CHARS,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  ServerFrame,
  TOOLS,
  VERSION,
  fitToBudget,
  identityTranscript,
  jsonCost,
  parseFrame,
  toolInputSchema,
  type ToolName,
} from "../../protocol.ts";

// Shrinking a long counterexample can take minutes: stop after 10 s and report the smallest one found so far.
// A passing property takes well under a second, so the limit never cuts a passing run short.
fc.configureGlobal({ interruptAfterTimeLimit: 10_000, markInterruptAsFailure: true });

test("VERSION in protocol.ts equals package.json's version", () => {
  expect(VERSION).toBe(pkg.version);
});

// --- parseFrame ---

type Schema = typeof AgentFrame | typeof ServerFrame;
type FrameData = Parameters<typeof parseFrame>[1];
const SCHEMAS: [string, Schema][] = [
  ["AgentFrame", AgentFrame],
  ["ServerFrame", ServerFrame],
];

/** parseFrame's answer, typed loosely so it can be compared with plain object literals. */
const parsed = (schema: Schema, data: FrameData): unknown => parseFrame(schema, data);

/** The reason a frame was refused; fails the test if it was accepted. */
function reasonOf(schema: Schema, data: FrameData): string {
  const result = parseFrame(schema, data);
  if (result.ok) throw new Error(`frame was accepted: ${JSON.stringify(result.frame).slice(0, 200)}`);
  return result.reason;
}

/** A WebSocket close reason (where the agent and the relay put it) must fit 123 bytes of UTF-8. */
function expectShortReason(reason: string) {
  expect(typeof reason).toBe("string");
  expect(reason.length).toBeGreaterThan(0);
  expect(reason.length).toBeLessThanOrEqual(100);
  expect(Buffer.byteLength(reason)).toBeLessThanOrEqual(123);
}

/** Well-formed identity values: 32 bytes (a key, a nonce) and 64 bytes (a signature) in base64url. */
const KEY = Buffer.alloc(32, 7).toString("base64url");
const NONCE = Buffer.alloc(32, 9).toString("base64url");
const SIGNATURE = Buffer.alloc(64, 3).toString("base64url");
/** The same 32 bytes spelled another way: the last character's unused low bits set (it decodes to the same key). */
const NON_CANONICAL_KEY = KEY.slice(0, -1) + String.fromCharCode(KEY.charCodeAt(42) + 1);

const VALID_AGENT_FRAMES = {
  hello: {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    machine: "desk",
    agent_version: VERSION,
    os: "Linux 6.8.0",
    arch: "x64",
    shell: "/bin/bash",
    hostname: "desk.local",
    allowed_roots: ["/home/alice", "/tmp"],
  },
  proof: { type: "proof", signature: SIGNATURE },
  "result (ok)": { type: "result", id: "r-1", ok: true, value: { exit_code: 0, stdout: "hi\n" } },
  "result (error)": { type: "result", id: "r-1", ok: false, error: { code: "not_found", message: "'/x' does not exist." } },
  ping: { type: "ping", t: 1_700_000_000_000 },
  pong: { type: "pong", t: 1_700_000_000_000 },
};

const VALID_SERVER_FRAMES = {
  welcome: { type: "welcome", machine: "desk", server_version: VERSION },
  challenge: { type: "challenge", nonce: NONCE },
  "request run_shell_command": { type: "request", id: "r-1", op: "run_shell_command", args: { command: "ls" } },
  "request read_file": { type: "request", id: "r-2", op: "read_file", args: { path: "/tmp/x" } },
  "request write_file": { type: "request", id: "r-3", op: "write_file", args: { path: "/tmp/x", content: "" } },
  "request list_directory": { type: "request", id: "r-4", op: "list_directory", args: { path: "/tmp" } },
  "request status": { type: "request", id: "r-5", op: "status", args: {} },
  cancel: { type: "cancel", id: "r-1" },
  ping: { type: "ping", t: 1 },
  pong: { type: "pong", t: 1 },
};

describe("parseFrame accepts every valid frame", () => {
  test.each(Object.entries(VALID_AGENT_FRAMES))("AgentFrame %s", (_name, frame) => {
    expect(parsed(AgentFrame, JSON.stringify(frame))).toEqual({ ok: true, frame });
  });

  test.each(Object.entries(VALID_SERVER_FRAMES))("ServerFrame %s", (_name, frame) => {
    expect(parsed(ServerFrame, JSON.stringify(frame))).toEqual({ ok: true, frame });
  });

  // Optional fields are kept out of the tables above, whose fuzzers expect every dropped key to be refused.
  test("a hello with its public key, and a welcome with a notice", () => {
    const keyed = { ...VALID_AGENT_FRAMES.hello, public_key: KEY };
    expect(parsed(AgentFrame, JSON.stringify(keyed))).toEqual({ ok: true, frame: keyed });
    const noticed = { ...VALID_SERVER_FRAMES.welcome, notice: "this agent uses the relay's shared agent token" };
    expect(parsed(ServerFrame, JSON.stringify(noticed))).toEqual({ ok: true, frame: noticed });
  });

  test("ignores unknown extra keys (forward compatible) and returns the frame without them", () => {
    const sent = { ...VALID_AGENT_FRAMES.ping, later_field: "x" };
    expect(parsed(AgentFrame, JSON.stringify(sent))).toEqual({ ok: true, frame: VALID_AGENT_FRAMES.ping });
  });

  test("refuses a frame that only the other side may send", () => {
    expectShortReason(reasonOf(ServerFrame, JSON.stringify(VALID_AGENT_FRAMES.hello)));
    expectShortReason(reasonOf(ServerFrame, JSON.stringify(VALID_AGENT_FRAMES["result (ok)"])));
    expectShortReason(reasonOf(AgentFrame, JSON.stringify(VALID_SERVER_FRAMES.welcome)));
    expectShortReason(reasonOf(AgentFrame, JSON.stringify(VALID_SERVER_FRAMES["request status"])));
    expectShortReason(reasonOf(AgentFrame, JSON.stringify(VALID_SERVER_FRAMES.cancel)));
    expectShortReason(reasonOf(AgentFrame, JSON.stringify(VALID_SERVER_FRAMES.challenge)));
    expectShortReason(reasonOf(ServerFrame, JSON.stringify(VALID_AGENT_FRAMES.proof)));
  });
});

const MB20 = 20 * 1024 * 1024;
const deep = (n: number) => "[".repeat(n) + "]".repeat(n);

const HOSTILE: [string, () => FrameData][] = [
  ["non-JSON text", () => "hello there"],
  ["a truncated object", () => '{"type":"ping","t":'],
  ["the empty string", () => ""],
  ["a Buffer (binary frame)", () => Buffer.from(JSON.stringify({ type: "ping", t: 1 }))],
  ["a Uint8Array (binary frame)", () => new TextEncoder().encode(JSON.stringify({ type: "ping", t: 1 }))],
  ["an ArrayBuffer (binary frame)", () => new ArrayBuffer(8)],
  ["a JSON array", () => JSON.stringify([{ type: "ping", t: 1 }])],
  ["JSON null", () => "null"],
  ["a JSON number", () => "42"],
  ["a JSON string", () => '"ping"'],
  ["a JSON boolean", () => "true"],
  ["a type that is an object with toString", () => '{"type": {"toString": 1}, "t": 1}'],
  ["fields hidden under a __proto__ key", () => '{"__proto__": {"type": "ping", "t": 1}}'],
  ["a constructor.prototype payload", () => '{"type": "ping", "constructor": {"prototype": {"t": 1}}}'],
  ["one character over MAX_FRAME_BYTES", () => "x".repeat(MAX_FRAME_BYTES + 1)],
  ["a 20 MB string", () => "x".repeat(MB20)],
  ["a 20 MB otherwise valid ping", () => `{"type":"ping","t":1,"pad":"${"a".repeat(MB20)}"}`],
  ["10,000 levels of [ (unclosed)", () => "[".repeat(10_000)],
  ["10,000 levels of [ ] (balanced)", () => deep(10_000)],
  ["10,000 levels of nested objects", () => '{"a":'.repeat(10_000) + "1" + "}".repeat(10_000)],
  ["a ping whose t is deeply nested", () => `{"type":"ping","t":${deep(10_000)}}`],
  ["a raw lone surrogate", () => "\ud800"],
  ["a lone surrogate as the type", () => '{"type":"\\udc00","t":1}'],
  ["a lone surrogate in a machine name", () => JSON.stringify({ ...VALID_AGENT_FRAMES.hello, machine: "desk\ud800" })],
  ["an unknown type", () => '{"type":"shutdown","now":true}'],
  ["an unknown type 1,000 characters long", () => JSON.stringify({ type: "t".repeat(1000) })],
  ["an unknown type of 1,000 astral characters", () => JSON.stringify({ type: "🎉".repeat(1000) })],
  ["a request with an unknown op", () => '{"type":"request","id":"r-1","op":"rm_rf","args":{}}'],
  ["a request with an over-long id", () => JSON.stringify({ type: "request", id: "i".repeat(65), op: "status", args: {} })],
  ["a result with an unknown error code", () => '{"type":"result","id":"r-1","ok":false,"error":{"code":"boom","message":""}}'],
  ["a result with ok as a string", () => '{"type":"result","id":"r-1","ok":"true","value":1}'],
  ["a hello whose public key is 33 bytes", () => JSON.stringify({ ...VALID_AGENT_FRAMES.hello, public_key: Buffer.alloc(33, 7).toString("base64url") })],
  ["a hello whose public key is spelled non-canonically", () => JSON.stringify({ ...VALID_AGENT_FRAMES.hello, public_key: NON_CANONICAL_KEY })],
  ["a hello whose public key is padded base64", () => JSON.stringify({ ...VALID_AGENT_FRAMES.hello, public_key: `${Buffer.alloc(32, 7).toString("base64")}` })],
  ["a hello whose public key is empty", () => JSON.stringify({ ...VALID_AGENT_FRAMES.hello, public_key: "" })],
  ["a proof whose signature is 63 bytes", () => JSON.stringify({ type: "proof", signature: Buffer.alloc(63, 3).toString("base64url") })],
  ["a proof whose signature is hex", () => JSON.stringify({ type: "proof", signature: Buffer.alloc(64, 3).toString("hex") })],
  ["a challenge with a 16-byte nonce", () => JSON.stringify({ type: "challenge", nonce: Buffer.alloc(16, 9).toString("base64url") })],
];

describe.each(SCHEMAS)("parseFrame(%s, …) refuses hostile input with a short reason and never throws", (_name, schema) => {
  test.each(HOSTILE)("%s", (_what, data) => {
    expectShortReason(reasonOf(schema, data()));
  });
});

describe("parseFrame is safe with prototype keys", () => {
  test("a valid frame carrying a __proto__ key parses without polluting Object.prototype", () => {
    const result = parseFrame(AgentFrame, '{"type":"ping","t":1,"__proto__":{"polluted":true}}');
    expect(result).toEqual({ ok: true, frame: { type: "ping", t: 1 } });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    if (result.ok) expect(Object.getPrototypeOf(result.frame)).toBe(Object.prototype);
  });
});

describe("parseFrame's reason never echoes the frame's content", () => {
  const SECRET = "sk-live-7f3a9c-DO-NOT-LOG";

  test.each<[string, string]>([
    ["in a non-JSON frame", `Authorization: Bearer ${SECRET}`],
    ["in an unknown field of an incomplete hello", JSON.stringify({ type: "hello", token: SECRET })],
    ["in a field of the wrong type", JSON.stringify({ type: "ping", t: SECRET })],
    ["in an invalid machine name", JSON.stringify({ ...VALID_AGENT_FRAMES.hello, machine: `${SECRET}!` })],
    ["in an error with an unknown code", JSON.stringify({ type: "result", id: "r", ok: false, error: { code: SECRET, message: SECRET } })],
    ["in an over-long request id", JSON.stringify({ type: "request", id: SECRET.repeat(5), op: "status", args: {} })],
    ["in an unknown op", JSON.stringify({ type: "request", id: "r", op: SECRET, args: {} })],
  ])("a secret %s", (_where, data) => {
    for (const [, schema] of SCHEMAS) expect(reasonOf(schema, data)).not.toContain("7f3a9c");
  });

  // Regression: the reason once quoted the first 32 characters of any string `type` ("invalid '<type>' frame"),
  // and both sides log the reason and send it as the WebSocket close reason.
  test("a secret in the type field", () => {
    for (const [, schema] of SCHEMAS) expect(reasonOf(schema, JSON.stringify({ type: SECRET }))).not.toContain("7f3a9c");
  });
});

// --- parseFrame fuzzing ---

const ALL_VALID: Record<string, unknown>[] = [...Object.values(VALID_AGENT_FRAMES), ...Object.values(VALID_SERVER_FRAMES)];
/** Types only the relay sends (ping and pong go both ways). */
const SERVER_ONLY_TYPES = new Set<string>(["welcome", "challenge", "request", "cancel"]);
const jsonType = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);
/** Keys whose schema is z.unknown(): any value is valid there. */
const OPAQUE_KEYS = new Set(["args", "value"]);

function expectNeverThrowsAndShort(data: FrameData) {
  for (const [, schema] of SCHEMAS) {
    const result = parseFrame(schema, data);
    if (!result.ok) expectShortReason(result.reason);
  }
}

describe("parseFrame fuzzing: never throws, always a frame or a short reason", () => {
  test("arbitrary strings (UTF-16 units, lone surrogates included)", () => {
    fc.assert(fc.property(fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }), expectNeverThrowsAndShort), {
      numRuns: 1000,
    });
  });

  test("arbitrary JSON texts", () => {
    fc.assert(fc.property(fc.json(), expectNeverThrowsAndShort), { numRuns: 1000 });
  });

  test("valid frames with a key dropped are refused", () => {
    const dropped = fc.constantFrom(...ALL_VALID).chain((frame) =>
      fc.constantFrom(...Object.keys(frame)).map((key) => {
        const copy: Record<string, unknown> = { ...frame };
        delete copy[key];
        return copy;
      }),
    );
    fc.assert(
      fc.property(dropped, (frame) => {
        for (const [, schema] of SCHEMAS) expectShortReason(reasonOf(schema, JSON.stringify(frame)));
      }),
      { numRuns: 300 },
    );
  });

  test("valid frames with a field changed to another JSON type are refused (except the opaque args and value)", () => {
    const changed = fc
      .tuple(fc.constantFrom(...ALL_VALID), fc.nat(), fc.jsonValue())
      .map(([frame, index, replacement]) => {
        const keys = Object.keys(frame).filter((k) => !OPAQUE_KEYS.has(k));
        const key = keys[index % keys.length]!;
        return { frame, key, replacement };
      })
      .filter(({ frame, key, replacement }) => jsonType(frame[key]) !== jsonType(replacement));
    fc.assert(
      fc.property(changed, ({ frame, key, replacement }) => {
        const data = JSON.stringify({ ...frame, [key]: replacement });
        for (const [, schema] of SCHEMAS) expectShortReason(reasonOf(schema, data));
      }),
      { numRuns: 500 },
    );
  });

  test("valid frames with extra keys added still parse, to the same frame", () => {
    const extra = fc.dictionary(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 });
    fc.assert(
      fc.property(fc.constantFrom(...ALL_VALID), extra, (frame, added) => {
        const data = JSON.stringify({ ...added, ...frame }); // the frame's own keys win
        const schema = SERVER_ONLY_TYPES.has(frame.type as string) ? ServerFrame : AgentFrame;
        expect(parsed(schema, data)).toEqual({ ok: true, frame });
      }),
      { numRuns: 300 },
    );
  });

  test("any mutation of a valid frame (drop, retype, add, in any mix) never throws", () => {
    const mutated = fc
      .tuple(
        fc.constantFrom(...ALL_VALID),
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant("drop" as const), index: fc.nat() }),
            fc.record({ op: fc.constant("set" as const), index: fc.nat(), value: fc.anything() }),
            fc.record({ op: fc.constant("add" as const), key: fc.string(), value: fc.jsonValue() }),
          ),
          { maxLength: 4 },
        ),
      )
      .map(([frame, edits]) => {
        const copy: Record<string, unknown> = { ...frame };
        for (const edit of edits) {
          const keys = Object.keys(copy);
          if (edit.op === "add") copy[edit.key] = edit.value;
          else if (keys.length > 0 && edit.op === "drop") delete copy[keys[edit.index % keys.length]!];
          else if (keys.length > 0 && edit.op === "set") copy[keys[edit.index % keys.length]!] = edit.value;
        }
        return JSON.stringify(copy);
      });
    fc.assert(fc.property(mutated, expectNeverThrowsAndShort), { numRuns: 1000 });
  });
});

// --- tool input schemas ---

const MINIMAL_ARGS: { [N in ToolName]: Record<string, unknown> } = {
  run_shell_command: { command: "ls" },
  read_file: { path: "/tmp/x" },
  write_file: { path: "/tmp/x", content: "" },
  list_directory: { path: "/tmp" },
  check_agent_status: {},
  get_command_output: { command_id: "0123456789ab@laptop" },
  send_command_input: { command_id: "0123456789ab@laptop", input: "y\n" },
  kill_command: { command_id: "0123456789ab@laptop" },
  list_commands: {},
  edit_file: { path: "/tmp/x", edits: [{ old_text: "a", new_text: "b" }] },
  search_files: { path: "/tmp", content: "TODO" },
  file_info: { path: "/tmp/x" },
};
const TOOL_NAMES = Object.keys(TOOLS) as ToolName[];

describe.each(TOOL_NAMES)("toolInputSchema(%s)", (name) => {
  test("accepts its minimal arguments", () => {
    expect(toolInputSchema(name).safeParse(MINIMAL_ARGS[name]).success).toBe(true);
  });

  test("accepts `machine`", () => {
    expect(toolInputSchema(name).safeParse({ ...MINIMAL_ARGS[name], machine: "desk-01.lan" }).success).toBe(true);
  });

  test("rejects an unknown field", () => {
    expect(toolInputSchema(name).safeParse({ ...MINIMAL_ARGS[name], sudo: true }).success).toBe(false);
  });

  test("rejects a machine name that is not safe in logs and URLs", () => {
    expect(toolInputSchema(name).safeParse({ ...MINIMAL_ARGS[name], machine: "../etc" }).success).toBe(false);
  });
});

test("every tool in TOOLS has minimal arguments in this test", () => {
  expect(Object.keys(MINIMAL_ARGS).sort()).toEqual([...TOOL_NAMES].sort());
});

// --- reconnect backoff ---

// --- identity ---

describe("the identity proof", () => {
  test("the transcript binds the machine name, the key and the nonce under its own label, one field per line", () => {
    const text = new TextDecoder().decode(identityTranscript("desk", KEY, NONCE));
    expect(text).toBe(`code-remote agent identity v1\ndesk\n${KEY}\n${NONCE}`);
    // None of the three can contain a newline (a machine name is [A-Za-z0-9._-], the others base64url), so no two
    // different triples share a transcript.
  });

  test("a proof made by the agent's key verifies with the relay's check for that machine, key and nonce only", async () => {
    using dir = tempDir("cr-key-");
    const identity = await loadIdentity(dir.path);
    const signature = await identity.prove("desk", NONCE);
    expect(proofVerifies("desk", identity.publicKey, NONCE, signature)).toBe(true);
    expect(proofVerifies("desk2", identity.publicKey, NONCE, signature)).toBe(false);
    expect(proofVerifies("desk", identity.publicKey, KEY, signature)).toBe(false);
    expect(proofVerifies("desk", KEY, NONCE, signature)).toBe(false);
    expect(proofVerifies("desk", identity.publicKey, NONCE, SIGNATURE)).toBe(false);
    expect((await loadIdentity(dir.path)).publicKey).toBe(identity.publicKey); // kept, not made again
  });

  test("a public key that is not a point on the curve is refused, not thrown", () => {
    expect(proofVerifies("desk", Buffer.alloc(32, 0xff).toString("base64url"), NONCE, SIGNATURE)).toBe(false);
  });
});

describe("who may take a machine name (judgeIdentity)", () => {
  const OTHER = Buffer.alloc(32, 8).toString("base64url");
  const cases: [string, string | undefined, string | undefined, { publicKey?: string } | undefined, boolean][] = [
    ["a pinned name, the pinned key proven, nobody connected", KEY, KEY, undefined, true],
    ["a pinned name, the pinned key proven, its stale link connected (the machine restarting)", KEY, KEY, { publicKey: KEY }, true],
    ["a pinned name, another key", KEY, OTHER, undefined, false],
    ["a pinned name, another key, the real agent connected", KEY, OTHER, { publicKey: KEY }, false],
    ["a pinned name, no key (an older agent)", KEY, undefined, undefined, false],
    ["a free name, a key (it is pinned)", undefined, KEY, undefined, true],
    ["a free name, no key (an older agent)", undefined, undefined, undefined, true],
    ["an unpinned name held by a keyless agent, a keyless newcomer", undefined, undefined, {}, false],
    ["an unpinned name held by a keyless agent, a keyed newcomer", undefined, KEY, {}, false],
    ["an unpinned name held by a keyed agent (the owner unpinned it), the same key", undefined, KEY, { publicKey: KEY }, true],
    ["an unpinned name held by a keyed agent, another key", undefined, OTHER, { publicKey: KEY }, false],
  ];
  test.each(cases)("%s", (_what, pinned, proved, live, admitted) => {
    const verdict = judgeIdentity(pinned, proved, live);
    expect(verdict.admit).toBe(admitted);
    if (!verdict.admit) expectShortReason(verdict.reason); // it travels as the close reason
  });
});

// --- how a failed connection is told apart ---

describe("classifyEnd", () => {
  const failed = (what: string) => `WebSocket connection to 'ws://127.0.0.1:1/ws/agent' failed: ${what}`;
  test.each<[string, number, string, string, string, string]>([
    ["a 401 at the upgrade", 1006, "", failed("Expected 101 status code: 401"), "refused", "HTTP 401"],
    ["a 429 after many wrong tokens", 1006, "", failed("Expected 101 status code: 429"), "refused", "HTTP 429"],
    ["a 404 (not the agent endpoint)", 1006, "", failed("Expected 101 status code: 404"), "not_relay", "HTTP 404 instead of a WebSocket upgrade"],
    ["a 502 from a proxy", 1006, "", failed("Expected 101 status code: 502"), "unreachable", "HTTP 502 from the relay or a proxy in front of it"],
    ["no connection", 1006, "", failed("Failed to connect"), "unreachable", "Failed to connect"],
    ["a revoked token", CloseCode.forbidden, "agent token revoked", "", "turned_away", "agent token revoked"],
    ["a name pinned to another key", CloseCode.identityRefused, "this name is pinned", "", "identity", "this name is pinned"],
    ["the same machine elsewhere", CloseCode.replaced, "replaced", "", "replaced", "replaced"],
    ["a relay that fell silent", CloseCode.heartbeatTimeout, "the relay fell silent", "", "timeout", "the relay fell silent"],
    ["another protocol version", CloseCode.unsupportedVersion, "protocol 2 unsupported", "", "rejected", "closed with code 4002: protocol 2 unsupported"],
  ])("%s", (_what, code, reason, failure, problem, detail) => {
    expect(classifyEnd(code, reason, failure)).toEqual({ problem: problem as never, detail });
  });

  test("a dial given up before it connected is unreachable, not a server that never answered", () => {
    expect(classifyEnd(CloseCode.heartbeatTimeout, "no connection within 3 s", "", false)).toEqual({ problem: "unreachable", detail: "no connection within 3 s" });
  });
});

describe("unreachedDelayMs", () => {
  test("a dial that never reached the relay is made again within 0.5-1.5 s, whatever came before", () => {
    expect([0, 0.5, 0.999_999].map((r) => unreachedDelayMs(() => r))).toEqual([500, 1000, 1500]);
  });
});

describe("nextDelayMs", () => {
  test("the first retry (after a first failure, or after a link that registered) comes within 1 s", () => {
    expect(nextDelayMs(0, () => 0)).toBe(0);
    expect(nextDelayMs(0, () => 0.5)).toBe(500);
    expect(nextDelayMs(0, () => 0.999_999)).toBe(1000);
  });

  test("the ceiling doubles with each attempt up to 5 s, and the delay is uniform below it (full jitter)", () => {
    const attempts = [0, 1, 2, 3, 4, 10];
    expect(attempts.map((a) => nextDelayMs(a, () => 0.999_999))).toEqual([1000, 2000, 4000, 5000, 5000, 5000]);
    expect(attempts.map((a) => nextDelayMs(a, () => 0.5))).toEqual([500, 1000, 2000, 2500, 2500, 2500]);
    expect(attempts.map((a) => nextDelayMs(a, () => 0))).toEqual([0, 0, 0, 0, 0, 0]);
  });

  test("never exceeds 5,000 ms, even for absurd attempt counts; a negative attempt counts as the first", () => {
    for (const attempt of [30, 1023, 1024, 5000, Number.MAX_SAFE_INTEGER, Infinity]) expect(nextDelayMs(attempt, () => 0.999_999)).toBe(5000);
    expect(nextDelayMs(-3, () => 0.999_999)).toBe(1000);
  });

  test("stays within [0, ceiling] for any attempt and any random value", () => {
    fc.assert(
      fc.property(fc.nat({ max: 2000 }), fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), (attempt, r) => {
        const ceiling = Math.min(5_000, 1000 * 2 ** attempt);
        const delay = nextDelayMs(attempt, () => r);
        expect(Number.isInteger(delay)).toBe(true);
        expect(delay).toBeGreaterThanOrEqual(0);
        expect(delay).toBeLessThanOrEqual(ceiling);
      }),
      { numRuns: 500 },
    );
  });

  test("10,000 agents returning together after a long outage spread over 5 s: about 2,000 a second at most", () => {
    const perSecond = [0, 0, 0, 0, 0, 0];
    for (let i = 0; i < 10_000; i++) perSecond[Math.floor(nextDelayMs(10) / 1000)]!++;
    expect(perSecond[5]!).toBeLessThan(50); // only a delay of exactly 5,000 ms (rounded) lands here
    for (const n of perSecond.slice(0, 5)) expect(n).toBeLessThan(2_300);
  });
});

describe("SleepDetector", () => {
  /** Fake clocks: `wall` and `mono` advance as the test says. */
  const clocks = () => {
    const c = { wall: 1_700_000_000_000, mono: 5_000 };
    const detector = new SleepDetector(1_000, 3_000, () => c.wall, () => c.mono);
    const advance = (wallMs: number, monoMs = wallMs) => {
      c.wall += wallMs;
      c.mono += monoMs;
      return detector.tick();
    };
    return { advance };
  };

  test("ticks on time, or a little late (a busy event loop), are not a sleep", () => {
    const { advance } = clocks();
    expect(advance(1_000)).toBe(0);
    expect(advance(1_020)).toBe(0);
    expect(advance(2_500)).toBe(0);
    expect(advance(4_000)).toBe(0); // 3 s late: at the threshold, not past it
  });

  test("a suspended machine: the wall clock jumps while the monotonic one stands still", () => {
    const { advance } = clocks();
    expect(advance(1_000)).toBe(0);
    expect(advance(60_000, 1_000)).toBe(60_000);
    expect(advance(1_000)).toBe(0); // once: the next tick is on time again
  });

  test("a stopped process (SIGSTOP): both clocks run on while the timer does not", () => {
    const { advance } = clocks();
    expect(advance(10_000)).toBe(10_000);
    expect(advance(4_001)).toBe(4_001); // just past the threshold
    expect(advance(1_000)).toBe(0);
  });

  test("a wall clock stepped back (NTP) is no sleep, and the monotonic clock still finds a stop", () => {
    const { advance } = clocks();
    expect(advance(-3_600_000, 1_000)).toBe(0);
    expect(advance(1_000)).toBe(0);
    expect(advance(-5_000, 9_000)).toBe(9_000);
  });

  test("the real clocks, ticked at once, read no sleep", () => {
    const detector = new SleepDetector();
    expect(detector.tick()).toBe(0);
  });
});

// --- output shaping ---

const MARKER = /\n\[\.\.\. (\d+) bytes omitted \.\.\.\]\n/;

describe("OutputCapture", () => {
  test("keeps the total exact and the text within budget after a 50 MB flood in 64 KiB chunks", () => {
    const capture = new OutputCapture();
    const chunkSize = 64 * 1024;
    const chunks = (50 * 1024 * 1024) / chunkSize;
    const middle = new Uint8Array(chunkSize).fill("m".charCodeAt(0));
    const first = new Uint8Array(chunkSize).fill("m".charCodeAt(0));
    first.set(new TextEncoder().encode("FIRST-BYTES"));
    const last = new Uint8Array(chunkSize).fill("m".charCodeAt(0));
    last.set(new TextEncoder().encode("LAST-BYTES"), chunkSize - "LAST-BYTES".length);
    capture.push(first);
    for (let i = 1; i < chunks - 1; i++) capture.push(middle);
    capture.push(last);

    expect(capture.total).toBe(50 * 1024 * 1024);
    const { text, cut } = capture.text(FIELD_BUDGET_CHARS);
    expect(cut).toBe(true);
    expect(jsonCost(text)).toBeLessThanOrEqual(FIELD_BUDGET_CHARS + 200);
    expect(text.startsWith("FIRST-BYTES")).toBe(true);
    expect(text.endsWith("LAST-BYTES")).toBe(true);
    expect(text).toContain(`[... ${50 * 1024 * 1024 - 64 * 1024} bytes omitted ...]`);
  });

  test("returns small output unchanged with cut false", () => {
    const capture = new OutputCapture();
    const input = "line 1\nligne 2 — déjà vu\n🎉 done\n";
    capture.push(new TextEncoder().encode(input));
    expect(capture.total).toBe(Buffer.byteLength(input));
    expect(capture.text(FIELD_BUDGET_CHARS)).toEqual({ text: input, cut: false });
  });

  test("reassembles a multi-byte character split across two chunks", () => {
    const capture = new OutputCapture();
    const bytes = new TextEncoder().encode("a🎉b");
    capture.push(bytes.subarray(0, 3));
    capture.push(bytes.subarray(3));
    expect(capture.text(FIELD_BUDGET_CHARS)).toEqual({ text: "a🎉b", cut: false });
  });

  test("keeps exactly the first and last 32 KiB for any chunking, and counts the dropped middle", () => {
    // Position-dependent ASCII content, so a misplaced byte in the ring buffer shows.
    const stream = Buffer.from(Array.from({ length: 120_000 }, (_, i) => i.toString(36)).join(","));
    const KEEP = 32 * 1024;
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 70_000 }), { maxLength: 8, size: "max" }), (sizes) => {
        const capture = new OutputCapture();
        let offset = 0;
        for (const size of sizes) {
          capture.push(stream.subarray(offset, offset + size));
          offset += size;
        }
        const all = stream.subarray(0, offset).toString("latin1");
        expect(capture.total).toBe(offset);
        const expected =
          offset <= 2 * KEEP
            ? { text: all, cut: false }
            : { text: `${all.slice(0, KEEP)}\n[... ${offset - 2 * KEEP} bytes omitted ...]\n${all.slice(-KEEP)}`, cut: true };
        expect(capture.text(1e9)).toEqual(expected);
      }),
      { numRuns: 200 },
    );
  });

  test("text(budget) stays within the budget for arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 40_000, size: "max" }), { maxLength: 6 }), fc.integer({ min: 200, max: 30_000 }), (chunks, budget) => {
        const capture = new OutputCapture();
        for (const chunk of chunks) capture.push(chunk);
        expect(capture.total).toBe(chunks.reduce((n, c) => n + c.length, 0));
        expect(jsonCost(capture.text(budget).text)).toBeLessThanOrEqual(budget + 200);
      }),
      { numRuns: 100 },
    );
  });
});

describe("fitToBudget", () => {
  test("returns text that fits unchanged", () => {
    expect(fitToBudget("hello", 100)).toEqual({ text: "hello", cut: false });
  });

  test("counts control characters at their JSON cost", () => {
    expect(jsonCost("\u0001")).toBe(6);
    expect(fitToBudget("\u0001".repeat(20), 100).cut).toBe(true);
  });

  const units: [string, fc.Arbitrary<string>][] = [
    ["graphemes", fc.string({ unit: "grapheme", maxLength: 3000, size: "max" })],
    ["any code point", fc.string({ unit: "binary", maxLength: 3000, size: "max" })],
    ["ASCII with control characters", fc.string({ unit: "binary-ascii", maxLength: 3000, size: "max" })],
  ];

  test.each(units)("keeps a head and a tail of the input, never splits a surrogate pair, fits budget + 100 (%s)", (_name, text) => {
    fc.assert(
      fc.property(text, fc.integer({ min: 0, max: 3000 }), (input, budget) => {
        const result = fitToBudget(input, budget);
        expect(result.text.isWellFormed()).toBe(true);
        expect(jsonCost(result.text)).toBeLessThanOrEqual(budget + 100);
        if (!result.cut) {
          expect(result.text).toBe(input);
          return;
        }
        const match = MARKER.exec(result.text);
        expect(match).not.toBeNull();
        const head = result.text.slice(0, match!.index);
        const tail = result.text.slice(match!.index + match![0].length);
        expect(input.startsWith(head)).toBe(true);
        expect(input.endsWith(tail)).toBe(true);
        expect(Number(match![1])).toBe(Buffer.byteLength(input) - Buffer.byteLength(head) - Buffer.byteLength(tail));
      }),
      { numRuns: 300 },
    );
  });

  test("fits the budget itself (not just budget + 100) once the budget has room for the marker", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 3000, size: "max" }), fc.integer({ min: 100, max: 3000 }), (input, budget) => {
        expect(jsonCost(fitToBudget(input, budget).text)).toBeLessThanOrEqual(budget);
      }),
      { numRuns: 300 },
    );
  });
});
