// The relay's side of the agent protocol: registered agents by machine name, and calls matched to results by
// request id in memory. A call is sent once and never again (at most once): it ends with the agent's answer, the
// agent's disconnect, its deadline, or the caller's cancel, and the agent is told to stop in the last two cases.

import { randomBytes, randomUUID } from "node:crypto";
import type { ServerWebSocket } from "bun";
import {
  AgentFrame,
  CloseCode,
  HEARTBEAT_CHECK_MS,
  HEARTBEAT_INTERVAL_MS,
  HEARTBEAT_TIMEOUT_MS,
  PROTOCOL_VERSION,
  RELAY_FEATURES,
  VERSION,
  opSchemas,
  parseFrame,
  type AgentError,
  type AgentOp,
  type AskFrame,
  type Decision,
  type ErrorCode,
  type HelloFrame,
  type OpArgs,
  type OpResult,
  type ProgressFrame,
  type ProofFrame,
  type ServerFrame,
} from "../protocol.ts";
import type { AuditLog, CallOutcome } from "./audit.ts";
import type { AgentCredential } from "./auth.ts";
import type { EnrolLink, EnrolmentDesk } from "./enrolments.ts";
import { judgeIdentity, proofVerifies, type MachineKeys } from "./identity.ts";
import { OncePer } from "./limits.ts";
import type { Presence } from "./presence.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** An agent must say hello (and prove its key) this soon after its upgrade. */
const HELLO_TIMEOUT_MS = 10_000;
/** An identity refusal is logged and audited once per machine, address and cause in this time. */
const IDENTITY_REFUSAL_RECORD_MS = 10 * 60 * 1000;
/** The relay's warning about an agent on the shared token is repeated this often per machine. */
const SHARED_TOKEN_WARNING_MS = 24 * 60 * 60 * 1000;


/** Per-socket state, set at upgrade (Bun passes it back as ws.data). */
export interface SocketData {
  address: string;
  /** What the agent proved at the upgrade: the shared token, or a token for one machine. */
  credential: AgentCredential;
  openedAt: number;
  lastHeard: number;
  /** Set when a hello with a public key was answered with a challenge: the proof must come next. */
  challenge?: { hello: HelloFrame; nonce: string };
  /** Set once the agent's hello (and proof, if it has a key) is accepted. */
  agent?: AgentConn;
  /** The origin the agent dialed (its upgrade request's Host, with http or https): where an enrolment page is, when
   *  PUBLIC_URL does not say. */
  origin: string;
  /** Set instead of `agent` once an enroll hello (`enroll-owner`) and its proof are accepted: this connection only
   *  pairs an owner passkey with the machine (enrolments.ts), and is not the machine's link. */
  enrolment?: EnrolLink;
}

type AgentSocket = ServerWebSocket<SocketData>;

interface PendingCall {
  op: AgentOp;
  /** The id the relay chose for a run_shell_command (RequestFrame.command_id): what the model is told to check with
   *  get_command_output if the link dies before the answer. */
  commandId?: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  onProgress?: (progress: ProgressFrame) => void;
  /** The agent's policy sent the call to the owner: `ask` is what it would do. */
  onAsk: (ask: AskFrame) => void;
  onQuiet?: (message: string) => void;
}

export interface AgentConn {
  ws: AgentSocket;
  machine: string;
  hello: HelloFrame;
  /** The key this agent proved it holds; unset for an agent older than keys. */
  publicKey?: string;
  connectedAt: Date;
  /** Calls sent on this socket and not answered yet. A result is matched only against its own socket's calls. */
  pending: Map<string, PendingCall>;
}

/** A call for a machine that went away a moment ago tells its client this often that it waits for it to return. */
export const RECONNECT_PROGRESS_MS = 2_000;
/** A link not heard for longer than this (a heartbeat and a half) may be half-dead: a call waits to hear it first. */
const QUIET_LINK_MS = HEARTBEAT_INTERVAL_MS * 1.5;
/** Silent past the relay's own ping (sent at HEARTBEAT_INTERVAL_MS + HEARTBEAT_CHECK_MS) and a check more: the ping went
 *  unanswered, so the calls waiting on the link are told (an older agent that pings every 5 s only answers the
 *  relay's ping at once, and is not reported silent). */
const UNANSWERED_PING_MS = HEARTBEAT_INTERVAL_MS + 2 * HEARTBEAT_CHECK_MS;
const QUIET_POLL_MS = 100;
/** Machines remembered as recently connected, at most (the oldest are forgotten first): the memory a relay gives to
 *  riding out blips stays bounded however many machines come and go. */
