// The agent's link to the relay: dial out over a WebSocket with the token in the Authorization header, say hello,
// answer heartbeats and watch for the relay's, serve requests (each through operations.ts), and reconnect with
// backoff when the link ends. Every frame from the relay is untrusted input, parsed with protocol.ts's schemas.
// setup's connection check dials exactly as the daemon does.

import * as os from "node:os";
import {
  CloseCode,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  PROTOCOL_VERSION,
  ServerFrame,
  VERSION,
  parseFrame,
  type AgentFrame,
  type RequestFrame,
} from "../protocol.ts";
import type { CommandRunner } from "./commands.ts";
import type { AgentConfig } from "./config.ts";
import { errorResult, execute, type OpContext } from "./operations.ts";
import { recordStatus } from "./state.ts";
import { logger } from "../log.ts";

const log = logger("agent");

/** Reconnect backoff: 1 s doubling to 30 s, with jitter; 60 s after being replaced by another agent. */
const RECONNECT_BASE_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;
const REPLACED_BACKOFF_MS = 60_000;
/** How long setup's connection check waits for the relay's welcome: a relay that is up answers in milliseconds. */
const CHECK_TIMEOUT_MS = 10_000;

/** Reconnect delay after `attempt` failures in a row: 1 s doubling to 30 s, with the upper half jittered so
 *  that many agents do not reconnect in step after a relay restart. Pure, for tests. */
export function nextDelayMs(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export interface Runtime {
  config: AgentConfig;
  commands: CommandRunner;
  /** Aborted once, on SIGINT/SIGTERM: wakes the backoff sleep and ends the loop. */
  stopping: AbortController;
  /** Closes the live connection, if any. */
  closeConnection?: (code: number, reason: string) => void;
}

interface ConnectionEnd {
  registered: boolean;
  code: number;
  reason: string;
}

function helloFrame(config: AgentConfig): AgentFrame {
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
  };
}

/** Opens the WebSocket with the token in the Authorization header (never in the URL) and says hello once it is
 *  open. Every connection starts here: the daemon's, and setup's check, so the check proves what the daemon does. */
function dial(config: AgentConfig): WebSocket {
  const ws = new WebSocket(config.relayUrl, { headers: { Authorization: `Bearer ${config.token}` } });
  ws.addEventListener("open", () => ws.send(JSON.stringify(helloFrame(config))));
  return ws;
}

/** One connection: dial, say hello, serve requests until the socket closes or falls silent. Never throws. */
function connectOnce(rt: Runtime): Promise<ConnectionEnd> {
  const { config } = rt;
  return new Promise((resolve) => {
    const ws = dial(config);
    const inflight = new Map<string, AbortController>();
    let registered = false;
    let lastHeard = Date.now();
    let ended = false;
    const send = (frame: AgentFrame) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
    };
    const end = (code: number, reason: string) => {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      // Calls in flight are left to finish: the relay has failed them for their clients, but a command keeps
      // running (to its timeout) and stays reachable by its command_id once the link is back.
      rt.closeConnection = undefined;
      resolve({ registered, code, reason });
    };
    const heartbeat = setInterval(() => {
      if (Date.now() - lastHeard > HEARTBEAT_TIMEOUT_MS) {
        ws.terminate();
        end(CloseCode.heartbeatTimeout, "the relay fell silent");
        return;
      }
      send({ type: "ping", t: Date.now() });
    }, HEARTBEAT_INTERVAL_MS);
    const contextFor = (frame: RequestFrame, signal: AbortSignal): OpContext => ({
      signal,
      receivedAt: Date.now(),
      config,
      commands: rt.commands,
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
          log("info", "connected", { relay: config.relayUrl, machine: frame.machine });
          recordStatus(config, "connected");
          return;
        case "request":
          return startRequest(frame);
        case "cancel":
          inflight.get(frame.id)?.abort();
          return;
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

    ws.addEventListener("open", () => (lastHeard = Date.now()));
    ws.addEventListener("message", (event) => {
      lastHeard = Date.now();
      onFrame(event.data);
    });
    ws.addEventListener("close", (event) => end(event.code, event.reason));
    rt.closeConnection = (code, reason) => ws.close(code, reason);
  });
}

/** What setup's check found. `problem` says which advice fits: the relay refused the token (HTTP 401/403 before
 *  the upgrade, or a 4003 close), could not be reached, replaced this connection with another agent of the same
 *  name, turned it away for another reason, or never answered. */
export type CheckResult =
  | { ok: true; machine: string; serverVersion: string }
  | { ok: false; problem: "refused" | "unreachable" | "replaced" | "rejected" | "timeout"; detail: string };

/** Connects once, exactly as the daemon does (dial, hello), and hangs up as soon as the relay welcomes this
 *  machine: setup's proof that the URL, token and name work. Serves no request. Never throws. */
export function checkConnection(config: AgentConfig, timeoutMs = CHECK_TIMEOUT_MS): Promise<CheckResult> {
  return new Promise((resolve) => {
    const ws = dial(config);
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
      if (!parsed.ok || parsed.frame.type !== "welcome") return; // a ping before the welcome needs no answer
      ws.close(CloseCode.normal, "setup check done");
      finish({ ok: true, machine: parsed.frame.machine, serverVersion: parsed.frame.server_version });
    });
    ws.addEventListener("error", (event) => (failure = (event as ErrorEvent).message ?? ""));
    ws.addEventListener("close", (event) => finish(explainClose(event.code, event.reason, failure)));
  });
}

function explainClose(code: number, reason: string, failure: string): CheckResult {
  const status = Number(/Expected 101 status code: (\d+)/.exec(failure)?.[1] ?? 0);
  if (status === 401 || status === 403 || code === CloseCode.forbidden) {
    return { ok: false, problem: "refused", detail: status ? `HTTP ${status}` : reason || "forbidden" };
  }
  if (status) return { ok: false, problem: "rejected", detail: `HTTP ${status} instead of a WebSocket upgrade` };
  if (code === CloseCode.replaced) return { ok: false, problem: "replaced", detail: reason };
  if (code === 1006) return { ok: false, problem: "unreachable", detail: failure.replace(/^WebSocket connection to '[^']*' failed: /, "") || "connection failed" };
  return { ok: false, problem: "rejected", detail: `closed with code ${code}${reason ? `: ${reason}` : ""}` };
}

/** Connects forever: backoff with jitter between attempts, reset after a connection that registered. */
export async function runForever(rt: Runtime): Promise<void> {
  let failures = 0;
  while (!rt.stopping.signal.aborted) {
    const result = await connectOnce(rt);
    if (rt.stopping.signal.aborted) return;
    failures = result.registered ? 0 : failures + 1;
    recordStatus(rt.config, "disconnected", result.reason || `code ${result.code}`);
    let delay = nextDelayMs(Math.max(0, failures - 1));
    if (result.code === CloseCode.replaced) {
      log("warn", "another agent connected with this machine name; waiting before trying again", {
        machine: rt.config.machine,
        seconds: REPLACED_BACKOFF_MS / 1000,
      });
      delay = REPLACED_BACKOFF_MS;
    } else if (result.registered) {
      log("warn", "disconnected", { code: result.code, reason: result.reason, retry_ms: delay });
    } else {
      log("warn", "could not register with the relay (is it running, and is the token right?)", {
        relay: rt.config.relayUrl,
        code: result.code,
        reason: result.reason,
        retry_ms: delay,
      });
    }
    await sleepUnlessStopped(delay, rt.stopping.signal);
  }
}

function sleepUnlessStopped(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}
