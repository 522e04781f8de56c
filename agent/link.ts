// The agent's link to the relay: dial out over a WebSocket with the token in the Authorization header, say hello
// with this machine's public key and sign the relay's challenge (identity.ts), answer heartbeats and watch for the
// relay's, serve requests (each through operations.ts), and reconnect with backoff when the link ends, saying once
// per cause why it cannot register (at once, without backoff, when the machine wakes from sleep). Every frame from
// the relay is untrusted input, parsed with protocol.ts's schemas. setup's connection check, and enroll-owner's
// enrolment link (enroll.ts), dial exactly as the daemon does.

import * as os from "node:os";
import {
  CloseCode,
  HEARTBEAT_CHECK_MS,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  PROTOCOL_VERSION,
  ServerFrame,
  VERSION,
  parseFrame,
  type AgentFrame,
  type HelloFrame,
  type RequestFrame,
} from "../protocol.ts";
import { OwnerQuestions, type Gatekeeper } from "./approvals.ts";
import type { CommandRunner } from "./commands.ts";
import type { AgentConfig } from "./config.ts";
import { IDENTITY_FILE, loadIdentity, type Identity } from "./identity.ts";
import { errorResult, execute, type OpContext } from "./operations.ts";
import { recordStatus } from "./state.ts";
import { logger } from "../log.ts";

const log = logger("agent");

/** Reconnect backoff while the relay is down or unreachable: full jitter (uniform in [0, ceiling]) under a ceiling
 *  of 1 s doubling to 5 s. The first retry comes within 1 s, a network or relay that returns is found within 5 s,
 *  and 10,000 agents returning together spread over 5 s: about 2,000 connections a second at most. 60 s after being
 *  replaced by another process with this machine's key, so the two do not flap. */
const RECONNECT_BASE_MS = 1_000;
const RECONNECT_MAX_MS = 5_000;
const REPLACED_BACKOFF_MS = 60_000;
/** A heartbeat tick this much later than expected, on the wall clock or the monotonic one, means the machine slept
 *  or the process was stopped: more than a busy event loop's hiccup, less than the relay's heartbeat timeout. */
const SLEEP_JUMP_MS = 3_000;
/** How long setup's connection check waits for the relay's welcome: a relay that is up answers in milliseconds. */
const CHECK_TIMEOUT_MS = 10_000;
/** A dial that has not connected within this long is given up and made again: on a network that just came back, a
 *  fresh dial connects at once, while an old one may wait out the kernel's SYN retries (1, 3, 7 s...). */
const DIAL_TIMEOUT_MS = 3_000;
/** The pause after a dial that never connected (no route, no answer): such attempts never reached the relay, so they
 *  cannot load it, and retrying every second or so finds a returning network within about 2 s. Jittered in [0.5, 1.5] s. */
const UNREACHED_RETRY_MS = 1_000;

/** Reconnect delay after `attempt` failures in a row (0 for the first retry, also after a link that registered):
 *  uniform in [0, ceiling], the ceiling 1 s doubling to 5 s, so that many agents do not reconnect in step after a
 *  relay restart or a network outage. Pure, for tests. */
export function nextDelayMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.max(0, attempt));
  return Math.round(random() * ceiling);
}

/** The pause after a dial that never connected: UNREACHED_RETRY_MS, jittered by half either way. */
export const unreachedDelayMs = (random: () => number = Math.random) => Math.round(UNREACHED_RETRY_MS * (0.5 + random()));

/** Tells that the machine slept (or the process was stopped) from a timer that ticks every `expectedMs`: a tick
 *  later than expected by more than `thresholdMs` on either clock. On a sleeping laptop the monotonic clock
 *  (performance.now()) stands still while the wall clock runs on, so the wall clock shows the jump; a stopped process
 *  (SIGSTOP, a debugger, a VM paused) sees both clocks run on while its timer does not. A wall clock stepped
 *  forward (NTP, a person) by more than the threshold reads as a sleep too: one needless reconnect. Pure: the clocks
 *  are passed in, so tests drive it with fake ones. */
