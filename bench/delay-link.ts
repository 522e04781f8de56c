// A network link with a delay, emulated in user space for a kernel without `tc netem`: a TCP listener on 127.0.0.1
// that forwards each connection to a target and hands every chunk, in each direction, to the other side a fixed
// time after it arrived (20 ms each way makes a 40 ms round trip), in order. It can be cut and restored as a path
// that silently drops packets would be: nothing passes while cut, and what was sent meanwhile arrives after the
// restore, as TCP's retransmissions would bring it. Self-contained (node:net only), for the bench and for tests.
//
// What it does not emulate: loss, jitter, reordering, and the ACK clock. Each side's kernel talks to this process
// on loopback, which acknowledges at once, so a stall a real path shows from Nagle's algorithm meeting delayed ACKs,
// or from a congestion window that has to grow, is not seen here. A new connection does pay the handshake's round
// trip: its first bytes wait for it. After a cut, what was held arrives one delay after the restore, which is
// optimistic: real retransmission timers back off, so after a long outage TCP may take seconds more to resend.

import * as net from "node:net";

export interface DelayLinkOptions {
  /** Where every connection goes: host (default 127.0.0.1) and port. */
  target: { host?: string; port: number };
  /** Delay of each direction, in milliseconds: a 40 ms round trip is 20. */
  oneWayMs: number;
}

/** The most bytes one direction of one connection holds (read from the sender, not yet handed on) before it stops
 *  reading from the sender, as a full TCP window stops it: memory stays bounded whatever the sender does. 16 MiB is
 *  well above what the bench has in flight (100 MB/s for 20 ms is 2 MB), so it never caps the rate. */
const WINDOW_BYTES = 16 * 1024 * 1024;
/** Timers count whole milliseconds, fire a few tenths late (0.2-0.3 ms in Bun 1.4.5 here) and take at least 1 ms
 *  when set to 0, so each is set this much early, rounded to the nearest millisecond, and whatever is due within
 *  TIMER_SLACK_MS when it fires goes at once, never waiting for a second timer. Measured with an echo behind a link of
 *  20 ms each way: 41.2 ms a round trip at p50, of which about 0.5 ms is timers and the rest this process waking up. */
const TIMER_LATE_MS = 0.3;
const TIMER_SLACK_MS = 1;

/** What a connection's two lanes need to know of their link. */
interface LinkState {
  readonly oneWayMs: number;
  readonly isCut: boolean;
}

/** A chunk of bytes or the sender's close (`end`: a FIN; `reset`: the sender's socket failed), due at `dueAt`. */
type Item = { dueAt: number; chunk: Buffer } | { dueAt: number; close: "end" | "reset" };

/** One direction of one connection: what `from` sent, delivered to `to` when due, in order. */
class Lane {
  readonly #queue: Item[] = [];
  /** Bytes read from `from` and not yet handed to `to`. */
  #heldBytes = 0;
  #pausedSender = false;
  /** `to` asked to wait for its drain: nothing more is handed to it until then. */
  #blocked = false;
  /** Nothing leaves before this: a new connection's handshake, or a restore. */
  #freeAt = 0;
  #timer?: ReturnType<typeof setTimeout>;
  to?: net.Socket;

  constructor(
    readonly link: LinkState,
    readonly from: net.Socket,
  ) {}

  get heldBytes(): number {
    return this.#heldBytes;
  }

  send(chunk: Buffer): void {
    this.#queue.push({ dueAt: this.#departure() + this.link.oneWayMs, chunk });
    this.#heldBytes += chunk.length;
    if (this.#heldBytes >= WINDOW_BYTES && !this.#pausedSender) {
      this.#pausedSender = true;
      this.from.pause();
    }
    this.pump();
  }

  close(how: "end" | "reset"): void {
    this.#queue.push({ dueAt: this.#departure() + this.link.oneWayMs, close: how });
    this.pump();
  }

  /** Nothing leaves before `at`, and nothing queued arrives before `at` plus the delay: a handshake that begins
   *  now (first bytes after one round trip), or a restore (what was held goes out again). */
  holdUntil(at: number): void {
    this.#freeAt = Math.max(this.#freeAt, at);
    for (const item of this.#queue) item.dueAt = Math.max(item.dueAt, at + this.link.oneWayMs);
  }

  /** Hands on everything due, then sleeps until the next item is; does nothing while the link is cut. */
  pump(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#queue.length > 0 && this.to && !this.#blocked && !this.link.isCut) {
      const waitMs = this.#queue[0]!.dueAt - performance.now();
      if (waitMs > TIMER_SLACK_MS) {
        this.#timer = setTimeout(() => this.pump(), Math.round(waitMs - TIMER_LATE_MS));
        return;
      }
      this.#deliver(this.#queue.shift()!, this.to);
    }
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#queue.length = 0;
  }

  /** When a chunk leaves: now, or once the handshake or the restore lets it. */
  #departure(): number {
    return Math.max(performance.now(), this.#freeAt);
  }

