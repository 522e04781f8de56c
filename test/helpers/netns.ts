// Emulated networks for tests: a network namespace made by the test, linked to the root namespace (where the relay
// and the clients run) by a veth pair on a /30 of 10.77.0.0/16, and an agent started inside it with
// `ip netns exec`. The link can be cut and restored: a cut is an nftables table inside the namespace that drops every
// frame on the namespace's end of the veth, both ways (netdev ingress and egress hooks, ARP included), so the link is
// half-dead: no RST, no FIN, no error to either side's sockets; the sender's packets simply vanish, as behind a dead
// NAT or on a train. Loss is another nftables table on the same device that drops a random share of the frames each
// way (`numgen random`). (This machine has no netem, so delay, when a test needs it, is done in user space.) An MCP
// client can run in a namespace of its own too (startClientIn), reaching the relay across its own veth.
//
// The namespace's own outgoing frames are not dropped but forwarded into a sink (a veth inside the namespace whose
// peer is down, where they vanish): a `drop` in the egress hook is reported to the sending socket as local congestion
// (NET_XMIT_DROP), and TCP then retries every 500 ms without backing off (TCP_RESOURCE_PROBE_INTERVAL), which no real
// network does. Forwarded, the frame has left as far as TCP knows, so it retransmits as when the loss is beyond the
// machine: data after ~200 ms, doubling; a SYN every 1 s for four tries (Linux 6.5+'s tcp_syn_linear_timeouts), then
// doubling. Frames coming in are dropped at ingress, after their sender's veth took them: lost beyond the sender.
//
// Everything made here is named uniquely per run (the process id and random bytes), lives only in the namespaces
// and veths this file creates (traffic goes nowhere else), and is removed by dispose, by removeAll() (for an
// afterAll), or, as a last resort, when the test process exits. Every wait is bounded.

import { randomBytes } from "node:crypto";
import * as path from "node:path";
import type { CallLine } from "./client-process.ts";
import { agentSettings, freePort, minimalEnv, NEUTRAL_CWD, OutputLog, ROOT, spawnProgram, type Agent, type AgentOptions, type Relay, type RelayOptions } from "./processes.ts";

/** iproute2's ip and nftables' nft, found on PATH or in the sbin directories (a non-root PATH may lack them). */
const SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin";
const IP_FOUND = Bun.which("ip") ?? Bun.which("ip", { PATH: SBIN_PATH });
const NFT_FOUND = Bun.which("nft") ?? Bun.which("nft", { PATH: SBIN_PATH });
const IP = IP_FOUND ?? "ip";
const NFT = NFT_FOUND ?? "nft";
const BUN = process.execPath;

/** Namespaces made by this file are named `crnet-<pid>-<hex>`; veths `cr<hex>h` (root side) and `cr<hex>n` (inside). */
const NS_PREFIX = "crnet-";
/** The nftables table that is a cut, inside the namespace only. */
const CUT_TABLE = "code_remote_cut";
/** The nftables table that is random loss, inside the namespace only; apart from the cut's, so either comes and goes
 *  without the other. */
const LOSS_TABLE = "code_remote_loss";
/** Bound on any one ip/nft command. */
const COMMAND_TIMEOUT_MS = 10_000;

interface Ran {
  ok: boolean;
  stdout: string;
  stderr: string;
}

/** Runs a command (ip, nft) to completion, bounded in time; never throws. */
function run(argv: string[], input?: string): Ran {
  try {
    const r = Bun.spawnSync(argv, { stdin: input === undefined ? "ignore" : Buffer.from(input), stdout: "pipe", stderr: "pipe", timeout: COMMAND_TIMEOUT_MS });
    return { ok: r.exitCode === 0, stdout: r.stdout.toString(), stderr: r.stderr.toString().trim() };
  } catch (e) {
    return { ok: false, stdout: "", stderr: String(e) };
  }
}

/** Runs a command that must work; throws with its stderr otherwise. */
function must(argv: string[], input?: string): string {
  const r = run(argv, input);
  if (!r.ok) throw new Error(`${argv.join(" ")} failed: ${r.stderr || "no message"}`);
  return r.stdout;
}

