// Property-based fuzzing of the relay's side of the agent protocol over real connections: a fake agent (a raw
// WebSocket with a valid agent token) sends random, mutated and garbage frames to a real relay, while a real agent
// stays connected beside it. Properties: the relay answers exactly as the protocol says (pong for ping, close 4000
// with a short reason that never echoes the frame, welcome for a good hello), never crashes or hangs, keeps serving
// the real agent and its clients, and turns any answer a hostile agent gives to a call into either a valid result
// or a clear tool error. Runs are bounded (numRuns), and each connection is closed before the next.

import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import fc from "fast-check";
import { AgentFrame, CloseCode, opSchemas, parseFrame, PROTOCOL_VERSION } from "../../protocol.ts";
import { loadIdentity } from "../../agent/identity.ts";
import { newToken, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";
import { agentFrameAfterHello, garbage, hello, mutated, onTheWire } from "./frames.ts";
import { bearer, rawSocket, type RawSocket } from "./raw.ts";

setDefaultTimeout(120_000);
// A failing property shrinks for at most a minute, then reports the smallest case found so far.
fc.configureGlobal({ interruptAfterTimeLimit: 60_000, markInterruptAsFailure: true });

const AGENT_TOKEN = newToken();
let machines = 0;
const stats = { connections: 0, frames: 0, closedWithReason: 0 };

// Made before the stack's, so the counts are printed before it stops.
afterAll(() => {
  console.log(`fuzz-relay: ${stats.connections} fake-agent connections, ${stats.frames} frames, ${stats.closedWithReason} closed with 4000 and a reason`);
});

const stack = useStack({
  relay: { env: { AGENT_TOKEN, CLIENT_CALLS_PER_MINUTE: "0" } },
  agent: { machine: "real", token: AGENT_TOKEN },
  client: "streamable-http",
});

async function fakeAgent(): Promise<RawSocket> {
  const socket = rawSocket(`ws://127.0.0.1:${stack.relay.port}/ws/agent`, bearer(AGENT_TOKEN));
  if (!(await socket.opened)) throw new Error("the relay refused the fake agent's upgrade");
  stats.connections++;
  return socket;
}

/** The next frame that is not one of the relay's own heartbeats, parsed; null if the socket closed. */
async function nextFrame(socket: RawSocket, timeoutMs = 5_000): Promise<any | null> {
  const text = await socket.next(timeoutMs);
  return text === null ? null : JSON.parse(text);
}

/** What the relay must do with each frame of a registered agent's stream: the pongs it owes, and where it closes. */
function expectedAfterHello(frames: string[]): { pongs: number[]; close?: { code: number; reason: string } } {
  const pongs: number[] = [];
  for (const frame of frames) {
    const parsed = parseFrame(AgentFrame, onTheWire(frame));
    if (!parsed.ok) return { pongs, close: { code: CloseCode.protocolError, reason: parsed.reason } };
    if (parsed.frame.type === "hello") return { pongs, close: { code: CloseCode.protocolError, reason: "hello sent twice" } };
    if (parsed.frame.type === "proof") return { pongs, close: { code: CloseCode.protocolError, reason: "proof without a challenge" } };
    if (parsed.frame.type === "ping") pongs.push(parsed.frame.t);
  }
  return { pongs };
}

/** A relay's close reason says what was wrong in a few words, and never repeats what the frame said. */
function expectHarmlessReason(reason: string, frame: string | Uint8Array) {
  expect(Buffer.byteLength(reason)).toBeLessThanOrEqual(123);
  if (typeof frame === "string" && frame.length >= 8) expect(reason).not.toContain(frame);
}

/** The real agent still answers through the relay, promptly. */
async function realAgentServed() {
  const status = await call(stack.client, "check_agent_status", { machine: "real" }, { timeout: 10_000 });
  expect(status.data.machines[0]).toMatchObject({ machine: "real", pid: stack.agent.proc.pid });
  expect(status.data.machines[0].error).toBeUndefined();
}

describe("a fake agent's first frame", () => {
  test("garbage instead of hello: closed with 4000 and the parser's reason (or 'the first frame must be hello')", async () => {
    await fc.assert(
      fc.asyncProperty(garbage, async (frame) => {
        const socket = await fakeAgent();
        socket.send(frame);
        stats.frames++;
        const parsed = parseFrame(AgentFrame, typeof frame === "string" ? onTheWire(frame) : frame);
        fc.pre(!parsed.ok || parsed.frame.type !== "hello"); // a random valid hello is vanishingly rare
        const reason = parsed.ok ? "the first frame must be hello" : parsed.reason;
        expect(await socket.closed).toEqual({ code: CloseCode.protocolError, reason });
        expectHarmlessReason(reason, frame);
        stats.closedWithReason++;
      }),
      { numRuns: 1000 },
    );
    await realAgentServed();
  });

  test("a mutated hello: welcomed when the parser accepts it, else closed with 4000 or 4002 and a reason", async () => {
    const hellos = mutated(fc.constant(hello("fz-hello")));
    await fc.assert(
      fc.asyncProperty(hellos, async (frame) => {
        const parsed = parseFrame(AgentFrame, onTheWire(frame));
        fc.pre(!(parsed.ok && parsed.frame.type === "hello" && parsed.frame.machine === "real")); // would replace the real agent
        const socket = await fakeAgent();
        socket.send(frame);
        stats.frames++;
        if (!parsed.ok || parsed.frame.type !== "hello") {
          expect(await socket.closed).toEqual({ code: CloseCode.protocolError, reason: parsed.ok ? "the first frame must be hello" : parsed.reason });
          stats.closedWithReason++;
        } else if (parsed.frame.protocol_version !== PROTOCOL_VERSION) {
          const closed = await socket.closed;
          expect(closed.code).toBe(CloseCode.unsupportedVersion);
          expect(closed.reason).toContain(`this relay speaks ${PROTOCOL_VERSION}`);
        } else {
          expect(await nextFrame(socket)).toMatchObject({ type: "welcome", machine: parsed.frame.machine });
          socket.ws.close(1000);
          await socket.closed;
        }
      }),
      { numRuns: 500 },
    );
    await realAgentServed();
  });
});

describe("a fake agent's identity proof", () => {
  test("random signatures, and a real one with bits flipped, never register a name pinned to a key", async () => {
    using dir = tempDir("cr-key-");
    const key = await loadIdentity(dir.path);
    const machine = "fz-keyed";
    const first = await fakeAgent(); // pins the test's key to the name
    first.send(JSON.stringify(hello(machine, { public_key: key.publicKey })));
    const { nonce } = await nextFrame(first);
    first.send(JSON.stringify({ type: "proof", signature: await key.prove(machine, nonce) }));
    expect(await nextFrame(first)).toMatchObject({ type: "welcome", machine });
    first.ws.close(1000);
    await first.closed;

    const flipped = fc.tuple(fc.nat({ max: 63 }), fc.integer({ min: 1, max: 255 }));
    const forgery = fc.oneof(fc.uint8Array({ minLength: 64, maxLength: 64 }).map((bytes) => ({ random: bytes })), flipped.map(([at, mask]) => ({ at, mask })));
    await fc.assert(
      fc.asyncProperty(forgery, async (how) => {
        const socket = await fakeAgent();
        socket.send(JSON.stringify(hello(machine, { public_key: key.publicKey })));
        const challenge = await nextFrame(socket);
        expect(challenge).toMatchObject({ type: "challenge" });
        let signature: Uint8Array;
        if ("random" in how) signature = how.random;
        else {
          signature = Buffer.from(await key.prove(machine, challenge.nonce), "base64url");
          signature[how.at]! ^= how.mask;
        }
        socket.send(JSON.stringify({ type: "proof", signature: Buffer.from(signature).toString("base64url") }));
        stats.frames += 2;
        expect(await socket.closed).toEqual({ code: CloseCode.identityRefused, reason: "the identity proof does not verify" });
      }),
      { numRuns: 200 },
    );
    await realAgentServed();
  });
});

describe("a registered fake agent's stream", () => {
  test("random and mutated frames after hello: a pong for each ping, and a 4000 close at the first bad frame", async () => {
    const stream = fc.array(fc.oneof(agentFrameAfterHello.map((f) => JSON.stringify(f)), mutated(agentFrameAfterHello), garbage.filter((g): g is string => typeof g === "string")), {
      minLength: 1,
      maxLength: 12,
    });
    await fc.assert(
      fc.asyncProperty(stream, async (frames) => {
        const socket = await fakeAgent();
        const machine = `fz-${machines++}`;
        socket.send(JSON.stringify(hello(machine)));
        expect(await nextFrame(socket)).toMatchObject({ type: "welcome", machine });
        const expected = expectedAfterHello(frames);
        for (const frame of frames) socket.send(frame);
        stats.frames += frames.length + 1;
        if (!expected.close) socket.send(JSON.stringify({ type: "ping", t: -1 })); // a sentinel: everything before it was handled
        // Pongs come back in the order of the pings: the sentinel's is the last, whatever the value of the others.
        const owed = expected.close ? expected.pongs : [...expected.pongs, -1];
        const pongs: number[] = [];
        while (pongs.length < owed.length) {
          const frame = await nextFrame(socket);
          expect(frame).not.toBeNull();
          expect(frame.type).toBe("pong");
          pongs.push(frame.t);
        }
        expect(pongs).toEqual(owed);
        if (expected.close) {
          expect(await socket.closed).toEqual(expected.close);
          stats.closedWithReason++;
        } else {
          socket.ws.close(1000);
          await socket.closed;
        }
      }),
      { numRuns: 500 },
    );
    await realAgentServed();
  });

  test("a binary frame, an empty frame and one over 16 MiB each end the connection; nothing else is disturbed", async () => {
    const cases: [string | Uint8Array, { code: number; reason?: string }][] = [
      [new Uint8Array([123, 125]), { code: CloseCode.protocolError, reason: "binary frames are not part of the protocol" }],
      ["", { code: CloseCode.protocolError, reason: "frame is not JSON" }],
      [JSON.stringify({ type: "ping", t: 1, pad: "x".repeat(16 * 1024 * 1024) }), { code: 1009 }], // Bun: message too big
    ];
    for (const [frame, expected] of cases) {
      const socket = await fakeAgent();
      socket.send(JSON.stringify(hello(`fz-${machines++}`)));
      expect(await nextFrame(socket)).toMatchObject({ type: "welcome" });
      socket.send(frame);
      expect(await socket.closed).toMatchObject(expected);
    }
    await realAgentServed();
  });
});

describe("a hostile agent answering real calls", () => {
  test("whatever it answers a read_file with, the client gets a valid result or a clear tool error, at once", async () => {
    const socket = await fakeAgent();
    socket.send(JSON.stringify(hello("fz-answers")));
    expect(await nextFrame(socket)).toMatchObject({ type: "welcome", machine: "fz-answers" });
    const plausible = fc.record({
      path: fc.string(),
      encoding: fc.constantFrom("utf8", "base64", "latin1"),
      content: fc.string(),
      size: fc.integer({ min: -1, max: 10 }),
      offset: fc.integer({ min: -1, max: 10 }),
      returned: fc.nat(10),
      total_lines: fc.oneof(fc.constant(null), fc.nat(10)),
      truncated: fc.boolean(),
      next_offset: fc.oneof(fc.constant(null), fc.nat(10)),
    }, { requiredKeys: [] });
    const answer = fc.oneof(
      fc.record({ ok: fc.constant(true as const), value: fc.oneof(plausible, fc.jsonValue({ maxDepth: 3 })) }),
      fc.record({ ok: fc.constant(false as const), error: fc.record({ code: fc.constantFrom("not_found", "io_error", "internal"), message: fc.string({ minLength: 1, maxLength: 200 }) }) }),
    );
    const ok = { valid: 0, malformed: 0, failed: 0 };
    await fc.assert(
      fc.asyncProperty(answer, fc.boolean(), async (reply, noiseFirst) => {
        const pending = call(stack.client, "read_file", { machine: "fz-answers", path: "/x" }, { timeout: 10_000 });
        let request = await nextFrame(socket);
        while (request?.type === "ping") request = await nextFrame(socket);
        expect(request).toMatchObject({ type: "request", op: "read_file", args: { path: "/x" } });
        if (noiseFirst) {
          socket.send(JSON.stringify({ type: "result", id: `${request.id}-other`, ok: true, value: {} })); // someone else's id: dropped
          socket.send(JSON.stringify({ type: "progress", id: request.id, elapsed_ms: 1, output_bytes: 1, tail: "x" }));
        }
        socket.send(JSON.stringify({ type: "result", id: request.id, ...reply }));
        socket.send(JSON.stringify({ type: "result", id: request.id, ok: true, value: {} })); // a second answer: dropped
        const r = await pending;
        if (!reply.ok) {
          expect([r.isError, r.text]).toEqual([true, reply.error.message]);
          ok.failed++;
        } else if (opSchemas("read_file").result.safeParse(reply.value).success) {
          expect(r.isError).toBe(false);
          expect(r.data.machine).toBe("fz-answers");
          ok.valid++;
        } else {
          expect([r.isError, r.text]).toEqual([true, "Machine 'fz-answers' sent a malformed answer; is its agent up to date?"]);
          ok.malformed++;
        }
      }),
      { numRuns: 200 },
    );
    console.log(`fuzz-relay answers: ${ok.valid} valid, ${ok.malformed} malformed, ${ok.failed} failures passed on`);
    expect(ok.malformed).toBeGreaterThan(0);
    socket.ws.close(1000);
    await socket.closed;
  });
});

test("after the fuzzing the relay is the same process, the real agent never dropped, and no fake agent is left registered", async () => {
  expect(stack.relay.proc.exitCode).toBeNull();
  expect(stack.relay.stderr.lines.filter((l) => l.includes('agent disconnected machine="real"'))).toEqual([]);
  await realAgentServed();
  const status = await call(stack.client, "check_agent_status");
  expect(status.data.machines.map((m: { machine: string }) => m.machine)).toEqual(["real"]);
});