const RECENTLY_GONE_MAX = 10_000;

/** How long to wait for an agent's answer, what may cancel it, where its progress goes, and who takes the question
 *  when the machine's policy asks the owner first (without one, such a call is refused at once). */
interface CallOptions {
  deadlineMs: number;
  signal?: AbortSignal;
  onProgress?: (progress: ProgressFrame) => void;
  onAsk?: (ask: AskFrame) => void;
  /** Told every HEARTBEAT_CHECK_MS while the call waits for its answer on a link gone quiet (the relay's ping went
   *  unanswered: a blip under way), so a client hears why its call is slow: the link may recover, or be closed as
   *  dead (a read is then sent again). */
  onQuiet?: (message: string) => void;
}

/** A failure the model should read as is: the message says what happened and what to do. */
export class ToolError extends Error {
  constructor(
    message: string,
    readonly outcome: CallOutcome = "error",
    /** The agent's error code, when the agent refused (path_denied is audited as such). */
    readonly code?: ErrorCode,
    /** Words of the user's files for the model (AgentError.quote): added to the answer, never audited. */
    readonly quote?: string,
  ) {
    super(message);
  }
}

/** A call whose link ended before its answer came: whether it ran is unknown. A read (no effect) may be sent again. */
export class LinkLost extends ToolError {}

/** Registered agents and their calls. `agents` maps a machine name to its live connection: `register` adds or
 *  replaces an entry; `disconnected` removes it only if it is still that same connection, so the late close of a
 *  replaced socket can never unregister its successor. */
export class Relay {
  readonly agents = new Map<string, AgentConn>();
  readonly sockets = new Set<AgentSocket>();
  /** Machines the owner disconnected, and until when (ms) they are turned away. */
  readonly #heldOff = new Map<string, number>();
  /** Machines warned about for using the shared agent token: once a day each, not at every reconnect. */
  readonly #sharedTokenWarned = new OncePer(SHARED_TOKEN_WARNING_MS);
  readonly #identityRefusalRecorded = new OncePer(IDENTITY_REFUSAL_RECORD_MS);
  /** What a call hears when no machine is connected: how to start an agent, or under `bun run dev`, where its own
   *  agent went. */
  noMachineMessage = NO_MACHINE_MESSAGE;
  /** How long a call waits for a machine that was connected a moment ago to come back (RECONNECT_GRACE_S); 0: it
   *  fails at once, as before. */
  reconnectGraceMs = 30_000;
  /** Machines whose link ended, by name, with when (ms): a call for one of them within the grace waits for it. In
   *  order of leaving (an entry is re-added, not updated), so the expired ones are at the front; pruned as entries
   *  are added, and at most RECENTLY_GONE_MAX. An owner's disconnect or a revoked token leaves no entry. */
  readonly #recentlyGone = new Map<string, number>();
  /** Calls waiting for a machine to return, by machine name: woken when it registers. */
  readonly #returnWaiters = new Map<string, Set<() => void>>();
  /** Set by closeAll: the links this relay closes as it stops are not machines leaving. */
  #stopping = false;
  /** Where enroll connections' frames go; without it, enroll hellos are refused. */
  enrolments?: EnrolmentDesk;
  constructor(
    readonly audit: AuditLog,
    /** Whether a machine name has an agent token of its own (then only that token may register it). */
    readonly hasOwnToken: (machine: string) => boolean,
    /** The public key pinned to each machine name: only its holder may register the name. */
    readonly keys: MachineKeys,
    /** The machines registered now, as the next relay will read them (presence.ts). */
    readonly presence: Pick<Presence, "connected" | "left">,
  ) {}

  opened(ws: AgentSocket): void {
    this.sockets.add(ws);
  }

  /** Handles one frame from an agent socket. */
  received(ws: AgentSocket, data: string | Buffer): void {
    ws.data.lastHeard = Date.now();
    const parsed = parseFrame(AgentFrame, data);
    if (!parsed.ok) return this.#refuse(ws, CloseCode.protocolError, parsed.reason);
    const frame = parsed.frame;
    const conn = ws.data.agent;
    const { challenge, enrolment } = ws.data;
    if (frame.type === "hello") return conn || challenge || enrolment ? this.#refuse(ws, CloseCode.protocolError, "hello sent twice") : this.#hello(ws, frame);
    if (frame.type === "proof") return challenge ? this.#proven(ws, challenge, frame) : this.#refuse(ws, CloseCode.protocolError, "proof without a challenge");
    // A heartbeat may cross the challenge (the agent pings on a timer from the moment it dials); nothing else may.
    if (frame.type === "ping" && (conn || challenge || enrolment)) return void send(ws, { type: "pong", t: frame.t });
    if (challenge) return this.#refuse(ws, CloseCode.protocolError, "the proof must follow hello");
    if (enrolment) return this.#enrolFrame(ws, enrolment, frame);
    if (!conn) return this.#refuse(ws, CloseCode.protocolError, "the first frame must be hello");
    if (frame.type === "enroll_begin" || frame.type === "enroll_result") return this.#refuse(ws, CloseCode.protocolError, "enrolment frames need an enroll hello");
    if (frame.type === "progress") return conn.pending.get(frame.id)?.onProgress?.(frame);
    if (frame.type === "ask") return conn.pending.get(frame.id)?.onAsk(frame);
    if (frame.type === "result") this.#settle(conn, frame.id, frame.ok ? { value: frame.value } : { error: frame.error });
  }