/** Why namespaces cannot be used here (so a suite skips with that message), or undefined when they can: root,
 *  iproute2's ip and nft installed, and a probe namespace with a veth and a netdev egress hook actually made (and
 *  removed again). Cached: probed once per process. */
let support: string | undefined | null = null;
export function namespacesUnavailable(): string | undefined {
  if (support !== null) return support;
  support = probe();
  return support;
}

function probe(): string | undefined {
  if (process.platform !== "linux") return `network namespaces need Linux (this is ${process.platform})`;
  const uid = process.getuid?.() ?? -1;
  if (uid !== 0) return `network namespaces need root (this is uid ${uid}); CI runs as root`;
  if (!IP_FOUND) return "iproute2's `ip` is not installed";
  if (!NFT_FOUND) return "`nft` (nftables) is not installed";
  sweepStale();
  const hex = randomBytes(4).toString("hex");
  const ns = `${NS_PREFIX}probe-${process.pid}-${hex}`;
  const added = run([IP, "netns", "add", ns]);
  if (!added.ok) return `\`ip netns add\` failed: ${added.stderr || "no message"}`;
  try {
    const veth = run([IP, "link", "add", `cr${hex}h`, "type", "veth", "peer", "name", `cr${hex}n`, "netns", ns]);
    if (!veth.ok) return `a veth pair could not be made: ${veth.stderr}`;
    const sink = run([IP, "-n", ns, "link", "add", `cr${hex}s`, "type", "veth", "peer", "name", `cr${hex}z`]);
    if (!sink.ok) return `a veth pair could not be made inside a namespace: ${sink.stderr}`;
    const table = run([IP, "netns", "exec", ns, NFT, "-f", "-"], cutRules(`cr${hex}n`, `cr${hex}s`));
    if (!table.ok) return `nft could not hook a veth's ingress and egress and forward from egress (netdev family, Linux 5.16+): ${table.stderr}`;
    return undefined;
  } finally {
    run([IP, "netns", "del", ns]);
    run([IP, "link", "del", `cr${hex}h`]);
  }
}

/** Removes the namespaces (and veths) that an earlier run of this file left behind when it was killed before it
 *  could clean up (SIGKILL, SIGTERM): only names of this file's pattern whose creating process is gone. */