export class SleepDetector {
  #wall: number;
  #mono: number;

  constructor(
    readonly expectedMs: number = HEARTBEAT_CHECK_MS,
    readonly thresholdMs: number = SLEEP_JUMP_MS,
    readonly wallClock: () => number = Date.now,
    readonly monoClock: () => number = () => performance.now(),
  ) {
    this.#wall = wallClock();
    this.#mono = monoClock();
  }

  /** Call once per tick: how long (ms) since the last tick when the machine was away, or 0 when it was not. */
  tick(): number {
    const wall = this.wallClock();
    const mono = this.monoClock();
    const elapsed = Math.max(wall - this.#wall, mono - this.#mono);
    this.#wall = wall;
    this.#mono = mono;
    return elapsed - this.expectedMs > this.thresholdMs ? elapsed : 0;
  }
}

export interface Runtime {
  config: AgentConfig;
  identity: Identity;
  commands: CommandRunner;
  /** The machine's policy, and what the owner approved for a while. */
  gate: Gatekeeper;
  /** Aborted once, on SIGINT/SIGTERM: wakes the backoff sleep and ends the loop. */
  stopping: AbortController;
  /** Closes the live connection, if any. */
  closeConnection?: (code: number, reason: string) => void;
}

/** The daemon's live connection, as its once-a-second tick sees it (runForever). */
interface LiveLink {
  /** The heartbeat: drops the link if the relay fell silent, and pings when a ping is due. */
  tick(): void;
  /** Drops the link at once, without waiting for the relay's close frame (the socket is probably dead). */
  drop(code: number, reason: string): void;
}

/** How many ticks (HEARTBEAT_CHECK_MS) apart the agent's pings go. */
const PING_EVERY_TICKS = Math.max(1, Math.round(HEARTBEAT_INTERVAL_MS / HEARTBEAT_CHECK_MS));

interface ConnectionEnd {
  /** The WebSocket opened: the dial reached the relay (or something answering at its address). */
  opened: boolean;
  registered: boolean;
  code: number;
  reason: string;
  /** The WebSocket's error message, if any: how Bun reports a refused upgrade (its HTTP status) or a failed dial. */
  failure: string;
}

function helloFrame(config: AgentConfig, identity: Identity, purpose?: HelloFrame["purpose"]): AgentFrame {
  return {
    type: "hello",
    protocol_version: PROTOCOL_VERSION,
    machine: config.machine,
    agent_version: VERSION,
    os: `${os.type()} ${os.release()}`,
    arch: process.arch,
    shell: config.shell,
    hostname: os.hostname(),
    allowed_roots: config.roots,
    public_key: identity.publicKey,
    ...(purpose ? { purpose } : {}), // the daemon's hello says none: what every relay takes as "serve"
  };
}

/** Opens the WebSocket with the token in the Authorization header (never in the URL) and says hello once it is
 *  open. Every connection starts here: the daemon's, setup's check (so the check proves what the daemon does), and
 *  enroll-owner's, whose hello says `purpose: "enroll"` so that the relay does not take it for the machine. */
export function dial(config: AgentConfig, identity: Identity, purpose?: HelloFrame["purpose"]): WebSocket {
  const ws = new WebSocket(config.relayUrl, { headers: { Authorization: `Bearer ${config.token}` } });
  ws.addEventListener("open", () => ws.send(JSON.stringify(helloFrame(config, identity, purpose))));
  return ws;
}

/** Answers the relay's challenge: this machine's signature over its nonce, which proves the name is this machine's. */
export async function answerChallenge(ws: WebSocket, config: AgentConfig, identity: Identity, nonce: string): Promise<void> {
  const proof: AgentFrame = { type: "proof", signature: await identity.prove(config.machine, nonce) };
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(proof));
}