  #deliver(item: Item, to: net.Socket): void {
    if (!("chunk" in item)) return void (item.close === "end" ? to.end() : to.resetAndDestroy());
    this.#heldBytes -= item.chunk.length;
    if (this.#pausedSender && this.#heldBytes < WINDOW_BYTES) {
      this.#pausedSender = false;
      this.from.resume();
    }
    if (to.destroyed || to.writableEnded) return; // the receiver is gone: the bytes are lost, as on a reset
    if (to.write(item.chunk)) return;
    this.#blocked = true;
    to.once("drain", () => {
      this.#blocked = false;
      this.pump();
    });
  }
}

/** One client connection and, once the path is open, its connection to the target. */
class Connection {
  readonly toTarget: Lane;
  toClient?: Lane;
  upstream?: net.Socket;

  constructor(
    readonly link: LinkState,
    readonly client: net.Socket,
    readonly target: { host: string; port: number },
    readonly forget: (conn: Connection) => void,
  ) {
    this.toTarget = new Lane(link, client);
    client.setNoDelay(true);
    client.on("data", (chunk: Buffer) => this.toTarget.send(chunk));
    client.on("end", () => this.toTarget.close("end"));
    client.on("error", () => this.toTarget.close("reset"));
    client.on("close", () => this.#closed());
  }

  /** Connects to the target; the client's first bytes reach it after the handshake's round trip. */
  open(): void {
    const upstream = net.connect({ host: this.target.host, port: this.target.port, allowHalfOpen: true, noDelay: true });
    const toClient = new Lane(this.link, upstream);
    toClient.to = this.client;
    upstream.on("data", (chunk: Buffer) => toClient.send(chunk));
    upstream.on("end", () => toClient.close("end"));
    upstream.on("error", () => toClient.close("reset"));
    upstream.on("close", () => this.#closed());
    this.upstream = upstream;
    this.toClient = toClient;
    this.toTarget.to = upstream;
    this.toTarget.holdUntil(performance.now() + 2 * this.link.oneWayMs);
    this.toTarget.pump();
  }

  /** The link came back: a connection made during the cut opens now, unless its client gave up meanwhile (it never
   *  got an answer to its SYN, so it never reaches the target); everything held goes out one delay from now. */
  restored(now: number): void {
    if (!this.upstream) {
      if (this.client.destroyed || this.client.readableEnded) return this.dispose();
      return this.open();
    }
    for (const lane of [this.toTarget, this.toClient!]) {
      lane.holdUntil(now);
      lane.pump();
    }
  }

  dispose(): void {
    this.toTarget.dispose();
    this.toClient?.dispose();
    this.client.destroy();
    this.upstream?.destroy();
    this.forget(this);
  }

  /** Both sockets closed, or the client gave up on a connection made during a cut: nothing is left to carry. */
  #closed(): void {
    if (this.client.destroyed && (this.upstream?.destroyed ?? true)) this.dispose();
  }
}

/** A delayed TCP link in front of a target, listening on 127.0.0.1 (`port`); `await using` closes it and every
 *  connection through it:
 *
 *    await using link = await DelayLink.start({ target: { port: relay.port }, oneWayMs: 20 });
 *    // dial 127.0.0.1:${link.port} instead of the relay; link.cut() ... link.restore() */
export class DelayLink implements LinkState, AsyncDisposable {
  readonly oneWayMs: number;
  readonly #target: { host: string; port: number };
  readonly #server: net.Server;
  readonly #connections = new Set<Connection>();
  #cut = false;
  #accepted = 0;

  private constructor(options: DelayLinkOptions) {
    this.oneWayMs = options.oneWayMs;
    this.#target = { host: options.target.host ?? "127.0.0.1", port: options.target.port };
    this.#server = net.createServer({ allowHalfOpen: true }, (socket) => this.#accept(socket));
  }

  /** Starts a link on an ephemeral port of 127.0.0.1. */
  static async start(options: DelayLinkOptions): Promise<DelayLink> {
    const link = new DelayLink(options);
    await new Promise<void>((resolve, reject) => {
      link.#server.once("error", reject);
      link.#server.listen(0, "127.0.0.1", () => resolve());
    });
    return link;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  get isCut(): boolean {
    return this.#cut;
  }

  /** Connections accepted since the start, those made while cut included. */
  get accepted(): number {
    return this.#accepted;
  }

  /** Bytes read from a sender and not yet handed on, over every connection and direction: what is in flight. */
  get heldBytes(): number {
    let bytes = 0;
    for (const conn of this.#connections) bytes += conn.toTarget.heldBytes + (conn.toClient?.heldBytes ?? 0);
    return bytes;
  }

  /** Black-holes the path: nothing passes either way, nobody is told (no FIN, no RST), and a new connection is
   *  accepted but reaches the target only after the restore. */
  cut(): void {
    this.#cut = true;
  }

  /** Opens the path again: what was held arrives one delay from now, in order, closes included. */
  restore(): void {
    if (!this.#cut) return;
    this.#cut = false;
    const now = performance.now();
    for (const conn of [...this.#connections]) conn.restored(now);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    // Stop accepting first, so that no connection arrives after the others are ended (close waits for it).
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const conn of [...this.#connections]) conn.dispose();
    await closed;
  }

  #accept(socket: net.Socket): void {
    this.#accepted++;
    const conn = new Connection(this, socket, this.#target, (c) => this.#connections.delete(c));
    this.#connections.add(conn);
    if (!this.#cut) conn.open();
  }
}
