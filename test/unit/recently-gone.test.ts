// The relay's memory of machines that dropped a moment ago (what a call waits for, RECONNECT_GRACE_S): bounded in
// size, pruned by age, left empty by an owner's disconnect or a revoked token, and never waited on when the grace is
// off. The Relay class alone, with stand-in sockets (the waits themselves run against real processes in
// e2e/reconnect.test.ts).

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CloseCode } from "../../protocol.ts";
import { Relay, type AgentConn } from "../../relay/agents.ts";

// The relay logs every disconnect; ten thousand of them would bury this file's output.
const originalError = console.error;
beforeAll(() => void (console.error = () => {}));
afterAll(() => void (console.error = originalError));

function newRelay(graceMs: number): Relay {
  const audit = { event() {} } as unknown as ConstructorParameters<typeof Relay>[0];
  const keys = {} as ConstructorParameters<typeof Relay>[2];
  const presence = { connected() {}, left() {} };
  const relay = new Relay(audit, () => false, keys, presence);
  relay.reconnectGraceMs = graceMs;
  return relay;
}

/** A registered machine whose socket then closes with `code`. */
function dropped(relay: Relay, machine: string, code: number = CloseCode.normal): void {
  const ws = { data: { address: "127.0.0.1" } } as unknown as AgentConn["ws"];
  const conn = { ws, machine, pending: new Map() } as unknown as AgentConn;
  (ws.data as { agent?: AgentConn }).agent = conn;
  relay.agents.set(machine, conn);
  relay.disconnected(ws, code, "gone");
}

const failure = (promise: Promise<unknown>) => promise.then(() => "connected", (e: Error) => e.message);

describe("machines that dropped a moment ago", () => {
  test("are remembered up to 10,000 at once: the oldest are forgotten first", async () => {
    const relay = newRelay(60_000);
    for (let i = 0; i < 10_050; i++) dropped(relay, `m${i}`);
    expect(relay.noMachineNow()).toMatch(/^Recently connected: m10049 \(disconnected 0 s ago\), m10048 .* and 9995 more;/);
    // The first 50 are forgotten: a call for one fails at once; one still remembered waits (and is cancelled here).
    expect(await failure(relay.connection("m0"))).toStartWith("Machine 'm0' is not connected.");
    const abort = new AbortController();
    const waiting = failure(relay.connection("m50", { signal: abort.signal }));
    abort.abort();
    expect(await waiting).toBe("The call was cancelled.");
  });

  test("are forgotten once the grace is over", async () => {
    const relay = newRelay(50);
    dropped(relay, "brief");
    expect(relay.noMachineNow()).toStartWith("Recently connected: brief (disconnected 0 s ago)");
    await Bun.sleep(80);
    expect(relay.noMachineNow()).toBe(relay.noMachineMessage);
    const started = performance.now();
    expect(await failure(relay.connection("brief"))).toStartWith("Machine 'brief' is not connected.");
    expect(performance.now() - started).toBeLessThan(20);
  });

  test("a call waits the rest of the grace, then fails saying it waited; progress names the machine", async () => {
    const relay = newRelay(300);
    dropped(relay, "lid");
    const messages: string[] = [];
    const started = performance.now();
    const message = await failure(relay.connection(undefined, { waiting: (m) => messages.push(m) }));
    const waitedMs = performance.now() - started;
    expect(message).toStartWith("Machine 'lid' is not connected (it disconnected 0 s ago; the relay waited 0 s for it to reconnect).");
    expect(waitedMs).toBeGreaterThan(250);
    expect(waitedMs).toBeLessThan(400);
    expect(messages).toEqual(["waiting for lid to reconnect (up to 1 s)"]);
  });

  test("are not remembered when the owner or a revoked token cut them off, nor with the grace off", async () => {
    const relay = newRelay(60_000);
    dropped(relay, "revoked", CloseCode.forbidden);
    expect(relay.noMachineNow()).toBe(relay.noMachineMessage);
    expect(await failure(relay.connection("revoked"))).toStartWith("Machine 'revoked' is not connected.");

    const off = newRelay(0);
    dropped(off, "any");
    expect(off.noMachineNow()).toBe(off.noMachineMessage);
    expect(await failure(off.connection(undefined))).toBe(off.noMachineMessage);
  });

  test("a call that does not name its machine waits only when exactly one dropped; with several it names them", async () => {
    const relay = newRelay(60_000);
    dropped(relay, "a");
    dropped(relay, "b");
    expect(await failure(relay.connection(undefined))).toMatch(/^No machine is connected; several were a moment ago: b \(disconnected 0 s ago\), a \(disconnected 0 s ago\)\. Say which one with "machine"/);
  });
});
