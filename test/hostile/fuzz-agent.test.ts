// Property-based fuzzing of the agent's side of the protocol over real connections: a fake relay (a Bun.serve in
// this test) that the real agent dials sends it random, mutated and garbage frames. Properties: for valid frames
// with hostile contents the agent answers every request exactly once with a well-formed result, every ping with its
// pong, and nothing else; for a frame it cannot accept it closes with 4000 and the parser's reason, and dials back
// (the process never dies). It never runs a command it was not asked for in a valid request: the fuzzers only send
// run_shell_command with arguments the strict schema refuses.

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { ServerWebSocket } from "bun";
import fc from "fast-check";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { proofVerifies } from "../../relay/identity.ts";
import { AgentFrame, CloseCode, opSchemas, parseFrame, ServerFrame, VERSION, type AgentOp } from "../../protocol.ts";
import { startAgent, type Agent, type Relay } from "../helpers/processes.ts";
import { garbage, mutated, onTheWire, serverFrameAfterWelcome } from "./frames.ts";

setDefaultTimeout(120_000);
// A failing property shrinks for at most a minute, then reports the smallest case found so far.
fc.configureGlobal({ interruptAfterTimeLimit: 60_000, markInterruptAsFailure: true });

const MACHINE = "fuzzed";
const stats = { connections: 0, frames: 0, requests: 0, closedWithReason: 0 };

/** One connection from the agent, as the fake relay sees it. */
interface Link {
  ws: ServerWebSocket<unknown>;
  /** The agent's hello on this connection (set by FakeRelay.connected). */
  hello?: any;
  closed: Promise<{ code: number; reason: string }>;
  send(data: string | Uint8Array): void;
  /** The next frame from the agent other than its own heartbeat pings, parsed; null on close or timeout. */
  next(timeoutMs?: number): Promise<any | null>;
}