/** Logs a relay's notice (its welcome says this agent's token is the shared one) once per run, not per reconnect. */
let noticeLogged: string | undefined;
function logNotice(notice: string | undefined): void {
  if (notice === undefined || notice === noticeLogged) return;
  noticeLogged = notice;
  log("warn", `the relay says: ${notice}`);
}

/** One connection: dial, say hello, serve requests until the socket closes or falls silent. Never throws. While it
 *  lasts, `holder.live` is this connection, for runForever's tick. */
function connectOnce(rt: Runtime, holder: { live?: LiveLink }): Promise<ConnectionEnd> {
  const { config } = rt;
  return new Promise((resolve) => {
    const ws = dial(config, rt.identity);
    const inflight = new Map<string, AbortController>();
    let registered = false;
    let relayFeatures: readonly string[] = [];
    // Silence is measured on the monotonic clock: a wall clock stepped back must not hide a dead link. (A sleep,
    // when the monotonic clock stands still, is runForever's SleepDetector's to find.)
    let lastHeard = performance.now();
    let ticks = 0;
    let ended = false;
    let opened = false;
    let failure = "";
    const send = (frame: AgentFrame): boolean => {
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(frame));
      return true;
    };
    const questions = new OwnerQuestions(config.machine, send, () => relayFeatures.includes("approvals"));
    const end = (code: number, reason: string) => {
      if (ended) return;
      ended = true;
      if (holder.live === live) holder.live = undefined;
      // Calls in flight are left to finish: the relay has failed them for their clients, but a command keeps
      // running (to its timeout) and stays reachable by its command_id once the link is back.
      rt.closeConnection = undefined;
      questions.dropAll(); // a call waiting for approval cannot get one any more: it fails, nothing runs
      resolve({ opened, registered, code, reason, failure });
    };
    const live: LiveLink = {
      tick() {
        if (!opened && performance.now() - lastHeard > DIAL_TIMEOUT_MS) return live.drop(CloseCode.heartbeatTimeout, `no connection within ${DIAL_TIMEOUT_MS / 1000} s`);
        if (performance.now() - lastHeard > HEARTBEAT_TIMEOUT_MS) return live.drop(CloseCode.heartbeatTimeout, "the relay fell silent");
        if (++ticks % PING_EVERY_TICKS === 0) send({ type: "ping", t: Date.now() });
      },
      drop(code, reason) {
        if (ended) return;
        // The close frame tells a relay that can still hear us why; terminate does not wait for its answer.
        if (ws.readyState === WebSocket.OPEN) ws.close(code, reason);
        ws.terminate();
        end(code, reason);
      },
    };
    holder.live = live;
    const contextFor = (frame: RequestFrame, signal: AbortSignal): OpContext => ({
      signal,
      receivedAt: Date.now(),
      config,
      commands: rt.commands,
      gate: rt.gate,
      owner: questions.askerFor(frame.id),
      onProgress: frame.progress ? (progress) => send({ type: "progress", id: frame.id, ...progress }) : undefined,
    });

    const onFrame = (data: unknown) => {
      const parsed = parseFrame(ServerFrame, data as string);
      if (!parsed.ok) {
        log("warn", "closing: the relay sent a bad frame", { reason: parsed.reason });
        ws.close(CloseCode.protocolError, parsed.reason);
        return;
      }
      const frame = parsed.frame;
      switch (frame.type) {
        case "welcome":
          registered = true;
          relayFeatures = frame.features ?? [];
          log("info", "connected", { relay: config.relayUrl, machine: frame.machine });
          logNotice(frame.notice);
          recordStatus(config, "connected");
          return;
        case "challenge":
          // A challenge comes only before welcome; after it, it is out of order, like a second hello to the relay.
          if (registered) return void ws.close(CloseCode.protocolError, "challenge after welcome");
          return void answerChallenge(ws, config, rt.identity, frame.nonce);
        case "request":
          return startRequest(frame);
        case "cancel":
          inflight.get(frame.id)?.abort();
          return;
        case "decision":
          log("info", "the owner decided", { id: frame.id, approve: frame.approve, for_seconds: frame.for_seconds, by: frame.by });
          return questions.decided(frame);
        case "ping":
          return send({ type: "pong", t: frame.t });
        case "pong":
          return;
      }
    };

    const startRequest = (frame: RequestFrame) => {
      if (!registered || inflight.has(frame.id)) {
        send(errorResult(frame.id, { code: "invalid_arguments", message: "request before welcome, or a duplicate id" }));
        return;
      }
      const controller = new AbortController();
      inflight.set(frame.id, controller);
      const started = performance.now();
      void execute(frame, contextFor(frame, controller.signal)).then((result) => {
        inflight.delete(frame.id);
        send(result);
        const outcome = result.type === "result" && !result.ok ? result.error.code : "ok";
        log("info", "call", { op: frame.op, id: frame.id, outcome, ms: Math.round(performance.now() - started) });
      });
    };

    ws.addEventListener("open", () => {
      opened = true;
      lastHeard = performance.now();
    });
    ws.addEventListener("message", (event) => {
      lastHeard = performance.now();
      onFrame(event.data);
    });
    ws.addEventListener("error", (event) => (failure = (event as ErrorEvent).message ?? ""));
    ws.addEventListener("close", (event) => end(event.code, event.reason));
    rt.closeConnection = (code, reason) => ws.close(code, reason);
  });
}

