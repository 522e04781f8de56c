// Frame generators for the wire-protocol fuzzers (fuzz-relay.test.ts, fuzz-agent.test.ts): valid frames of each
// side with hostile contents, the same frames mutated (keys dropped, retyped or added, text cut or spliced), and
// plain garbage. The oracle for "should this frame be accepted" is parseFrame from protocol.ts applied to the text
// as it travels; what the fuzzers test is everything around it: the real process, over a real connection.

import fc from "fast-check";
import { AGENT_OP_NAMES, ErrorCode, PROTOCOL_VERSION, VERSION, type AgentOp } from "../../protocol.ts";

/** A text frame as the receiver gets it: UTF-8 cannot carry a lone surrogate, so the sender's encoder puts U+FFFD
 *  in its place. The oracle must judge this text, not the one generated. */
export const onTheWire = (text: string) => new TextDecoder().decode(new TextEncoder().encode(text));

/** Any UTF-16 code units, lone surrogates and control characters included. */
export const anyUnits = (maxLength = 200) => fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength });

/** Garbage a peer might send instead of a frame: random text, random JSON, JSON that is not an object, bytes. */
export const garbage: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  anyUnits(),
  fc.json({ maxDepth: 4 }),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify([v])),
  fc.constantFrom("", " ", "null", "0", '""', "{}", "[]", '{"type":null}', '{"type":"hello"}', '{"type":"__proto__"}', '{"__proto__":{"type":"ping"},"t":1}'),
  fc.uint8Array({ minLength: 0, maxLength: 64 }),
);

export const requestId = fc.string({ minLength: 1, maxLength: 64 });
const counters = fc.nat({ max: 2 ** 40 });
/** A heartbeat time: any JSON number (JSON has no NaN or Infinity). */
const heartbeat = fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }));

export function hello(machine: string, overrides: Record<string, unknown> = {}) {
  return {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    machine,
    agent_version: VERSION,
    os: "Linux fuzz",
    arch: "x64",
    shell: "/bin/sh",
    hostname: "fuzz",
    allowed_roots: ["/nonexistent-fuzz-root"],
    ...overrides,
  };
}

/** Frames an agent may send once registered, with hostile contents: ids and values of any shape. */
export const agentFrameAfterHello: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({ type: fc.constant("ping"), t: heartbeat }),
  fc.record({ type: fc.constant("pong"), t: heartbeat }),
  fc.record({ type: fc.constant("progress"), id: requestId, elapsed_ms: counters, output_bytes: counters, tail: anyUnits(300) }),
  fc.record({ type: fc.constant("result"), id: requestId, ok: fc.constant(true), value: fc.jsonValue({ maxDepth: 3 }) }),
  fc.record({ type: fc.constant("result"), id: requestId, ok: fc.constant(false), error: fc.record({ code: fc.constantFrom(...ErrorCode.options), message: anyUnits(300) }) }),
);

/** Ops a fuzzer may ask the real agent for with arbitrary arguments. run_shell_command is left out: arguments that
 *  happened to be valid would run a random command line on this machine. */
export const SAFE_OPS = AGENT_OP_NAMES.filter((op) => op !== "run_shell_command") as AgentOp[];

/** Arguments for a request: anything at all, or plausible ones aimed at `root` (paths inside and out, patterns). */
export function requestArgs(root: string): fc.Arbitrary<unknown> {
  const pathArg = fc.oneof(fc.constantFrom(root, `${root}/file`, `${root}/dir`, `${root}/../outside`, "/etc/passwd", "~", "", "relative"), anyUnits(40).map((s) => `${root}/${s}`));
  const plausible = fc.record(
    {
      path: pathArg,
      content: anyUnits(100),
      offset: fc.integer({ min: -5, max: 100 }),
      limit: fc.integer({ min: -5, max: 100 }),
      tail: fc.integer({ min: -1, max: 10 }),
      depth: fc.integer({ min: -1, max: 7 }),
      pattern: anyUnits(10),
      command_id: fc.oneof(fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 12, maxLength: 12 }).map((h) => `${h}@fuzzed`), anyUnits(20)),
      wait_seconds: fc.constantFrom(0, 0.5, -1),
      edits: fc.array(fc.record({ old_text: anyUnits(10), new_text: anyUnits(10) }), { maxLength: 2 }),
    },
    { requiredKeys: [] },
  );
  // undefined would vanish from the JSON, and a request must carry args
  return fc.oneof(plausible, fc.anything({ maxDepth: 3 }).filter((args) => args !== undefined));
}

/** Frames a relay may send to a registered agent, with hostile contents (never a valid run_shell_command). */
export function serverFrameAfterWelcome(root: string, machine: string): fc.Arbitrary<Record<string, unknown>> {
  return fc.oneof(
    fc.record({ type: fc.constant("request"), id: requestId, op: fc.constantFrom(...SAFE_OPS), args: requestArgs(root), progress: fc.boolean() }),
    // run_shell_command only with an argument the strict schema refuses, so nothing is ever run
    fc.record({ type: fc.constant("request"), id: requestId, op: fc.constant("run_shell_command"), args: fc.constant({ command: "touch /never-runs", not_an_argument: true }) }),
    fc.record({ type: fc.constant("cancel"), id: requestId }),
    fc.record({ type: fc.constant("ping"), t: heartbeat }),
    fc.record({ type: fc.constant("pong"), t: heartbeat }),
    fc.record({ type: fc.constant("welcome"), machine: fc.constant(machine), server_version: anyUnits(20) }),
  );
}

type Edit = { op: "drop"; index: number } | { op: "set"; index: number; value: unknown } | { op: "add"; key: string; value: unknown };

/** `valid` frames broken in the ways a buggy or hostile peer would: keys dropped, retyped or added (as objects),
 *  or the JSON text cut short or spliced with junk. Some mutants stay valid; the oracle says which. */
export function mutated(valid: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<string> {
  const edit: fc.Arbitrary<Edit> = fc.oneof(
    fc.record({ op: fc.constant("drop" as const), index: fc.nat() }),
    fc.record({ op: fc.constant("set" as const), index: fc.nat(), value: fc.jsonValue({ maxDepth: 2 }) }),
    fc.record({ op: fc.constant("add" as const), key: fc.string({ maxLength: 10 }), value: fc.jsonValue({ maxDepth: 2 }) }),
  );
  const structural = fc.tuple(valid, fc.array(edit, { minLength: 1, maxLength: 3 })).map(([frame, edits]) => {
    const copy: Record<string, unknown> = { ...frame };
    for (const e of edits) {
      const keys = Object.keys(copy);
      if (e.op === "add") Object.defineProperty(copy, e.key, { value: e.value, enumerable: true, configurable: true, writable: true });
      else if (keys.length > 0 && e.op === "drop") delete copy[keys[e.index % keys.length]!];
      else if (keys.length > 0 && e.op === "set") copy[keys[e.index % keys.length]!] = e.value;
    }
    return JSON.stringify(copy);
  });
  const textual = fc.tuple(valid, fc.nat(), fc.oneof(fc.constant(null), anyUnits(3))).map(([frame, at, junk]) => {
    const text = JSON.stringify(frame);
    const i = at % (text.length + 1);
    return junk === null ? text.slice(0, i) : text.slice(0, i) + junk + text.slice(i);
  });
  return fc.oneof(structural, textual);
}