/** A relay that accepts any upgrade and hands each connection to the test, which plays the relay's part by hand. */
class FakeRelay {
  readonly #links = new Map<ServerWebSocket<unknown>, { frames: string[]; wake?: () => void; closed: boolean; onClose: (c: { code: number; reason: string }) => void }>();
  readonly #arrived: Link[] = [];
  #waiter?: () => void;
  readonly server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (req, server) => (server.upgrade(req) ? undefined : new Response("WebSocket only", { status: 400 })),
    websocket: {
      maxPayloadLength: 64 * 1024 * 1024, // larger than the protocol allows, so the agent's own limit is what is tested
      open: (ws) => this.#open(ws),
      message: (ws, message) => {
        const state = this.#links.get(ws)!;
        state.frames.push(typeof message === "string" ? message : "(binary)");
        state.wake?.();
      },
      close: (ws, code, reason) => {
        const state = this.#links.get(ws)!;
        state.closed = true;
        state.wake?.();
        state.onClose({ code, reason });
      },
    },
  });

  #open(ws: ServerWebSocket<unknown>) {
    stats.connections++;
    let onClose!: (c: { code: number; reason: string }) => void;
    const closed = new Promise<{ code: number; reason: string }>((resolve) => (onClose = resolve));
    const state = { frames: [] as string[], closed: false, onClose, wake: undefined as (() => void) | undefined };
    this.#links.set(ws, state);
    let taken = 0;
    const link: Link = {
      ws,
      closed,
      send: (data) => void ws.send(data),
      next: async (timeoutMs = 10_000) => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          while (taken < state.frames.length) {
            const frame = JSON.parse(state.frames[taken++]!);
            if (frame.type !== "ping") return frame; // the agent's own heartbeat needs no answer here
          }
          if (state.closed || Date.now() >= deadline) return null;
          await new Promise<void>((resolve) => {
            state.wake = resolve;
            setTimeout(resolve, Math.max(0, deadline - Date.now()));
          });
        }
      },
    };
    this.#arrived.push(link);
    this.#waiter?.();
  }

  /** The agent's next connection, once it has said hello and been welcomed. */
  async connected(timeoutMs = 15_000): Promise<Link> {
    const deadline = Date.now() + timeoutMs;
    while (this.#arrived.length === 0) {
      if (Date.now() >= deadline) throw new Error(`the agent did not dial back within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
        setTimeout(resolve, 100);
      });
    }
    const link = this.#arrived.shift()!;
    link.hello = await link.next();
    expect(link.hello).toMatchObject({ type: "hello", machine: MACHINE, agent_version: VERSION });
    return link;
  }

  stop() {
    this.server.stop(true);
  }
}

const fake = new FakeRelay();
let agent: Agent;
let root: string;
let link: Link;

const welcome = () => JSON.stringify({ type: "welcome", machine: MACHINE, server_version: "fake" });

beforeAll(async () => {
  const relay = { port: fake.server.port, token: "any-token-the-fake-relay-accepts-0123456789" } as Relay;
  agent = await startAgent(relay, { machine: MACHINE, waitConnected: false });
  root = agent.roots[0]!;
  fs.mkdirSync(path.join(root, "dir"));
  fs.writeFileSync(path.join(root, "file"), "line one\nline two\n");
  link = await fake.connected();
  link.send(welcome());
  await agent.stderr.waitFor(/agent info connected/);
});

afterAll(async () => {
  console.log(`fuzz-agent: ${stats.connections} connections from the agent, ${stats.frames} frames sent, ${stats.requests} requests answered, ${stats.closedWithReason} closed with 4000 and a reason`);
  await agent[Symbol.asyncDispose]();
  fake.stop();
});

/** The agent closed `link` with 4000 and `reason`; then it dials back, and is welcomed again. */
async function closedThenBack(reason: string) {
  expect(await link.closed).toEqual({ code: CloseCode.protocolError, reason });
  stats.closedWithReason++;
  link = await fake.connected();
  link.send(welcome());
}

describe("valid frames with hostile contents", () => {
  test("every request is answered exactly once with a well-formed result, every ping with its pong, and nothing else", async () => {
    const stream = fc.array(serverFrameAfterWelcome(`${root}`, MACHINE), { minLength: 1, maxLength: 10 });
    await fc.assert(
      fc.asyncProperty(stream, async (frames) => {
        const owed = new Map<string, AgentOp[]>();
        const pongs: number[] = [];
        for (const frame of frames) {
          const parsed = parseFrame(ServerFrame, onTheWire(JSON.stringify(frame)));
          expect(parsed.ok).toBe(true);
          if (!parsed.ok) return;
          if (parsed.frame.type === "request") owed.set(parsed.frame.id, [...(owed.get(parsed.frame.id) ?? []), parsed.frame.op]);
          if (parsed.frame.type === "ping") pongs.push(parsed.frame.t);
        }
        for (const frame of frames) link.send(JSON.stringify(frame));
        link.send(JSON.stringify({ type: "ping", t: -1 })); // a sentinel: every frame before it has been read
        stats.frames += frames.length + 1;

        // Pongs come back in the order of the pings, so the sentinel's is the last one expected, whatever its value.
        const seenPongs: number[] = [];
        const answered = new Map<string, number>();
        const outstanding = () => [...owed].some(([id, ops]) => (answered.get(id) ?? 0) < ops.length);
        while (seenPongs.length < pongs.length + 1 || outstanding()) {
          const frame = await link.next();
          expect(frame).not.toBeNull(); // the agent neither closed nor went silent
          expect(parseFrame(AgentFrame, JSON.stringify(frame)).ok).toBe(true);
          if (frame.type === "pong") seenPongs.push(frame.t);
          else if (frame.type === "result") {
            const ops = owed.get(frame.id);
            expect(ops).toBeDefined(); // an answer to a request that was made
            answered.set(frame.id, (answered.get(frame.id) ?? 0) + 1);
            if (frame.ok && ops!.length === 1) expect(opSchemas(ops![0]!).result.safeParse(frame.value).success).toBe(true);
            if (!frame.ok) expect(frame.error.message.length).toBeGreaterThan(0);
            stats.requests++;
          } else expect(frame.type).toBe("progress");
        }
        expect(seenPongs).toEqual([...pongs, -1]);
        expect([...answered].sort()).toEqual([...owed].map(([id, ops]): [string, number] => [id, ops.length]).sort());
      }),
      { numRuns: 300 },
    );
    expect(fs.existsSync("/never-runs")).toBe(false);
  });

  test("a request reusing the id of one in flight gets its own error at once; the first still gets its answer", async () => {
    const marker = path.join(root, "ran-once");
    link.send(JSON.stringify({ type: "request", id: "dup", op: "run_shell_command", args: { command: `sleep 1; echo x >> ${marker}` } }));
    link.send(JSON.stringify({ type: "request", id: "dup", op: "status", args: {} }));
    const first = await link.next();
    expect(first).toEqual({ type: "result", id: "dup", ok: false, error: { code: "invalid_arguments", message: "request before welcome, or a duplicate id" } });
    const second = await link.next();
    expect(second).toMatchObject({ type: "result", id: "dup", ok: true, value: { state: "exited", exit_code: 0 } });
    expect(fs.readFileSync(marker, "utf8")).toBe("x\n"); // ran once, not twice
  });
});

describe("frames the agent must refuse", () => {
  test("garbage and mutated frames: the agent closes with 4000 and the parser's reason, then dials back", async () => {
    const refusable = fc
      .oneof(garbage, mutated(serverFrameAfterWelcome(root, MACHINE)))
      .filter((frame) => !parseFrame(ServerFrame, typeof frame === "string" ? onTheWire(frame) : frame).ok);
    await fc.assert(
      fc.asyncProperty(refusable, async (frame) => {
        const parsed = parseFrame(ServerFrame, typeof frame === "string" ? onTheWire(frame) : frame);
        if (parsed.ok) throw new Error("filtered out above");
        link.send(frame);
        stats.frames++;
        await closedThenBack(parsed.reason);
        if (typeof frame === "string" && frame.length >= 8) expect(parsed.reason).not.toContain(frame);
      }),
      { numRuns: 12 }, // each costs the agent's reconnect backoff (up to 1 s)
    );
  });

  const explicit: [string, string | Uint8Array, string][] = [
    ["a binary frame", new Uint8Array([123, 125]), "binary frames are not part of the protocol"],
    ["a request for an op the agent does not have", JSON.stringify({ type: "request", id: "x", op: "rm_rf", args: {} }), "invalid 'request' frame"],
    ["a request id of 65 characters", JSON.stringify({ type: "request", id: "i".repeat(65), op: "status", args: {} }), "invalid 'request' frame"],
    ["a frame only an agent sends", JSON.stringify({ type: "result", id: "x", ok: true, value: 1 }), "invalid 'result' frame"],
    ["a frame of more than 16 MiB", JSON.stringify({ type: "ping", t: 1, pad: "p".repeat(16 * 1024 * 1024) }), "frame too large"],
    ["a challenge after welcome", JSON.stringify({ type: "challenge", nonce: "A".repeat(43) }), "challenge after welcome"],
  ];
  for (const [what, frame, reason] of explicit) {
    test(`${what}: closed with 4000 '${reason}', and the agent dials back`, async () => {
      link.send(frame);
      await closedThenBack(reason);
    });
  }

  test("a request before welcome is answered with an error and not run; after welcome the same request runs", async () => {
    link.send(JSON.stringify({ type: "ping", t: 5 })); // the link is up and welcomed
    expect(await link.next()).toEqual({ type: "pong", t: 5 });
    link.send("not json"); // make it reconnect, then speak before welcoming it
    expect(await link.closed).toEqual({ code: CloseCode.protocolError, reason: "frame is not JSON" });
    link = await fake.connected();
    link.send(JSON.stringify({ type: "request", id: "early", op: "status", args: {} }));
    expect(await link.next()).toEqual({ type: "result", id: "early", ok: false, error: { code: "invalid_arguments", message: "request before welcome, or a duplicate id" } });
    link.send(welcome());
    link.send(JSON.stringify({ type: "request", id: "late", op: "status", args: {} }));
    expect(await link.next()).toMatchObject({ type: "result", id: "late", ok: true, value: { pid: agent.proc.pid } });
  });
});

describe("the identity challenge", () => {
  test("before welcome, the agent proves the key of its hello: the relay's own check accepts the proof for this nonce only", async () => {
    const key = link.hello.public_key;
    expect(typeof key).toBe("string");
    link.send("not json"); // a fresh connection, not welcomed yet
    expect(await link.closed).toEqual({ code: CloseCode.protocolError, reason: "frame is not JSON" });
    link = await fake.connected();
    expect(link.hello.public_key).toBe(key); // the same machine, the same key, on every connection
    const nonce = randomBytes(32).toString("base64url");
    link.send(JSON.stringify({ type: "challenge", nonce }));
    const proof = await link.next();
    expect(proof).toMatchObject({ type: "proof" });
    expect(proofVerifies(MACHINE, key, nonce, proof.signature)).toBe(true);
    expect(proofVerifies(MACHINE, key, randomBytes(32).toString("base64url"), proof.signature)).toBe(false);
    expect(proofVerifies("another", key, nonce, proof.signature)).toBe(false);
    link.send(welcome());
    link.send(JSON.stringify({ type: "request", id: "after-proof", op: "status", args: {} }));
    expect(await link.next()).toMatchObject({ type: "result", id: "after-proof", ok: true });
  });
});

test("after the fuzzing the agent is the same process, registered and answering", async () => {
  expect(agent.proc.exitCode).toBeNull();
  link.send(JSON.stringify({ type: "request", id: "final", op: "status", args: {} }));
  expect(await link.next()).toMatchObject({ type: "result", id: "final", ok: true, value: { pid: agent.proc.pid, running_commands: 0 } });
  expect(agent.stderr.lines.filter((l) => / error /.test(l))).toEqual([]);
});