/** Why a connection ended before the relay registered this agent, for setup's advice and the daemon's log:
 *  - refused: the relay refused the token at the upgrade (HTTP 401 or 403, or 429 after many such refusals);
 *  - turned_away: the relay accepted the token but not this agent (4003: revoked, made for another name, or the
 *    owner disconnected the machine for a while);
 *  - identity: the name belongs to another agent's key, or this agent could not prove it holds the pinned key (4004);
 *  - not_relay: something answered that is not a relay's agent endpoint (an HTTP status other than an upgrade);
 *  - unreachable: no connection at all (refused, DNS, TLS), or a 5xx from the relay or a proxy in front of it;
 *  - replaced: this machine connected again elsewhere (same key) and took the name over;
 *  - rejected: closed for another reason (another protocol version, a protocol error);
 *  - timeout: connected, but nothing came back. */
export type Problem = "refused" | "turned_away" | "identity" | "not_relay" | "unreachable" | "replaced" | "rejected" | "timeout";

/** What setup's check found. */
export type CheckResult = { ok: true; machine: string; serverVersion: string } | { ok: false; problem: Problem; detail: string };

/** Connects once, exactly as the daemon does (dial, hello, proof), and hangs up as soon as the relay welcomes this
 *  machine: setup's proof that the URL, token and name work. Serves no request. Throws only a ConfigError, when
 *  this machine's identity key cannot be read or made. */
export async function checkConnection(config: AgentConfig, timeoutMs = CHECK_TIMEOUT_MS): Promise<CheckResult> {
  const identity = await loadIdentity(config.stateDir);
  return new Promise((resolve) => {
    const ws = dial(config, identity);
    let failure = ""; // Bun reports an HTTP refusal of the upgrade only in the error event's message
    let done = false;
    const finish = (result: CheckResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      ws.terminate();
      finish({ ok: false, problem: "timeout", detail: `no answer from the relay within ${timeoutMs / 1000} s` });
    }, timeoutMs);
    ws.addEventListener("message", (event) => {
      const parsed = parseFrame(ServerFrame, event.data as string);
      if (!parsed.ok) return;
      if (parsed.frame.type === "challenge") return void answerChallenge(ws, config, identity, parsed.frame.nonce);
      if (parsed.frame.type !== "welcome") return; // a ping before the welcome needs no answer
      ws.close(CloseCode.normal, "setup check done");
      finish({ ok: true, machine: parsed.frame.machine, serverVersion: parsed.frame.server_version });
    });
    ws.addEventListener("error", (event) => (failure = (event as ErrorEvent).message ?? ""));
    ws.addEventListener("close", (event) => finish({ ok: false, ...classifyEnd(event.code, event.reason, failure) }));
  });
}

