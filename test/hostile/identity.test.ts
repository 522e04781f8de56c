// A machine's name belongs to the machine: an agent makes a key at its first start, the relay pins it to the name,
// and every later connection must sign the relay's fresh challenge with it. Attacked here with what an impostor
// holding the shared agent token can do: real agent processes with keys of their own, and raw WebSockets that
// forge, replay or skip the proof. The real agent must keep its name and its calls, and never be held off.

import { describe, expect, test } from "bun:test";
import { generateKeyPairSync, sign } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { CloseCode, identityTranscript } from "../../protocol.ts";
import { loadIdentity, type Identity } from "../../agent/identity.ts";
import { eventsOf, relayCommand } from "../helpers/audit.ts";
import { newToken, startAgent, tempDir, type AgentOptions } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";
import { hello } from "./frames.ts";
import { bearer, rawSocket, type RawSocket } from "./raw.ts";

const AGENT_TOKEN = newToken();
const stack = useStack({ relay: { env: { AGENT_TOKEN } }, agent: false, client: "streamable-http" });

/** A real agent process as `machine`, with the shared token: the impostor's credential too. */
const startAs = (machine: string, options: AgentOptions = {}) => startAgent(stack.relay, { machine, token: AGENT_TOKEN, ...options });

/** The pid of the agent registered as `machine`, as a client sees it. */
async function pidOf(machine: string): Promise<number | undefined> {
  const status = await call(stack.client, "check_agent_status", { machine });
  return status.data?.machines?.[0]?.pid;
}

/** `bun run server.ts machine-key …` on the relay's database, as the owner runs it. */
const machineKeyCli = (...args: string[]) => relayCommand(stack.relay.databasePath, "machine-key", ...args);

const publicKeyIn = (stateDir: string): string => JSON.parse(fs.readFileSync(path.join(stateDir, "identity.key"), "utf8")).x;
const identityEvents = (machine: string, kind: string) => eventsOf(stack.relay.databasePath, "--machine", machine).filter((e) => e.kind === kind);

/** A key of the test's own, made by the agent's code in a scratch directory. */
async function freshKey(): Promise<Identity> {
  using dir = tempDir("cr-key-");
  return loadIdentity(dir.path);
}

/** A raw agent that says hello as `machine`, with `key`'s public key if given. */
async function rawHello(machine: string, key?: Pick<Identity, "publicKey">, token = AGENT_TOKEN): Promise<RawSocket> {
  const socket = rawSocket(`ws://127.0.0.1:${stack.relay.port}/ws/agent`, bearer(token));
  expect(await socket.opened).toBe(true);
  socket.send(JSON.stringify(hello(machine, key ? { public_key: key.publicKey } : {})));
  return socket;
}

/** The relay's next frame, parsed (null when the socket closed). */
const nextFrame = async (socket: RawSocket) => {
  const text = await socket.next();
  return text === null ? null : JSON.parse(text);
};

async function challengeOf(socket: RawSocket): Promise<string> {
  const frame = await nextFrame(socket);
  expect(frame).toMatchObject({ type: "challenge" });
  return frame.nonce;
}

const sendProof = (socket: RawSocket, signature: string) => socket.send(JSON.stringify({ type: "proof", signature }));

/** A raw agent that proves `key` properly and is welcomed. */
async function provenRaw(machine: string, key: Identity): Promise<RawSocket> {
  const socket = await rawHello(machine, key);
  sendProof(socket, await key.prove(machine, await challengeOf(socket)));
  expect(await nextFrame(socket)).toMatchObject({ type: "welcome", machine });
  return socket;
}

const IDENTITY_REFUSED = CloseCode.identityRefused;
const PINNED_TO_ANOTHER = "pinned to another agent's key; if this machine lost its key, the owner runs machine-key unpin";