function sweepStale(): void {
  for (const name of run([IP, "netns", "list"]).stdout.split("\n").map((l) => l.split(" ")[0]!)) {
    const match = /^crnet-(?:probe-)?(\d+)-([0-9a-f]{8})$/.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    for (const inside of run([IP, "netns", "pids", name]).stdout.split("\n").map(Number).filter((p) => p > 0)) {
      try {
        process.kill(inside, "SIGKILL"); // an agent of that run, which outlived it
      } catch {}
    }
    run([IP, "netns", "del", name]);
    run([IP, "link", "del", `cr${match[2]}h`]);
    console.warn(`netns: removed ${name}, left behind by an earlier run (process ${pid}, gone)`);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Drops every frame on `device`, both ways, before anything else sees it (priority -500): those coming in at
 *  ingress, those going out by forwarding them into `sink` (see the top of the file: so the sender backs off as on a
 *  real network). With `keepArp`, ARP still passes (a dead upstream behind a live Wi-Fi: the neighbour answers,
 *  nothing beyond it does, so a dial hangs in SYN_SENT instead of failing with "no route to host" after a few
 *  seconds). */
function cutRules(device: string, sink: string, keepArp = false): string {
  const arp = keepArp ? " ether type arp accept;" : "";
  return [
    `table netdev ${CUT_TABLE} {`,
    `  chain in { type filter hook ingress device "${device}" priority -500; policy drop;${arp} }`,
    `  chain out { type filter hook egress device "${device}" priority -500;${arp} fwd to "${sink}"; }`,
    `}`,
  ].join("\n");
}

/** Drops `percent` % of the frames on `device` at random, each way (going out, into `sink`, as cutRules does),
 *  counting what passes and what is dropped. After the cut's table (priority -400 against -500), so a cut link
 *  drops everything whatever the loss. */
function lossRules(device: string, sink: string, percent: number): string {
  const lose = `counter; numgen random mod 100 < ${percent} counter`;
  return [
    `table netdev ${LOSS_TABLE} {`,
    `  chain in { type filter hook ingress device "${device}" priority -400; ${lose} drop; }`,
    `  chain out { type filter hook egress device "${device}" priority -400; ${lose} fwd to "${sink}"; }`,
    `}`,
  ].join("\n");
}

/** Namespaces and root-side veths made by this process and not yet removed (for the exit handler and leftovers). */
const live = new Map<string, NetNs>();
/** Every namespace and root-side veth this process made, removed or not (for the final check). */
const made: { name: string; hostIf: string }[] = [];
/** /30 networks handed out by this process, so that concurrent tests never share one. */
const usedNets = new Set<string>();

export interface NetNs extends AsyncDisposable {
  /** The namespace's name, for `ip netns exec`. */
  readonly name: string;
  /** The veth's root-namespace end, and its end inside the namespace. */
  readonly hostIf: string;
  readonly nsIf: string;
  /** The root namespace's address on the link (where the relay is reached), and the namespace's. */
  readonly hostAddress: string;
  readonly nsAddress: string;
  /** Whether the link is cut now. */
  readonly isCut: boolean;
  /** `argv` run inside the namespace. */
  exec(argv: string[]): string[];
  /** Drops everything on the link, both ways (ARP too, unless `keepArp`); returns the time (Date.now()) it took
   *  effect. */
  cut(options?: { keepArp?: boolean }): number;
  /** Lets the link carry traffic again; returns the time (Date.now()) it took effect. */
  restore(): number;
  /** Drops `percent` % of the frames on the link at random, each way (ARP too, as a lossy radio would); 0 lifts it. */
  setLoss(percent: number): void;
  /** Frames the link carried and dropped, both ways together, since the loss was set. */
  lossCounts(): { frames: number; dropped: number };
  /** Ends the processes still inside the namespace (SIGKILL, by pid), deletes the namespace and the veth, and
   *  returns what is still there afterwards (empty when all is gone). Idempotent. */
  remove(): Promise<string[]>;
}

/** A free /30 in 10.77.0.0/16: none of this process's, and no address or route of the machine's in it. */
function pickNetwork(): { host: string; inside: string; net: string } {
  const taken = must([IP, "-4", "-o", "addr", "show"]) + must([IP, "-4", "route", "show", "table", "all"]);
  for (let attempt = 0; attempt < 200; attempt++) {
    const third = randomBytes(1)[0]!;
    const fourth = (randomBytes(1)[0]! % 64) * 4;
    const net = `10.77.${third}.${fourth}`;
    const host = `10.77.${third}.${fourth + 1}`;
    const inside = `10.77.${third}.${fourth + 2}`;
    if (usedNets.has(net)) continue;
    if ([net, host, inside].some((a) => new RegExp(`\\b${a.replaceAll(".", "\\.")}\\b`).test(taken))) continue;
    usedNets.add(net);
    return { host, inside, net };
  }
  throw new Error("no free /30 in 10.77.0.0/16 after 200 tries");
}

/** Makes a namespace linked to the root namespace by a veth pair, both ends up with their addresses. Throws (after
 *  removing whatever it made) when any step fails. */
export async function createNetNs(): Promise<NetNs> {
  const reason = namespacesUnavailable();
  if (reason) throw new Error(`network namespaces are not available: ${reason}`);
  const hex = randomBytes(4).toString("hex");
  const name = `${NS_PREFIX}${process.pid}-${hex}`;
  const hostIf = `cr${hex}h`;
  const nsIf = `cr${hex}n`;
  /** Where the namespace's outgoing frames go to be lost (cutRules); its peer stays down. Inside the namespace only. */
  const sinkIf = `cr${hex}s`;
  const { host, inside } = pickNetwork();
  let cut = false;
  let removed = false;

  const ns: NetNs = {
    name,
    hostIf,
    nsIf,
    hostAddress: host,
    nsAddress: inside,
    get isCut() {
      return cut;
    },
    exec: (argv) => [IP, "netns", "exec", name, ...argv],
    cut(options = {}) {
      if (cut) throw new Error(`the link ${name} is already cut`);
      must([IP, "netns", "exec", name, NFT, "-f", "-"], cutRules(nsIf, sinkIf, options.keepArp));
      cut = true;
      return Date.now();
    },
    restore() {
      if (!cut) throw new Error(`the link ${name} is not cut`);
      must([IP, "netns", "exec", name, NFT, "delete", "table", "netdev", CUT_TABLE]);
      cut = false;
      return Date.now();
    },
    setLoss(percent) {
      if (!Number.isInteger(percent) || percent < 0 || percent > 100) throw new Error(`loss must be a whole percentage, not ${percent}`);
      run([IP, "netns", "exec", name, NFT, "delete", "table", "netdev", LOSS_TABLE]); // none yet is fine
      if (percent > 0) must([IP, "netns", "exec", name, NFT, "-f", "-"], lossRules(nsIf, sinkIf, percent));
    },
    lossCounts() {
      const listed = must([IP, "netns", "exec", name, NFT, "list", "table", "netdev", LOSS_TABLE]);
      const sum = (pattern: RegExp) => [...listed.matchAll(pattern)].reduce((total, m) => total + Number(m[1]), 0);
      return { frames: sum(/^\s*counter packets (\d+)/gm), dropped: sum(/numgen .* counter packets (\d+) /g) };
    },
    async remove() {
      if (!removed) {
        removed = true;
        await removeNamespace(name, hostIf);
        live.delete(name);
      }
      return leftoversOf(name, hostIf);
    },
    [Symbol.asyncDispose]: async () => {
      await ns.remove();
    },
  };

  live.set(name, ns);
  made.push({ name, hostIf });
  try {
    must([IP, "netns", "add", name]);
    must([IP, "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", name]);
    must([IP, "addr", "add", `${host}/30`, "dev", hostIf]);
    must([IP, "link", "set", hostIf, "up"]);
    must([IP, "-n", name, "link", "set", "lo", "up"]);
    must([IP, "-n", name, "addr", "add", `${inside}/30`, "dev", nsIf]);
    must([IP, "-n", name, "link", "set", nsIf, "up"]);
    must([IP, "-n", name, "link", "add", sinkIf, "type", "veth", "peer", "name", `cr${hex}z`]);
    must([IP, "-n", name, "link", "set", sinkIf, "up"]);
    // Both ends report carrier within milliseconds; bounded all the same.
    const deadline = Date.now() + 5_000;
    while (!(linkUp(undefined, hostIf) && linkUp(name, nsIf))) {
      if (Date.now() > deadline) throw new Error(`the veth ${hostIf}/${nsIf} did not come up within 5 s`);
      await Bun.sleep(20);
    }
    return ns;
  } catch (e) {
    await ns.remove();
    throw e;
  }
}

function linkUp(namespace: string | undefined, device: string): boolean {
  const r = run([IP, ...(namespace ? ["-n", namespace] : []), "-o", "link", "show", "dev", device]);
  return r.ok && /state UP/.test(r.stdout);
}

async function removeNamespace(name: string, hostIf: string): Promise<void> {
  // A process still inside keeps the namespace (and so the veth) alive after `ip netns del`: end them first. Only
  // processes in this namespace, which this test made: the agent and what it ran.
  for (let round = 0; round < 3; round++) {
    const pids = run([IP, "netns", "pids", name]).stdout.split("\n").map(Number).filter((p) => Number.isInteger(p) && p > 0);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    await Bun.sleep(100);
  }
  run([IP, "netns", "exec", name, NFT, "delete", "table", "netdev", CUT_TABLE]); // gone with the namespace anyway
  run([IP, "netns", "del", name]);
  run([IP, "link", "del", hostIf]); // normally gone with its peer already
  // The kernel tears a namespace down asynchronously; wait (bounded) until its veth is gone.
  const deadline = Date.now() + 5_000;
  while (leftoversOf(name, hostIf).length > 0 && Date.now() < deadline) await Bun.sleep(50);
}

function leftoversOf(name: string, hostIf: string): string[] {
  const found: string[] = [];
  if (run([IP, "netns", "list"]).stdout.split("\n").some((l) => l.split(" ")[0] === name)) found.push(`namespace ${name}`);
  if (run([IP, "link", "show", "dev", hostIf]).ok) found.push(`link ${hostIf}`);
  return found;
}

/** Removes every namespace this process made and has not removed yet; returns what could not be removed. */
export async function removeAll(): Promise<string[]> {
  const left: string[] = [];
  for (const ns of [...live.values()]) left.push(...(await ns.remove()));
  return left;
}

/** What this process made and is still on the machine (empty when everything was removed). */
export function leftoversOfThisRun(): string[] {
  return made.flatMap(({ name, hostIf }) => leftoversOf(name, hostIf));
}

/** Anything of this file's naming (any run's) still on the machine: namespaces `crnet-*` and veths `cr<8 hex>h`.
 *  For a suite's final check and for a person looking after a killed run. */
export function leftoversOfAnyRun(): string[] {
  const namespaces = run([IP, "netns", "list"]).stdout.split("\n").map((l) => l.split(" ")[0]!).filter((n) => n.startsWith(NS_PREFIX));
  const links = run([IP, "-o", "link", "show"]).stdout.split("\n").map((l) => /^\d+: (cr[0-9a-f]{8}[hn])[@:]/.exec(l)?.[1]).filter((n): n is string => !!n);
  return [...namespaces.map((n) => `namespace ${n}`), ...links.map((l) => `link ${l}`)];
}

// Last resort: a test process that ends without its afterAll (an uncaught error, process.exit) still removes its
// namespaces. Synchronous, as an exit handler must be; the agent inside is killed by pid first.
process.on("exit", () => {
  for (const ns of live.values()) {
    for (const pid of run([IP, "netns", "pids", ns.name]).stdout.split("\n").map(Number).filter((p) => p > 0)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    run([IP, "netns", "del", ns.name]);
    run([IP, "link", "del", ns.hostIf]);
  }
});

/** Starts agent.ts inside `ns` (with `ip netns exec`, which execs it: the child's pid is the agent's), dialing the
 *  relay at the root namespace's address on the link, and waits until it has registered. As processes.ts's
 *  startAgent otherwise: a fresh root, state dir and config home, and it stops with this test process. */
export async function startAgentIn(ns: NetNs, relay: Pick<Relay, "port" | "token">, options: AgentOptions = {}): Promise<Agent> {
  const { machine, roots, env } = agentSettings(relay, options, ns.hostAddress);
  const child = spawnProgram(ns.exec([BUN, "run", path.join(ROOT, "agent.ts")]), { env });
  if (options.waitConnected !== false) {
    try {
      await child.stderr.waitFor(/agent info connected/, 20_000);
    } catch (e) {
      await child.kill();
      throw e;
    }
  }
  return { ...child, machine, roots };
}

// --- an MCP client in a namespace of its own ---

/** The client's process: the SDK's client driven by JSON lines (see the file). */
const CLIENT_SCRIPT = path.join(ROOT, "test", "helpers", "client-process.ts");
/** How long a client may take to start and connect: bun starting on a busy machine, then the SDK's initialize. */
const CLIENT_READY_MS = 20_000;
/** How long past a call's own timeout (after which the client answers with an error) the test still waits for it. */
const ANSWER_SLACK_MS = 5_000;
/** How long a client has to say goodbye once its stdin is closed, before it is killed. */
const CLIENT_STOP_MS = 5_000;

/** startRelay's options under which a client in `clientNs` is served. The relay listens on every address (each
 *  namespace reaches it at its veth's root-side address), on a port chosen now, since PUBLIC_URL must name it: the
 *  relay serves MCP only under a loopback Host or PUBLIC_URL's host and port (relay/auth.ts checkHost), and takes a
 *  PUBLIC_URL other than loopback only with https (relay/config.ts parsePublicUrl). So PUBLIC_URL is https while
 *  the client speaks plain http, as behind a TLS-terminating proxy that passes the Host on; the check compares
 *  host and port only. */
export function relayServing(clientNs: NetNs): RelayOptions {
  const port = freePort();
  return { port, env: { HOST: "0.0.0.0", PUBLIC_URL: `https://${clientNs.hostAddress}:${port}` } };
}

/** A call's outcome as the client in the namespace saw it. */
export interface NsAnswer {
  /** When (Date.now()) the client issued the call, and when its answer (or error) arrived there. */
  issuedAt: number;
  answeredAt: number;
  /** Set when the call threw (the client's timeout, a transport failure) instead of answering. */
  error?: string;
  isError?: boolean;
  /** The result's first text block. */
  text?: string;
  /** The progress notifications it heard, in order. */
  progress: { at: number; message: string }[];
}

export interface NsCall {
  answer: Promise<NsAnswer>;
  /** Resolves once the call's first progress notification reached the client; rejects after `withinMs`. */
  progressed(withinMs: number): Promise<void>;
}

export interface NsClient extends AsyncDisposable {
  /** The relay's URL as the client dials it: its veth's root-side address. */
  readonly url: string;
  /** The client process's own messages (an SDK warning, a crash). */
  readonly stderr: OutputLog;
  /** Issues a call at once (calls run concurrently); `timeoutMs` is the client's own timeout for it (default 60 s). */
  call(tool: string, args: Record<string, unknown>, timeoutMs?: number): NsCall;
}

/** Starts a real MCP client process (client-process.ts: the v1 SDK over Streamable HTTP) inside `ns`, dialing the
 *  relay across the namespace's veth with the relay's token, and waits until it has connected. The relay must serve
 *  that address (relayServing). The client exits when its stdin closes: on dispose, and when this test process
 *  dies; removing the namespace kills it in any case. */
export async function startClientIn(ns: NetNs, relay: Pick<Relay, "port" | "token">): Promise<NsClient> {
  const url = `http://${ns.hostAddress}:${relay.port}`;
  const proc = Bun.spawn(ns.exec([BUN, "run", CLIENT_SCRIPT]), {
    cwd: NEUTRAL_CWD,
    env: minimalEnv({ RELAY_URL: url, AUTH_TOKEN: relay.token }),
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  const stdout = new OutputLog(proc.stdout);
  const stderr = new OutputLog(proc.stderr);
  let stopping: Promise<unknown> | undefined;
  const stop = async () => {
    stopping ??= (async () => {
      proc.stdin.end();
      await Promise.race([proc.exited, Bun.sleep(CLIENT_STOP_MS)]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await proc.exited;
    })();
    await stopping;
  };
  try {
    const first = await stdout.waitFor(/^\{"(ready|failed)":/, CLIENT_READY_MS);
    if (!first.startsWith('{"ready":')) throw new Error(`the client in ${ns.name} could not connect to ${url}: ${first}\n${stderr.text}`);
  } catch (e) {
    await stop();
    throw e;
  }

  let lastId = 0;
  const linesOf = (key: "progressOf" | "answerTo", id: number) => new RegExp(`^\\{"${key}":${id},`);
  return {
    url,
    stderr,
    call(tool, args, timeoutMs = 60_000) {
      const id = ++lastId;
      proc.stdin.write(`${JSON.stringify({ id, tool, arguments: args, timeoutMs } satisfies CallLine)}\n`);
      proc.stdin.flush();
      // The client writes a call's progress lines before its answer line, so they are all here once it arrives.
      const answer = stdout.waitFor(linesOf("answerTo", id), timeoutMs + ANSWER_SLACK_MS).then((line): NsAnswer => {
        const progress = stdout.lines
          .filter((l) => linesOf("progressOf", id).test(l))
          .map((l) => {
            const { at, message } = JSON.parse(l) as { at: number; message: string };
            return { at, message };
          });
        return { ...(JSON.parse(line) as Omit<NsAnswer, "progress">), progress };
      });
      return { answer, progressed: (withinMs) => stdout.waitFor(linesOf("progressOf", id), withinMs).then(() => undefined) };
    },
    [Symbol.asyncDispose]: stop,
  };
}