/** Sorts a connection that ended unregistered into a Problem, with the detail (HTTP status, relay's reason) to show. */
export function classifyEnd(code: number, reason: string, failure: string, opened = true): { problem: Problem; detail: string } {
  const status = Number(/Expected 101 status code: (\d+)/.exec(failure)?.[1] ?? 0);
  if (status === 401 || status === 403 || status === 429) return { problem: "refused", detail: `HTTP ${status}` };
  if (status >= 500) return { problem: "unreachable", detail: `HTTP ${status} from the relay or a proxy in front of it` };
  if (status) return { problem: "not_relay", detail: `HTTP ${status} instead of a WebSocket upgrade` };
  if (code === CloseCode.forbidden) return { problem: "turned_away", detail: reason || "forbidden" };
  if (code === CloseCode.identityRefused) return { problem: "identity", detail: reason || "identity refused" };
  if (code === CloseCode.replaced) return { problem: "replaced", detail: reason };
  // Given up before the socket opened: nothing answered at all (a network down, a host that drops packets).
  if (code === CloseCode.heartbeatTimeout && !opened) return { problem: "unreachable", detail: reason };
  if (code === CloseCode.heartbeatTimeout) return { problem: "timeout", detail: reason };
  if (code === 1006) return { problem: "unreachable", detail: failure.replace(/^WebSocket connection to '[^']*' failed: /, "") || "connection failed" };
  return { problem: "rejected", detail: `closed with code ${code}${reason ? `: ${reason}` : ""}` };
}

/** The daemon's log line for a connection that ended before registering: what happened and what to do. */
export function unregisteredMessage(problem: Problem, detail: string, config: AgentConfig): string {
  const name = config.machine;
  switch (problem) {
    case "refused":
      return `the relay refused the agent token (${detail}): set AGENT_TOKEN to the token the relay's owner gave you; a token made for one machine works only with its MACHINE_NAME`;
    case "turned_away":
      return `the relay turned this agent away (${detail})`;
    case "identity":
      return (
        `the relay refused this machine's identity (${detail}). If this is the machine '${name}' and it lost its key ` +
        `(${IDENTITY_FILE} in ${config.stateDir} is new), the relay's owner runs: bun run server.ts machine-key unpin ${name}; ` +
        "otherwise give this agent another MACHINE_NAME"
      );
    case "not_relay":
      return `RELAY_URL does not point at a Code Remote relay (${detail}): use the relay's address with /ws/agent, e.g. wss://relay.example.com/ws/agent`;
    case "unreachable":
      return `cannot reach the relay at ${config.relayUrl} (${detail}); is it running?`;
    case "timeout":
      return `the server at ${config.relayUrl} accepted the connection but never answered (${detail}); is it a Code Remote relay?`;
    case "replaced":
    case "rejected":
      return `the relay closed the connection (${detail})`;
  }
}

/** Connects forever: backoff with jitter between attempts, reset after a connection that registered (its first
 *  retry comes within 1 s), and none after the machine woke from sleep. One timer ticks every second: it looks for
 *  a sleep first (then drops the link, or cuts the backoff short, and reconnects at once), then runs the live
 *  connection's heartbeat. */
export async function runForever(rt: Runtime): Promise<void> {
  let failures = 0;
  const causes = new CauseLog();
  const state: { live?: LiveLink; woke: boolean; nap?: AbortController } = { woke: false };
  const clocks = new SleepDetector();
  const ticker = setInterval(() => {
    const awayMs = clocks.tick();
    if (awayMs === 0) return state.live?.tick();
    const reconnecting = state.live !== undefined || state.nap !== undefined; // not while waiting after "replaced"
    log("warn", `the machine slept (or the agent was stopped) for ${Math.round(awayMs / 1000)} s${reconnecting ? "; reconnecting" : ""}`);
    state.woke = true;
    state.live?.drop(CloseCode.wokeFromSleep, "agent woke from sleep");
    state.nap?.abort(); // a backoff under way ends now (never the wait after being replaced)
  }, HEARTBEAT_CHECK_MS);
  try {
    while (!rt.stopping.signal.aborted) {
      state.woke = false;
      const result = await connectOnce(rt, state);
      if (rt.stopping.signal.aborted) return;
      const pause = nextPause(rt, result, state.woke, failures, causes);
      failures = pause.failures;
      state.nap = pause.wakeable ? new AbortController() : undefined;
      await sleepUnlessStopped(pause.delay, rt.stopping.signal, state.nap?.signal);
      state.nap = undefined;
    }
  } finally {
    clearInterval(ticker);
  }
}

/** After a connection ended: how long to wait before the next one, how many failures in a row that makes, and
 *  whether a wake from sleep may cut the wait short; records the status and logs why. */
function nextPause(
  rt: Runtime,
  result: ConnectionEnd,
  woke: boolean,
  failuresBefore: number,
  causes: CauseLog,
): { delay: number; failures: number; wakeable: boolean } {
  if (woke) {
    // The link was dropped by us: no failure of the relay's, and the network may be another one now.
    recordStatus(rt.config, "disconnected", "the machine slept; reconnecting");
    if (result.registered) {
      causes.reset();
      log("warn", "disconnected", { code: result.code, reason: result.reason, retry_ms: 0 });
    }
    return { delay: 0, failures: 0, wakeable: true };
  }
  if (result.code === CloseCode.replaced) {
    recordStatus(rt.config, "disconnected", result.reason);
    log("warn", "this machine connected to the relay again from another process (same key); waiting before trying again", {
      machine: rt.config.machine,
      seconds: REPLACED_BACKOFF_MS / 1000,
    });
    return { delay: REPLACED_BACKOFF_MS, failures: 0, wakeable: false };
  }
  const failures = result.registered ? 0 : failuresBefore + 1;
  // A link that registered, or a first failure: 0-1 s; a dial that never reached the relay: about a second.
  const delay = result.opened ? nextDelayMs(Math.max(0, failures - 1)) : unreachedDelayMs();
  if (result.registered) {
    recordStatus(rt.config, "disconnected", result.reason || `code ${result.code}`);
    causes.reset();
    log("warn", "disconnected", { code: result.code, reason: result.reason, retry_ms: delay });
  } else {
    const { problem, detail } = classifyEnd(result.code, result.reason, result.failure, result.opened);
    const why = unregisteredMessage(problem, detail, rt.config);
    recordStatus(rt.config, "disconnected", why); // `status` says why, not "code 1006"
    causes.failed(problem, detail, why);
  }
  return { delay, failures, wakeable: true };
}

/** Logs why connections fail to register, once per cause: a relay that is down for an hour is one line. A new
 *  cause, or the same one again after a connection that worked, is logged again. */
class CauseLog {
  #last = "";

  reset(): void {
    this.#last = "";
  }

  failed(problem: Problem, detail: string, why: string): void {
    const cause = `${problem}\n${detail}`;
    if (cause === this.#last) return;
    this.#last = cause;
    const needsSomeone = problem === "refused" || problem === "identity" || problem === "not_relay"; // no retry fixes these
    log(needsSomeone ? "error" : "warn", `could not register with the relay: ${why}; retrying (logged again only when the cause changes)`);
  }
}

/** Waits `ms`, or less if a signal aborts first; leaves no listener behind (the daemon waits here for as long as
 *  the relay is down). */
function sleepUnlessStopped(ms: number, ...given: (AbortSignal | undefined)[]): Promise<void> {
  const signals = given.filter((signal) => signal !== undefined);
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      for (const signal of signals) signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    for (const signal of signals) signal.addEventListener("abort", done, { once: true });
    if (signals.some((signal) => signal.aborted)) done();
  });
}