describe("an impostor with the shared agent token", () => {
  test("is refused while the real agent is connected; the real one keeps the name and its calls, and is told nothing", async () => {
    await using real = await startAs("laptop");
    await using impostor = await startAs("laptop", { waitConnected: false });
    await impostor.stderr.waitFor(/agent error could not register with the relay: the relay refused this machine's identity \(pinned to another agent's key/);
    await Bun.sleep(3_500); // it keeps retrying (after 0.5-1 s, then 1-2 s): each attempt is refused the same way
    expect(await pidOf("laptop")).toBe(real.proc.pid);
    const ran = await call(stack.client, "run_shell_command", { machine: "laptop", command: "echo $PPID" });
    expect(ran.data.stdout).toBe(`${real.proc.pid}\n`);
    expect(real.stderr.text).not.toMatch(/disconnected|waiting before trying again|could not register/);
    // Logged once by each side, and audited once, however often it retries.
    expect(impostor.stderr.lines.filter((l) => l.includes("could not register"))).toHaveLength(1);
    expect(stack.relay.stderr.lines.filter((l) => l.includes('agent refused: it cannot prove it is this machine machine="laptop"'))).toHaveLength(1);
    expect(identityEvents("laptop", "auth_refused").map((e) => e.detail.detail)).toEqual(["identity: a key other than the pinned one"]);
    expect(identityEvents("laptop", "agent_replaced")).toEqual([]);
    // Both hold the shared token, kept for compatibility: the relay says so once per machine, the agent once per run.
    expect(stack.relay.stderr.lines.filter((l) => l.includes('agent uses the shared AGENT_TOKEN, kept only for compatibility: give it its own token: bun run server.ts agent-token create laptop machine="laptop"'))).toHaveLength(1);
    expect(real.stderr.lines.filter((l) => l.includes("agent warn the relay says: this agent uses the relay's shared agent token, kept only for compatibility"))).toHaveLength(1);
  });

  test("a raw agent with no key at all (as an older agent) cannot take a pinned name either", async () => {
    await using _real = await startAs("keyed");
    const keyless = await rawHello("keyed");
    expect(await keyless.closed).toEqual({ code: IDENTITY_REFUSED, reason: "this name is pinned to a key and this agent has none: update the agent" });
    expect(await pidOf("keyed")).toBe(_real.proc.pid);
  });

  test("never holds the real agent off: while it is away its name stays refused to others, and it is back at once", async () => {
    using state = tempDir("cr-state-");
    const first = await startAs("desk", { stateDir: state.path });
    await first.stop();
    await using impostor = await startAs("desk", { waitConnected: false });
    await impostor.stderr.waitFor(/refused this machine's identity/);
    const restartedAt = Date.now();
    await using again = await startAs("desk", { stateDir: state.path });
    expect(Date.now() - restartedAt).toBeLessThan(5_000); // a process start, not a 60 s wait
    expect(await pidOf("desk")).toBe(again.proc.pid);
    await Bun.sleep(2_000); // the impostor retries meanwhile
    expect(await pidOf("desk")).toBe(again.proc.pid);
    expect(again.stderr.text).not.toMatch(/waiting before trying again|could not register/);
  });
});

describe("the same machine", () => {
  test("restarting with its key replaces its own stale link at once", async () => {
    using state = tempDir("cr-state-");
    const stale = await startAs("box", { stateDir: state.path });
    stale.proc.kill("SIGSTOP"); // its link stays open on the relay but silent, as after a sleep or a network change
    try {
      // The same machine starting again (its state directory locked by the stopped process: the key, copied).
      using copy = tempDir("cr-state-");
      fs.copyFileSync(path.join(state.path, "identity.key"), path.join(copy.path, "identity.key"));
      fs.chmodSync(path.join(copy.path, "identity.key"), 0o600);
      await using restarted = await startAs("box", { stateDir: copy.path });
      await stack.relay.stderr.waitFor(/agent replaced by a new connection of the same machine machine="box"/);
      expect(await pidOf("box")).toBe(restarted.proc.pid);
      stale.proc.kill("SIGCONT");
      await stale.stderr.waitFor(/this machine connected to the relay again from another process \(same key\); waiting before trying again/);
      expect(identityEvents("box", "agent_replaced")).toHaveLength(1);
      expect(identityEvents("box", "auth_refused")).toEqual([]);
    } finally {
      stale.proc.kill("SIGCONT");
      await stale.kill();
    }
  });
});

describe("a machine that lost its key", () => {
  test("is refused until the owner unpins its name; then its new key is pinned and the old one refused", async () => {
    using state = tempDir("cr-state-");
    const before = await startAs("studio", { stateDir: state.path });
    const oldKey = publicKeyIn(state.path);
    await before.stop();
    using newState = tempDir("cr-state-");
    await using reinstalled = await startAs("studio", { stateDir: newState.path, waitConnected: false });
    await reinstalled.stderr.waitFor(/machine-key unpin studio; otherwise give this agent another MACHINE_NAME/);
    expect(machineKeyCli("list").stdout).toMatch(new RegExp(`^studio +key ${oldKey}, pinned \\S+, last connected \\S+$`, "m"));

    const unpinned = machineKeyCli("unpin", "studio");
    expect(unpinned.code).toBe(0);
    expect(unpinned.stdout).toContain("Unpinned 'studio'.");
    await reinstalled.stderr.waitFor(/agent info connected/, 15_000);
    expect(await pidOf("studio")).toBe(reinstalled.proc.pid);
    const listed = machineKeyCli("list").stdout;
    expect(listed).toContain(`key ${publicKeyIn(newState.path)}`);
    expect(listed).not.toContain(oldKey);
    expect(identityEvents("studio", "machine_key_unpinned")).toHaveLength(1);
    expect(identityEvents("studio", "machine_key_pinned")).toHaveLength(2);

    const oldIdentity = await loadIdentity(state.path); // the key the machine had before, proven as the agent would
    const oldMachine = await rawHello("studio", oldIdentity);
    sendProof(oldMachine, await oldIdentity.prove("studio", await challengeOf(oldMachine)));
    expect(await oldMachine.closed).toEqual({ code: IDENTITY_REFUSED, reason: PINNED_TO_ANOTHER });
  });

  test("machine-key refuses a name with no pin, a malformed name and a wrong usage, changing nothing", () => {
    expect(machineKeyCli("unpin", "nowhere")).toMatchObject({ code: 2, stderr: "code-remote: No key is pinned to 'nowhere'. See: machine-key list\n" });
    expect(machineKeyCli("unpin", "not a name")).toMatchObject({ code: 2 });
    expect(machineKeyCli("unpin", "not a name").stderr).toContain("is not a machine name");
    for (const args of [[], ["unpin"], ["list", "extra"], ["forget", "studio"]]) {
      expect(machineKeyCli(...args)).toMatchObject({ code: 2, stderr: "code-remote: usage: bun run server.ts machine-key list | unpin NAME\n" });
    }
  });
});

describe("a raw agent that claims a pinned key", () => {
  test("with a forged, borrowed, replayed or misdirected signature is refused (4004) and audited; the real agent stays", async () => {
    using state = tempDir("cr-state-");
    await using real = await startAs("vault", { stateDir: state.path });
    const realKey = publicKeyIn(state.path);

    const randomBytes = await rawHello("vault", { publicKey: realKey });
    await challengeOf(randomBytes);
    sendProof(randomBytes, Buffer.from(crypto.getRandomValues(new Uint8Array(64))).toString("base64url"));
    expect(await randomBytes.closed).toEqual({ code: IDENTITY_REFUSED, reason: "the identity proof does not verify" });

    // The right transcript (the real key, this nonce), signed with another key.
    const other = generateKeyPairSync("ed25519").privateKey;
    const borrowed = await rawHello("vault", { publicKey: realKey });
    const nonce = await challengeOf(borrowed);
    sendProof(borrowed, sign(null, identityTranscript("vault", realKey, nonce), other).toString("base64url"));
    expect(await borrowed.closed).toEqual({ code: IDENTITY_REFUSED, reason: "the identity proof does not verify" });

    // Its own key, properly proven: still not the pinned one.
    const stranger = await freshKey();
    const own = await rawHello("vault", stranger);
    sendProof(own, await stranger.prove("vault", await challengeOf(own)));
    expect(await own.closed).toEqual({ code: IDENTITY_REFUSED, reason: PINNED_TO_ANOTHER });

    expect(await pidOf("vault")).toBe(real.proc.pid);
    const refusals = identityEvents("vault", "auth_refused").map((e) => e.detail.detail);
    expect(refusals.sort()).toEqual(["identity: a key other than the pinned one", "identity: a signature that does not verify"]);
  });

  test("a signature is good for one connection and one name only: a replayed or another name's proof is refused", async () => {
    const key = await freshKey();
    const first = await provenRaw("spare", key); // the name is pinned to the test's key now
    const firstNonce = JSON.parse(first.frames[0]!).nonce as string;
    const seen = await key.prove("spare", firstNonce); // what an eavesdropper on that connection saw
    first.ws.close(1000);
    await first.closed;

    const replay = await rawHello("spare", key);
    await challengeOf(replay);
    sendProof(replay, seen);
    expect(await replay.closed).toEqual({ code: IDENTITY_REFUSED, reason: "the identity proof does not verify" });

    const misdirected = await rawHello("spare", key);
    sendProof(misdirected, await key.prove("another-name", await challengeOf(misdirected)));
    expect(await misdirected.closed).toEqual({ code: IDENTITY_REFUSED, reason: "the identity proof does not verify" });

    const again = await provenRaw("spare", key); // the holder itself still gets in
    again.ws.close(1000);
  });

  test("frames out of order around the proof close the socket with 4000 and say which", async () => {
    const key = await freshKey();
    const early = rawSocket(`ws://127.0.0.1:${stack.relay.port}/ws/agent`, bearer(AGENT_TOKEN));
    expect(await early.opened).toBe(true);
    sendProof(early, "A".repeat(86));
    expect(await early.closed).toEqual({ code: CloseCode.protocolError, reason: "proof without a challenge" });

    const chatty = await rawHello("ordered", key);
    await challengeOf(chatty);
    chatty.send(JSON.stringify({ type: "ping", t: 1 })); // a heartbeat crossing the challenge is answered
    expect(await nextFrame(chatty)).toEqual({ type: "pong", t: 1 });
    chatty.send(JSON.stringify({ type: "result", id: "r", ok: true, value: {} }));
    expect(await chatty.closed).toEqual({ code: CloseCode.protocolError, reason: "the proof must follow hello" });

    const twice = await rawHello("ordered", key);
    await challengeOf(twice);
    twice.send(JSON.stringify(hello("ordered", { public_key: key.publicKey })));
    expect(await twice.closed).toEqual({ code: CloseCode.protocolError, reason: "hello sent twice" });

    const late = await provenRaw("ordered", key);
    sendProof(late, await key.prove("ordered", "A".repeat(43)));
    expect(await late.closed).toEqual({ code: CloseCode.protocolError, reason: "proof without a challenge" });
  });
});

describe("agents older than keys (no key in their hello)", () => {
  test("take a free, unpinned name, but never replace a connected agent; a keyed agent then pins the name", async () => {
    const legacy = await rawHello("legacy");
    const welcome = await nextFrame(legacy);
    expect(welcome).toMatchObject({ type: "welcome", machine: "legacy" });
    expect(welcome.notice).toContain("shared agent token, kept only for compatibility");

    const second = await rawHello("legacy");
    expect(await second.closed).toEqual({ code: IDENTITY_REFUSED, reason: "another agent is connected under this name and this one cannot prove it is that machine" });
    const keyed = await freshKey();
    const upgraded = await rawHello("legacy", keyed);
    sendProof(upgraded, await keyed.prove("legacy", await challengeOf(upgraded)));
    expect(await upgraded.closed).toEqual({ code: IDENTITY_REFUSED, reason: "another agent is connected under this name and this one cannot prove it is that machine" });

    legacy.ws.close(1000);
    await legacy.closed;
    const pinned = await provenRaw("legacy", keyed); // the name is free: the keyed agent takes it and pins its key
    pinned.ws.close(1000);
    await pinned.closed;
    const back = await rawHello("legacy");
    expect(await back.closed).toEqual({ code: IDENTITY_REFUSED, reason: "this name is pinned to a key and this agent has none: update the agent" });
  });

  test("an agent with a token of its own gets no compatibility notice", async () => {
    const created = relayCommand(stack.relay.databasePath, "agent-token", "create", "owned");
    const token = /crm_\S+/.exec(created.stdout)![0];
    const key = await freshKey();
    const socket = await rawHello("owned", key, token);
    sendProof(socket, await key.prove("owned", await challengeOf(socket)));
    const welcome = await nextFrame(socket);
    expect(welcome).toMatchObject({ type: "welcome", machine: "owned" });
    expect(welcome.notice).toBeUndefined();
    socket.ws.close(1000);
  });
});
