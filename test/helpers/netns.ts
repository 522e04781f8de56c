// Emulated networks for tests: a network namespace made by the test, linked to the root namespace (where the relay
// and the clients run) by a veth pair on a /30 of 10.77.0.0/16, and an agent started inside it with
// `ip netns exec`. The link can be cut and restored: a cut is an nftables table inside the namespace that drops every
// frame on the namespace's end of the veth, both ways (netdev ingress and egress hooks, ARP included), so the link is
// half-dead: no RST, no FIN, no error to either side's sockets; the sender's packets simply vanish, as behind a dead
// NAT or on a train. (This machine has no netem, so delay, when a test needs it, is done in user space.)
//
// Everything made here is named uniquely per run (the process id and random bytes), lives only in the namespaces
// and veths this file creates (traffic goes nowhere else), and is removed by dispose, by removeAll() (for an
// afterAll), or, as a last resort, when the test process exits. Every wait is bounded.

import { randomBytes } from "node:crypto";
import * as path from "node:path";
import { agentSettings, ROOT, spawnProgram, type Agent, type AgentOptions, type Relay } from "./processes.ts";

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
    const table = run([IP, "netns", "exec", ns, NFT, "-f", "-"], cutRules(`cr${hex}n`));
    if (!table.ok) return `nft could not hook a veth's ingress and egress (netdev family, Linux 5.16+): ${table.stderr}`;
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

/** Drops every frame on `device`, both ways, before anything else sees it (priority -500); with `keepArp`, ARP
 *  still passes (a dead upstream behind a live Wi-Fi: the neighbour answers, nothing beyond it does, so a dial hangs
 *  in SYN_SENT instead of failing with "no route to host" after a few seconds). */
function cutRules(device: string, keepArp = false): string {
  const arp = keepArp ? " ether type arp accept;" : "";
  return [
    `table netdev ${CUT_TABLE} {`,
    `  chain in { type filter hook ingress device "${device}" priority -500; policy drop;${arp} }`,
    `  chain out { type filter hook egress device "${device}" priority -500; policy drop;${arp} }`,
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
      must([IP, "netns", "exec", name, NFT, "-f", "-"], cutRules(nsIf, options.keepArp));
      cut = true;
      return Date.now();
    },
    restore() {
      if (!cut) throw new Error(`the link ${name} is not cut`);
      must([IP, "netns", "exec", name, NFT, "delete", "table", "netdev", CUT_TABLE]);
      cut = false;
      return Date.now();
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