  disconnected(ws: AgentSocket, code: number, reason: string): void {
    this.sockets.delete(ws);
    if (ws.data.enrolment) this.enrolments?.ended(ws.data.enrolment);
    const conn = ws.data.agent;
    if (!conn) return;
    this.#failPending(conn, `Machine '${conn.machine}' disconnected before answering; it may or may not have run.`);
    if (this.agents.get(conn.machine) !== conn) return; // replaced earlier: its successor stays registered
    this.agents.delete(conn.machine);
    // Closed by this relay's shutdown: still connected, as the next relay should know. Any other end is an end.
    if (!this.#stopping) this.presence.left(conn.machine);
    // Cut off on purpose (the owner's disconnect, a revoked token): nobody should wait for it to come back.
    if (code !== CloseCode.forbidden) this.#wentAway(conn.machine);
    log("info", "agent disconnected", { machine: conn.machine, code, reason });
    this.audit.event("agent_disconnected", { machine: conn.machine, address: ws.data.address, detail: `code ${code}` });
  }

  /** The connection a tool call should go to, waiting for it when it was connected a moment ago: a machine named
   *  (or, when none is named and none is connected, the only machine that was) whose link ended less than the grace
   *  ago is waited for until it registers again, the grace is over, or `signal` aborts; `waiting` hears about it
   *  at once and every RECONNECT_PROGRESS_MS. Otherwise as `pick`. */
  async connection(machine: string | undefined, options: { signal?: AbortSignal; waiting?: (message: string) => void } = {}): Promise<AgentConn> {
    const conn = await this.#reachable(machine, options);
    if (Date.now() - conn.ws.data.lastHeard <= QUIET_LINK_MS) return conn;
    // Silent for longer than its heartbeats allow: the network may be dropping packets. A call sent into such a link
    // would be lost with it and, sent at most once, fail; so it waits to hear the link again, or for the machine to
    // come back on a new one once this one is declared dead.
    return (await this.#untilHeard(conn, options)) ? conn : this.#reachable(conn.machine, options);
  }

  /** Waits until `conn` is heard again (true) or is gone (false: closed as dead, or replaced); a cancel throws. */
  #untilHeard(conn: AgentConn, options: { signal?: AbortSignal; waiting?: (message: string) => void }): Promise<boolean> {
    const { signal, waiting } = options;
    return new Promise((resolve, reject) => {
      let polls = 0;
      const finish = (outcome: boolean | ToolError) => {
        clearInterval(poll);
        signal?.removeEventListener("abort", cancelled);
        if (outcome instanceof ToolError) reject(outcome);
        else resolve(outcome);
      };
      const cancelled = () => finish(new ToolError("The call was cancelled.", "cancelled"));
      const tell = () => waiting?.(quietMessage(conn, Date.now()));
      // Cheap and rare (only calls for a link that went quiet): a look every 100 ms, bounded by the heartbeat timeout,
      // after which the sweep has closed the link.
      const poll = setInterval(() => {
        if (this.agents.get(conn.machine) !== conn) return finish(false);
        if (Date.now() - conn.ws.data.lastHeard <= QUIET_LINK_MS) return finish(true);
        if (++polls % (RECONNECT_PROGRESS_MS / QUIET_POLL_MS) === 0) tell();
      }, QUIET_POLL_MS);
      signal?.addEventListener("abort", cancelled, { once: true });
      if (signal?.aborted) return cancelled();
      tell();
    });
  }

  /** The connection of `machine` (or the only one), waiting within the grace for one that dropped a moment ago. */
  async #reachable(machine: string | undefined, options: { signal?: AbortSignal; waiting?: (message: string) => void }): Promise<AgentConn> {
    let picked: ToolError;
    try {
      return this.pick(machine);
    } catch (e) {
      if (!(e instanceof ToolError)) throw e;
      picked = e;
    }
    const recent = machine === undefined && this.agents.size === 0 ? this.#stillGone() : [];
    if (recent.length > 1) throw new ToolError(`No machine is connected; several were a moment ago: ${this.#goneList(recent)}. Say which one with "machine": ${this.#graceNote()}.`);
    const name = machine ?? recent[0];
    const goneAt = name === undefined ? undefined : this.#goneAt(name);
    if (name === undefined || goneAt === undefined) throw picked;
    const { signal, waiting } = options;
    const until = goneAt + this.reconnectGraceMs;
    const waitedMs = await new Promise<number | "cancelled">((resolve) => {
      const began = Date.now();
      const done = (how: "back" | "over" | "cancelled") => {
        clearTimeout(timer);
        clearInterval(ticker);
        signal?.removeEventListener("abort", cancelled);
        waiters.delete(back);
        if (waiters.size === 0 && this.#returnWaiters.get(name) === waiters) this.#returnWaiters.delete(name);
        resolve(how === "cancelled" ? "cancelled" : Date.now() - began);
      };
      const back = () => done("back");
      const cancelled = () => done("cancelled");
      const waiters = this.#returnWaiters.get(name) ?? new Set();
      this.#returnWaiters.set(name, waiters.add(back));
      const timer = setTimeout(() => done("over"), Math.max(0, until - Date.now()));
      const tell = () => waiting?.(`waiting for ${name} to reconnect (up to ${Math.max(1, Math.ceil((until - Date.now()) / 1000))} s)`);
      const ticker = waiting ? setInterval(tell, RECONNECT_PROGRESS_MS) : undefined;
      signal?.addEventListener("abort", cancelled, { once: true });
      if (signal?.aborted) return cancelled();
      tell();
    });
    if (waitedMs === "cancelled") throw new ToolError("The call was cancelled.", "cancelled");
    const conn = this.agents.get(name);
    if (conn) return conn;
    const ago = Math.round((Date.now() - goneAt) / 1000);
    throw new ToolError(`Machine '${name}' is not connected (it disconnected ${ago} s ago; the relay waited ${Math.round(waitedMs / 1000)} s for it to reconnect). ${this.#connectedList()}`);
  }

  /** What check_agent_status and list_commands say when no machine is connected: which machines dropped within the
   *  grace (calls for them wait), then the usual message. */
  noMachineNow(): string {
    const gone = this.#stillGone();
    return gone.length === 0 ? this.noMachineMessage : `Recently connected: ${this.#goneList(gone)}; ${this.#graceNote()}. ${this.noMachineMessage}`;
  }

  /** Machines that went away, the latest first (five at most, then how many more), with how long ago. */
  #goneList(names: string[]): string {
    const now = Date.now();
    const latest = [...names].reverse();
    const shown = latest.slice(0, 5).map((name) => `${name} (disconnected ${Math.round((now - (this.#recentlyGone.get(name) ?? now)) / 1000)} s ago)`);
    return shown.join(", ") + (latest.length > 5 ? ` and ${latest.length - 5} more` : "");
  }

  #graceNote(): string {
    return `a call for one of them waits for it to reconnect, up to ${Math.round(this.reconnectGraceMs / 1000)} s after it left`;
  }

  /** The connection a tool call should go to, or a ToolError that lists the connected machines. */
  pick(machine: string | undefined): AgentConn {
    if (machine) {
      const conn = this.agents.get(machine);
      if (conn) return conn;
      throw new ToolError(`Machine '${machine}' is not connected. ${this.#connectedList()}`);
    }
    const [only, ...others] = this.agents.values();
    if (only && others.length === 0) return only;
    if (!only) throw new ToolError(this.noMachineMessage);
    throw new ToolError(`Several machines are connected; say which one with "machine". ${this.#connectedList()}`);
  }

  /** Sends one request and resolves with the agent's validated result. Never re-sent (at most once): if the
   *  socket goes, the deadline passes or `signal` aborts, the call fails and the agent is told to cancel. */
  call<O extends AgentOp>(conn: AgentConn, op: O, args: OpArgs<O>, options: CallOptions): Promise<OpResult<O>> {
    const { deadlineMs, signal, onProgress, onAsk, onQuiet } = options;
    const id = randomUUID();
    // The relay names a command before it runs, so that a call whose link dies can still tell the model which one.
    const commandId = op === "run_shell_command" ? `${randomBytes(6).toString("hex")}@${conn.machine}` : undefined;
    return new Promise<OpResult<O>>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        conn.pending.delete(id);
      };
      const giveUp = (error: ToolError) => {
        cleanup();
        send(conn.ws, { type: "cancel", id });
        reject(error);
      };
      const onAbort = () => giveUp(new ToolError("The call was cancelled.", "cancelled"));
      const armDeadline = (ms: number) =>
        setTimeout(() => giveUp(new ToolError(`Machine '${conn.machine}' did not answer within ${Math.round(ms / 1000)} s.`)), ms);
      let timer = armDeadline(deadlineMs);
      // A question to the owner stops the clock: the call then has until the question expires, and its own time after.
      // One question per call: an agent that asks again (a bug, or a hostile agent flooding the owner) is not heard.
      let askedAlready = false;
      const asked = (ask: AskFrame) => {
        if (askedAlready) return;
        askedAlready = true;
        if (!onAsk) return void this.decide(conn, id, { approve: false, reason: "this call cannot wait for an approval", by: "the relay" });
        clearTimeout(timer);
        timer = armDeadline(ask.expires_in_ms + deadlineMs);
        onAsk(ask);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      conn.pending.set(id, {
        op,
        commandId,
        resolve: (value) => (cleanup(), resolve(value as OpResult<O>)),
        reject: (error) => (cleanup(), reject(error)),
        onProgress,
        onAsk: asked,
        onQuiet,
      });
      if (signal?.aborted) return onAbort();
      if (!send(conn.ws, { type: "request", id, op, args, progress: onProgress !== undefined, ...(commandId && { command_id: commandId }) })) {
        conn.pending.get(id)?.reject(new ToolError(`Could not send to machine '${conn.machine}'; it may be disconnecting.`));
      }
    });
  }

  /** Passes the owner's decision on a call to its agent; false when the call is no longer waiting on that link
   *  (answered, cancelled, or the agent went away), so nothing was sent. */
  decide(conn: AgentConn, id: string, decision: Decision): boolean {
    if (!conn.pending.has(id) || this.agents.get(conn.machine) !== conn) return false;
    return send(conn.ws, { type: "decision", id, ...decision });
  }

  /** Closes sockets that fell silent (nothing heard for HEARTBEAT_TIMEOUT_MS) or never said hello, and pings an
   *  admitted agent that has been quiet for longer than its pings should allow (an older agent pings every 5 s
   *  only; its pong keeps it). Run every HEARTBEAT_CHECK_MS (server.ts): a half-dead link is closed within ~7 s. */
  sweep(now = Date.now()): void {
    for (const ws of this.sockets) {
      const silentMs = now - ws.data.lastHeard;
      if (!ws.data.agent && !ws.data.enrolment) {
        // Not admitted yet: the hello (and proof) timeout applies, not the heartbeat's.
        if (now - ws.data.openedAt > HELLO_TIMEOUT_MS) this.#refuse(ws, CloseCode.protocolError, ws.data.challenge ? "no identity proof" : "no hello");
      } else if (silentMs > HEARTBEAT_TIMEOUT_MS) {
        log("warn", "agent link silent; closing", { machine: ws.data.agent?.machine, address: ws.data.address });
        ws.close(CloseCode.heartbeatTimeout, "heartbeat timeout");
        ws.terminate();
      } else if (silentMs > HEARTBEAT_INTERVAL_MS + HEARTBEAT_CHECK_MS) {
        send(ws, { type: "ping", t: now });
      }
      if (ws.data.agent && silentMs > UNANSWERED_PING_MS) for (const call of ws.data.agent.pending.values()) call.onQuiet?.(quietMessage(ws.data.agent, now));
    }
  }

  /** The owner disconnects a machine from the dashboard: its socket is closed and it is turned away for
   *  `holdMs`, so it does not simply reconnect a second later. False when it is not connected. */
  disconnect(machine: string, holdMs: number): boolean {
    const conn = this.agents.get(machine);
    this.#heldOff.set(machine, Date.now() + holdMs);
    if (!conn) return false;
    log("warn", "agent disconnected by the owner", { machine, address: conn.ws.data.address, hold_s: Math.round(holdMs / 1000) });
    conn.ws.close(CloseCode.forbidden, "disconnected by the owner");
    return true;
  }

  /** Cuts off agents whose per-machine token is no longer among `validHashes` (revoked). */
  dropRevoked(validHashes: Set<string>): void {
    for (const ws of this.sockets) {
      const { credential } = ws.data;
      if (credential.kind !== "machine" || validHashes.has(credential.tokenHash)) continue;
      log("warn", "agent token revoked; disconnecting", { machine: credential.machine, address: ws.data.address });
      ws.close(CloseCode.forbidden, "agent token revoked");
    }
  }

  /** Server shutdown: fails every call still waiting on an agent, so its client gets an answer before the relay
   *  goes, then closes every agent socket (agents reconnect with backoff). */
  closeAll(): void {
    this.#stopping = true;
    for (const conn of this.agents.values()) {
      this.#failPending(conn, `The relay is restarting; the operation on '${conn.machine}' may or may not have completed. Try again in a few seconds.`);
    }
    for (const ws of this.sockets) ws.close(CloseCode.goingAway, "server restarting");
  }

  /** A hello: refused at once in another protocol version; with a public key, answered with a challenge (the agent
   *  is registered only once it proves it holds the key); without one (an agent older than keys), judged as it is. */
  #hello(ws: AgentSocket, hello: HelloFrame): void {
    if (hello.protocol_version !== PROTOCOL_VERSION) {
      return this.#refuse(ws, CloseCode.unsupportedVersion, `protocol ${hello.protocol_version} unsupported; this relay speaks ${PROTOCOL_VERSION}`);
    }
    if (hello.purpose === "enroll" && !this.enrolments) return this.#refuse(ws, CloseCode.protocolError, "this relay does not enrol owner passkeys");
    if (hello.purpose === "enroll" && hello.public_key === undefined) {
      return this.#refuseIdentity(ws, hello.machine, "an enrolment must prove the machine's key: update the agent", "an enrolment without a key");
    }
    if (hello.public_key === undefined) return this.#admit(ws, hello, undefined);
    const nonce = randomBytes(32).toString("base64url");
    ws.data.challenge = { hello, nonce };
    send(ws, { type: "challenge", nonce });
  }

  /** The answer to the challenge: only a signature by the hello's key over this connection's nonce proves it. */
  #proven(ws: AgentSocket, { hello, nonce }: { hello: HelloFrame; nonce: string }, proof: ProofFrame): void {
    const publicKey = hello.public_key!; // a challenge is sent only for a hello with a key
    if (!proofVerifies(hello.machine, publicKey, nonce, proof.signature)) {
      return this.#refuseIdentity(ws, hello.machine, "the identity proof does not verify", "a signature that does not verify");
    }
    ws.data.challenge = undefined;
    this.#admit(ws, hello, publicKey);
  }

  /** Registers the agent under its machine name, unless the owner turned the name away, its token is for another
   *  name, or the name belongs to another agent's key. `publicKey` is the key it proved, if any. */
  #admit(ws: AgentSocket, hello: HelloFrame, publicKey: string | undefined): void {
    if (hello.purpose === "enroll") return this.#admitEnrolment(ws, hello, publicKey!); // an enroll hello always has a key
    const heldUntil = this.#heldOff.get(hello.machine) ?? 0;
    if (heldUntil > Date.now()) {
      return this.#refuse(ws, CloseCode.forbidden, `disconnected by the owner; turned away until ${new Date(heldUntil).toISOString()}`);
    }
    this.#heldOff.delete(hello.machine);
    if (this.#tokenRefused(ws, hello)) return;
    const { credential } = ws.data;
    const previous = this.agents.get(hello.machine);
    const verdict = judgeIdentity(this.keys.pinnedKey(hello.machine), publicKey, previous);
    if (!verdict.admit) return this.#refuseIdentity(ws, hello.machine, verdict.reason, verdict.detail);
    const conn: AgentConn = { ws, machine: hello.machine, hello, publicKey, connectedAt: new Date(), pending: new Map() };
    // Registered before the old socket is closed: Bun may run its close handler inside close(), and that handler
    // must find it already replaced (else it would unregister the name and audit a disconnect that did not happen).
    ws.data.agent = conn;
    this.agents.set(hello.machine, conn);
    this.presence.connected(hello.machine);
    this.#cameBack(hello.machine);
    if (previous) {
      this.#failPending(previous, `Machine '${hello.machine}' was replaced by a new connection before answering.`);
      previous.ws.close(CloseCode.replaced, "replaced: this machine connected again (same key)");
      log("warn", "agent replaced by a new connection of the same machine", { machine: hello.machine, old: previous.ws.data.address, new: ws.data.address });
      this.audit.event("agent_replaced", { machine: hello.machine, address: ws.data.address });
    }
    if (publicKey && this.keys.connected(hello.machine, publicKey)) {
      log("info", "machine key pinned: from now on only this agent may use the name", { machine: hello.machine, public_key: publicKey });
      this.audit.event("machine_key_pinned", { machine: hello.machine, address: ws.data.address, detail: publicKey });
    }
    send(ws, { type: "welcome", machine: hello.machine, server_version: VERSION, notice: this.#sharedTokenNotice(credential, hello.machine), features: [...RELAY_FEATURES] });
    const how = credential.kind === "machine" ? "machine token" : "shared token (compatibility)";
    log("info", "agent connected", { machine: hello.machine, version: hello.agent_version, os: hello.os, address: ws.data.address, credential: how, key: publicKey ? "proved" : "none (older agent)" });
    this.audit.event("agent_connected", { machine: hello.machine, address: ws.data.address, detail: `${hello.agent_version} ${hello.os} ${hello.arch}` });
  }

  /** Whether the connection's token may not speak for the hello's machine name (refused and audited if so). */
  #tokenRefused(ws: AgentSocket, hello: HelloFrame): boolean {
    const { credential } = ws.data;
    // A per-machine token admits only its machine: whoever holds it cannot take over another machine's name.
    if (credential.kind === "machine" && credential.machine !== hello.machine) {
      this.audit.event("auth_refused", { machine: hello.machine, address: ws.data.address, detail: `agent token of '${credential.machine}' used as '${hello.machine}'` });
      this.#refuse(ws, CloseCode.forbidden, `this agent token is for machine '${credential.machine}'`);
      return true;
    }
    // And the shared token cannot take a name that has its own token: it would replace the real machine's agent.
    if (credential.kind === "shared" && this.hasOwnToken(hello.machine)) {
      this.audit.event("auth_refused", { machine: hello.machine, address: ws.data.address, detail: `shared agent token used as '${hello.machine}', which has its own token` });
      this.#refuse(ws, CloseCode.forbidden, `machine '${hello.machine}' has its own agent token; connect with that one`);
      return true;
    }
    return false;
  }

  /** An enroll connection (`enroll-owner`), admitted by the same token and key checks as the machine's own link, but
   *  not registered: the machine's live link, if any, is untouched, and no key is pinned by it. A machine the owner
   *  turned away for a while may still enrol: its page does nothing without the owner. */
  #admitEnrolment(ws: AgentSocket, hello: HelloFrame, publicKey: string): void {
    if (this.#tokenRefused(ws, hello)) return;
    const verdict = judgeIdentity(this.keys.pinnedKey(hello.machine), publicKey, this.agents.get(hello.machine));
    if (!verdict.admit) return this.#refuseIdentity(ws, hello.machine, verdict.reason, verdict.detail);
    const { machine } = hello;
    ws.data.enrolment = {
      machine,
      address: ws.data.address,
      dialedOrigin: ws.data.origin,
      send: (frame) => send(ws, frame),
      close: (code, reason) => this.#refuse(ws, code, reason),
    };
    send(ws, { type: "welcome", machine, server_version: VERSION, features: [...RELAY_FEATURES] });
    log("info", "enrolment connection admitted", { machine, address: ws.data.address });
  }

  /** A frame on an enroll connection: the enrolment's begin and result; nothing else is heard there. */
  #enrolFrame(ws: AgentSocket, link: EnrolLink, frame: AgentFrame): void {
    if (frame.type === "enroll_begin") return this.enrolments?.begin(link, frame);
    if (frame.type === "enroll_result") return this.enrolments?.result(link, frame);
    if (frame.type === "pong") return;
    this.#refuse(ws, CloseCode.protocolError, `'${frame.type}' has no place on an enrolment connection`);
  }

  /** Refuses an agent that cannot prove it is the machine whose name it asks for. Logged and audited once per
   *  machine, address and cause in ten minutes: a refused agent retries every 30 s, and so may an impostor. */
  #refuseIdentity(ws: AgentSocket, machine: string, reason: string, detail: string): void {
    if (this.#identityRefusalRecorded.due(`${machine}\n${ws.data.address}\n${detail}`)) {
      log("warn", "agent refused: it cannot prove it is this machine", { machine, address: ws.data.address, reason: detail });
      this.audit.event("auth_refused", { machine, address: ws.data.address, detail: `identity: ${detail}` });
    }
    ws.close(CloseCode.identityRefused, reason);
  }

  /** The shared agent token stays only for compatibility: say so in the relay's log (once a day per machine) and
   *  in the agent's (its welcome's notice, which the agent logs once per run: its log may be all its owner reads). */
  #sharedTokenNotice(credential: AgentCredential, machine: string): string | undefined {
    if (credential.kind !== "shared") return undefined;
    const advice = `give it its own token: bun run server.ts agent-token create ${machine}`;
    if (this.#sharedTokenWarned.due(machine)) log("warn", `agent uses the shared AGENT_TOKEN, kept only for compatibility: ${advice}`, { machine });
    return `this agent uses the relay's shared agent token, kept only for compatibility; ask the relay's owner to ${advice}, and use that token here`;
  }

  #settle(conn: AgentConn, id: string, outcome: { value: unknown } | { error: AgentError }): void {
    const call = conn.pending.get(id);
    if (!call) return; // cancelled or timed out already; a late answer is dropped
    if ("error" in outcome) {
      const { code, message, quote } = outcome.error;
      return call.reject(new ToolError(message, code === "policy_denied" || code === "not_approved" ? "refused" : "error", code, quote));
    }
    const parsed = opSchemas(call.op).result.safeParse(outcome.value);
    if (!parsed.success) {
      log("warn", "agent sent a malformed result", { machine: conn.machine, op: call.op });
      return call.reject(new ToolError(`Machine '${conn.machine}' sent a malformed answer; is its agent up to date?`));
    }
    call.resolve(parsed.data);
  }

  /** Fails every call waiting on `conn` with `message`, and for a command the id the relay gave it: whether it ran is
   *  unknown, and the model can ask with get_command_output once the machine is back. */
  #failPending(conn: AgentConn, message: string): void {
    for (const call of conn.pending.values()) {
      const check = call.commandId ? ` Its command_id is ${call.commandId}: check with get_command_output once '${conn.machine}' is back.` : "";
      call.reject(new LinkLost(message + check));
    }
  }

  /** Machines the previous relay was serving when it stopped (a restart or a crash): they redial within seconds, so
   *  calls for them wait, as for a machine that dropped a moment ago, for the grace from now. */
  expectBack(machines: string[]): void {
    for (const machine of machines) this.#wentAway(machine);
    if (machines.length > 0 && this.reconnectGraceMs > 0) {
      log("info", "waiting for the machines connected when the relay last stopped", { machines: machines.slice(0, 20).join(", "), count: machines.length, grace_s: this.reconnectGraceMs / 1000 });
    }
  }

  /** A registered machine's link ended (not on purpose): remembered for the grace, so calls for it wait. */
  #wentAway(machine: string): void {
    if (this.reconnectGraceMs <= 0) return;
    const now = Date.now();
    this.#recentlyGone.delete(machine); // re-added at the end: the map stays in order of leaving
    this.#recentlyGone.set(machine, now);
    for (const [name, at] of this.#recentlyGone) {
      if (now - at < this.reconnectGraceMs && this.#recentlyGone.size <= RECENTLY_GONE_MAX) break;
      this.#recentlyGone.delete(name);
    }
  }

  /** When `machine`'s link ended, if that was less than the grace ago and the owner has not turned it away. */
  #goneAt(machine: string): number | undefined {
    const at = this.#recentlyGone.get(machine);
    if (at === undefined) return undefined;
    if (Date.now() - at >= this.reconnectGraceMs || (this.#heldOff.get(machine) ?? 0) > Date.now()) {
      this.#recentlyGone.delete(machine);
      return undefined;
    }
    return at;
  }

  /** The machines whose link ended within the grace, the longest gone first. */
  #stillGone(): string[] {
    return [...this.#recentlyGone.keys()].filter((name) => this.#goneAt(name) !== undefined);
  }

  /** `machine` registered: calls waiting for it go on. */
  #cameBack(machine: string): void {
    this.#recentlyGone.delete(machine);
    const waiters = this.#returnWaiters.get(machine);
    if (!waiters) return;
    this.#returnWaiters.delete(machine);
    for (const wake of waiters) wake();
  }

  #refuse(ws: AgentSocket, code: number, reason: string): void {
    log("warn", "closing agent socket", { address: ws.data.address, reason });
    ws.close(code, reason);
  }

  #connectedList(): string {
    const names = [...this.agents.keys()].sort();
    return names.length ? `Connected: ${names.join(", ")}.` : this.noMachineMessage;
  }
}

/** What a call waiting on a quiet link hears. */
const quietMessage = (conn: AgentConn, now: number) => `waiting for ${conn.machine}: its link has been silent for ${Math.round((now - conn.ws.data.lastHeard) / 1000)} s`;

const NO_MACHINE_MESSAGE =
  "No machine is connected. Start an agent on the machine: RELAY_URL=wss://<this server>/ws/agent AGENT_TOKEN=<token> code-remote-agent";

/** Sends one frame; false when Bun dropped it (the socket is closing). */
function send(ws: AgentSocket, frame: ServerFrame): boolean {
  return ws.send(JSON.stringify(frame)) !== 0;
}
