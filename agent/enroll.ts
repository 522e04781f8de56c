// `code-remote-agent enroll-owner` and `code-remote-agent owner-keys`: pairing the owner's passkeys with this machine,
// and listing or removing them. Enrolment goes through the relay (the owner's browser talks only to it), so the
// relay could swap in a key of its own: this machine shows the fingerprint of the key that reached it, the page
// shows the fingerprint of the key the browser made, and nothing is stored until the owner, at this machine's
// terminal, says they match. From then on, with approvals = "passkey", only that passkey can approve a call here.

import { randomBytes } from "node:crypto";
import { isIP } from "node:net";
import { CloseCode, HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS, parseFrame, ServerFrame, type AgentFrame } from "../protocol.ts";
import { describeArg, parseFlags, selfCommand, UsageError } from "./cli.ts";
import { ConfigError, loadConfig, ownerKeysFilePath, type AgentConfig } from "./config.ts";
import { withConfigFile } from "./config-file.ts";
import { loadIdentity, type Identity } from "./identity.ts";
import { answerChallenge, classifyEnd, dial, unregisteredMessage } from "./link.ts";
import { OwnerKeys } from "./owner-keys.ts";
import { PasskeyError, relayIdentity, verifyEnrolment, type OwnerKey, type RelayIdentity } from "./passkeys.ts";

/** How long the owner has to create the passkey once the page is there (the relay's code lasts as long). */
const ENROL_TIMEOUT_MS = 10 * 60_000;
/** How long the relay may take to welcome this link, and to answer enroll_begin: a relay that is up takes milliseconds. */
const ANSWER_TIMEOUT_MS = 10_000;
const DEFAULT_LABEL = "owner passkey";

const ENROLL_FLAGS = { label: "value", help: "switch" } as const;

const enrollHelp = () => `Usage: code-remote-agent enroll-owner [--label NAME]

Pairs a passkey of yours (on your phone, laptop or security key) with this machine. With approvals = "passkey"
in policy.toml, a call that waits for your approval then runs only on an approval signed with that passkey,
which neither the relay nor anyone who controls it can make.

It connects to the relay as this machine (with the agent's settings; a running agent stays connected) and
prints the address of a page. Open it in a browser where you are signed in to the relay's dashboard and create
a passkey there; the page shows its fingerprint. This command then shows the fingerprint of the key that reached
this machine and asks whether they are the same. If they are, the key is stored (mode 600), and a running agent
uses it at once; if they differ, someone between your browser and this machine swapped the key: answer no, and
nothing is stored. The keys are kept in ${ownerKeysFilePath(process.env)}

It must run in a terminal: a person has to compare the fingerprints.

  --label NAME   what to call the passkey in the list, e.g. phone (default: "${DEFAULT_LABEL}")

List or remove enrolled passkeys with: code-remote-agent owner-keys
Exit status: 0 stored, 1 not stored (the fingerprints differ, time ran out, the relay refused), 2 a usage or
settings error.`;

const ownerKeysHelp = () => `Usage: code-remote-agent owner-keys [list]
       code-remote-agent owner-keys remove ID|FINGERPRINT

Lists the owner's passkeys enrolled on this machine: their fingerprint, label, when they were added, and their
id, shortened. remove takes one away, named by its id (or the start of it that the list shows) or by its
fingerprint; approvals signed with it are refused from then on, by a running agent too. The passkey itself stays
on your device: delete it there as well if you no longer need it.

The keys are kept in ${ownerKeysFilePath(process.env)}

Enrol one with: code-remote-agent enroll-owner
Exit status: 0 done, 1 no such passkey, 2 a usage or settings error.`;

// --- enroll-owner ---

export async function enrollOwner(args: string[]): Promise<number> {
  const flags = parseFlags(args, ENROLL_FLAGS);
  if (flags.has("help")) return (console.log(enrollHelp()), 0);
  const label = checkLabel(flags.get("label"));
  // Before anything is asked of the owner: without a person here, a passkey made on the page could not be stored.
  if (!process.stdin.isTTY) {
    throw new UsageError("This needs a terminal: before the key is stored, a person compares the fingerprint shown here with the one on the page. Run it in one (over ssh: ssh -t).");
  }
  const config = loadConfig(withConfigFile(process.env)); // the daemon's settings; ConfigError says what to fix
  const relay = passkeyRelay(config.relayUrl);
  const keys = new OwnerKeys(config.ownerKeysFile);
  keys.list(); // a damaged file stops us here, before the owner makes a passkey that could not be stored
  const identity = await loadIdentity(config.stateDir);
  return enrol(config, identity, relay, keys, label);
}

function checkLabel(value: string | true | undefined): string {
  const label = typeof value === "string" ? value.trim() : DEFAULT_LABEL;
  if (!label || label.length > 100 || /[\p{Cc}\p{Cf}]/u.test(label)) throw new UsageError("--label takes a name of 1-100 printable characters, e.g. --label phone.");
  return label;
}

/** The origin and RP ID passkeys are made for, from RELAY_URL; a ConfigError when no browser would make one there. */
function passkeyRelay(relayUrl: string): RelayIdentity {
  const relay = relayIdentity(relayUrl);
  const local = relay.rpId === "localhost" || relay.rpId.endsWith(".localhost");
  if (isIP(relay.rpId.replace(/^\[|\]$/g, ""))) {
    throw new ConfigError(
      `RELAY_URL names the relay by an IP address (${relay.rpId}), and browsers make passkeys only for a host name. ` +
        "Set RELAY_URL to the relay's public name (localhost for a relay on this machine), the one its pages are opened at.",
    );
  }
  if (relay.origin.startsWith("http:") && !local) {
    throw new ConfigError(
      `RELAY_URL is ${relayUrl}, and browsers make passkeys only on https:// pages (or http://localhost). ` +
        "Set RELAY_URL to the relay's public wss:// address, the one its pages are opened at over https.",
    );
  }
  return relay;
}

/** The enrolment, from dialing the relay to the owner's answer; the exit status. */
async function enrol(config: AgentConfig, identity: Identity, relay: RelayIdentity, keys: OwnerKeys, label: string): Promise<number> {
  const typed = new TypedLines();
  const link = new EnrolLink(config, identity);
  let credentialArrived = false;
  // The page waits for this answer once its passkey has been sent here; before that, closing the link says enough.
  const result = (stored: boolean, message: string) => {
    if (credentialArrived) link.send({ type: "enroll_result", stored, message });
  };
  const onInterrupt = () => {
    result(false, `Cancelled on ${config.machine}; nothing was stored.`);
    link.close();
    console.error("\nCancelled; nothing was stored.");
    setTimeout(() => process.exit(130), 100); // time for the frame to leave
  };
  process.once("SIGINT", onInterrupt);
  try {
    console.log(`Connecting to ${config.relayUrl} as '${config.machine}'…`);
    const welcome = await link.next("welcome", ANSWER_TIMEOUT_MS);
    if (!welcome) return failed(`The relay at ${config.relayUrl} did not answer within ${ANSWER_TIMEOUT_MS / 1000} s. Is it a Code Remote relay, and up?`);
    // A relay older than passkeys took this link for the machine itself (its agent reconnects within a minute).
    if (!welcome.features?.includes("passkeys")) return failed("The relay is older than passkeys and cannot enrol one: update the relay first. (It took this link for the machine's agent, which reconnects by itself within a minute.)");
    const challenge = randomBytes(32).toString("base64url");
    link.send({ type: "enroll_begin", challenge, user_id: randomBytes(16).toString("base64url"), rp_id: relay.rpId, origin: relay.origin, label });
    const page = await link.next("enroll_page", ANSWER_TIMEOUT_MS);
    if (!page) return failed("The relay did not open an enrolment page. Is it up to date? Enrolling a passkey needs a relay that knows about passkeys.");
    const url = pageUrl(page.url, relay);
    if (!url) return failed(`The relay offered an enrolment page that is not on ${relay.origin}; nothing was stored.`);
    console.log(`\nOpen this page in a browser where you are signed in to the relay's dashboard, and create a passkey there:\n\n    ${url}\n`);
    console.log(`Waiting for the passkey (up to ${ENROL_TIMEOUT_MS / 60_000} minutes; Ctrl-C gives up)…`);
    const sent = await link.next("enroll_credential", ENROL_TIMEOUT_MS);
    if (!sent) return failed(`No passkey arrived within ${ENROL_TIMEOUT_MS / 60_000} minutes; nothing was stored. Run enroll-owner again to start over.`);
    credentialArrived = true;
    let key: OwnerKey;
    try {
      key = await verifyEnrolment(sent.credential, { challenge, ...relay }, label);
    } catch (e) {
      if (!(e instanceof PasskeyError)) throw e;
      result(false, `Not stored on ${config.machine}: ${e.message}.`);
      return failed(`${e.message[0]!.toUpperCase()}${e.message.slice(1)}. Nothing was stored.`);
    }
    showFingerprint(key.fingerprint);
    typed.forget(); // only what is typed once the question shows answers it
    process.stdout.write("Does the page show the same fingerprint? [y/N] ");
    const answer = await typed.next();
    if (!/^\s*y(es)?\s*$/i.test(answer ?? "")) {
      result(false, `Not stored: the owner did not confirm the fingerprint on ${config.machine}.`);
      return failed(
        "Not stored. If the fingerprints differ, the key that reached this machine is not the one your browser made: " +
          "something between them (the relay) swapped it. Delete that passkey from your device, and find out why before enrolling again.",
      );
    }
    keys.add(key);
    result(true, `Stored on ${config.machine} as "${label}".`);
    console.log(`Stored "${label}" in ${keys.file}.`);
    console.log(`With approvals = "passkey" in the policy (${config.policyFile}), a call that waits for approval now needs this passkey's signature; a running agent uses it at once.`);
    console.log(`See the enrolled passkeys with: ${selfCommand()} owner-keys`);
    return 0;
  } catch (e) {
    if (!(e instanceof LinkEnded)) throw e;
    return failed(e.explain(config));
  } finally {
    process.off("SIGINT", onInterrupt);
    typed.stop();
    link.close();
  }
}

function failed(message: string): number {
  console.error(message);
  return 1;
}

/** The enrolment page's address, when it is on the relay's own origin (the one the passkey is made for). */
function pageUrl(raw: string, relay: RelayIdentity): string | undefined {
  try {
    const url = new URL(raw);
    return url.origin === relay.origin ? url.href : undefined;
  } catch {
    return undefined;
  }
}

/** The fingerprint, framed and set apart, so that it is easy to compare with the page's at a glance. */
function showFingerprint(fingerprint: string): void {
  const rule = "─".repeat(fingerprint.length + 6);
  console.log("\nThe key that reached this machine has the fingerprint:\n");
  console.log(`    ┌${rule}┐`);
  console.log(`    │   ${fingerprint}   │`);
  console.log(`    └${rule}┘\n`);
  console.log("The page shows the fingerprint of the passkey your browser made. Compare all eight groups.");
}

/** How the enrolment link ended before it was done: what the relay or the network said, for `explain`. */
class LinkEnded extends Error {
  constructor(
    readonly welcomed: boolean,
    readonly code: number,
    readonly reason: string,
    readonly failure: string,
  ) {
    super(`link ended: ${code}`);
  }

  /** What happened and what to do, in the daemon's words for a link the relay did not take. */
  explain(config: AgentConfig): string {
    if (!this.welcomed) {
      const { problem, detail } = classifyEnd(this.code, this.reason, this.failure);
      return `Could not connect, so nothing was stored: ${unregisteredMessage(problem, detail, config)}`;
    }
    if (this.code === CloseCode.protocolError) {
      return `The relay did not accept the enrolment (${this.reason || "protocol error"}). A relay too old for passkeys says so; otherwise RELAY_URL may not be the address its pages are opened at. Nothing was stored.`;
    }
    return `The relay closed the connection (${this.reason || `code ${this.code}`}). Nothing was stored.`;
  }
}

/** The enrolment's connection to the relay: dialled as the daemon dials (the token in a header, hello with
 *  purpose "enroll", the proof of this machine's key), kept alive with heartbeats like the daemon's, and read one
 *  awaited frame at a time. */
class EnrolLink {
  readonly #ws: WebSocket;
  readonly #heartbeat: ReturnType<typeof setInterval>;
  #frames: ServerFrame[] = [];
  #wake?: () => void;
  #welcomed = false;
  #ended?: LinkEnded;
  #failure = "";
  #lastHeard = Date.now();

  constructor(config: AgentConfig, identity: Identity) {
    const ws = (this.#ws = dial(config, identity, "enroll"));
    ws.addEventListener("message", (event) => {
      this.#lastHeard = Date.now();
      const parsed = parseFrame(ServerFrame, event.data as string);
      if (!parsed.ok) return void ws.close(CloseCode.protocolError, parsed.reason);
      const frame = parsed.frame;
      if (frame.type === "challenge") return void answerChallenge(ws, config, identity, frame.nonce);
      if (frame.type === "ping") return this.send({ type: "pong", t: frame.t });
      if (frame.type === "welcome") this.#welcomed = true;
      this.#frames.push(frame);
      this.#wake?.();
    });
    ws.addEventListener("error", (event) => (this.#failure = (event as ErrorEvent).message ?? ""));
    ws.addEventListener("close", (event) => this.#end(event.code, event.reason));
    this.#heartbeat = setInterval(() => {
      if (Date.now() - this.#lastHeard <= HEARTBEAT_TIMEOUT_MS) return this.send({ type: "ping", t: Date.now() });
      ws.terminate();
      this.#end(CloseCode.heartbeatTimeout, "the relay fell silent");
    }, HEARTBEAT_INTERVAL_MS);
  }

  /** The next frame of `type` (others are passed over), or undefined after `timeoutMs`. Throws LinkEnded when the
   *  link ends first. */
  async next<T extends ServerFrame["type"]>(type: T, timeoutMs: number): Promise<Extract<ServerFrame, { type: T }> | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.#frames.findIndex((frame) => frame.type === type);
      if (index >= 0) return this.#frames.splice(0, index + 1).at(-1) as Extract<ServerFrame, { type: T }>;
      this.#frames = [];
      if (this.#ended) throw this.#ended;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => (clearTimeout(timer), resolve());
      });
    }
  }

  send(frame: AgentFrame): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(frame));
  }

  close(): void {
    clearInterval(this.#heartbeat);
    if (this.#ws.readyState === WebSocket.OPEN || this.#ws.readyState === WebSocket.CONNECTING) this.#ws.close(CloseCode.normal, "enrolment done");
  }

  #end(code: number, reason: string): void {
    clearInterval(this.#heartbeat);
    this.#ended ??= new LinkEnded(this.#welcomed, code, reason, this.#failure);
    this.#wake?.();
  }
}

/** What is typed at the terminal, line by line, read from the moment the enrolment starts: so that a key pressed
 *  while waiting (Enter, to see whether it still runs) can be thrown away, never taken for the answer. */
class TypedLines {
  #text = "";
  #ended = false;
  #wake?: () => void;
  readonly #onData = (chunk: Buffer | string) => {
    this.#text += chunk.toString();
    this.#wake?.();
  };
  readonly #onEnd = () => {
    this.#ended = true;
    this.#wake?.();
  };

  constructor() {
    process.stdin.on("data", this.#onData).on("end", this.#onEnd);
    process.stdin.resume();
  }

  /** Throws away what was typed so far. */
  forget(): void {
    this.#text = "";
  }

  /** The next line typed, or undefined when input ends (Ctrl-D). */
  async next(): Promise<string | undefined> {
    for (;;) {
      const end = /\r\n|\r|\n/.exec(this.#text);
      if (end) {
        const line = this.#text.slice(0, end.index);
        this.#text = this.#text.slice(end.index + end[0].length);
        return line;
      }
      if (this.#ended) return undefined;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  stop(): void {
    process.stdin.off("data", this.#onData).off("end", this.#onEnd);
    process.stdin.pause();
  }
}

// --- owner-keys ---

export async function ownerKeys(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) return (console.log(ownerKeysHelp()), 0);
  const [action = "list", ...rest] = args;
  const keys = new OwnerKeys(ownerKeysFilePath(process.env));
  if (action === "remove") {
    // Taken as they are: an id may start with "-", and a fingerprint may come as eight words.
    if (rest.length === 0) throw new UsageError("remove needs the id or the fingerprint of a passkey, as owner-keys lists them.");
    return removeKey(keys, rest.join(" "));
  }
  if (action !== "list") throw new UsageError(`Unknown ${action.startsWith("-") ? "argument" : "action"} ${describeArg(action)}: use list or remove.`);
  if (rest.length) throw new UsageError(`list takes no argument (got ${describeArg(rest[0]!)}).`);
  listKeys(keys);
  return 0;
}

function listKeys(keys: OwnerKeys): void {
  const list = keys.list();
  if (list.length === 0) {
    console.log(`No owner passkey is enrolled on this machine (${keys.file}). Enrol one with: ${selfCommand()} enroll-owner`);
    return;
  }
  const labels = list.map((key) => printable(key.label));
  const width = Math.max(5, ...labels.map((label) => label.length));
  console.log(`Owner passkeys enrolled on this machine (${keys.file}):\n`);
  console.log(`  ${"FINGERPRINT".padEnd(39)}  ${"LABEL".padEnd(width)}  ${"ADDED".padEnd(20)}  ID`);
  list.forEach((key, i) => console.log(`  ${key.fingerprint}  ${labels[i]!.padEnd(width)}  ${addedAt(key.added_at).padEnd(20)}  ${shortId(key.id)}`));
}

function removeKey(keys: OwnerKeys, wanted: string): number {
  let removed: OwnerKey | undefined;
  try {
    removed = keys.remove(wanted);
  } catch (e) {
    if (!(e instanceof PasskeyError)) throw e;
    throw new UsageError(e.message);
  }
  if (!removed) {
    console.error(`No enrolled passkey has that id or fingerprint; nothing was removed. See them with: ${selfCommand()} owner-keys`);
    return 1;
  }
  console.log(`Removed "${printable(removed.label)}" (${removed.fingerprint}): approvals signed with it are refused from now on.`);
  console.log("The passkey itself is still on your device: delete it there too if you no longer need it.");
  return 0;
}

/** A credential id as the list shows it: its start, which `remove` takes too. */
const shortId = (id: string) => (id.length > 16 ? `${id.slice(0, 12)}…` : id);

/** "2025-01-02 10:20 UTC" from the ISO time the key was stored at (anything else is shown as it is). */
const addedAt = (iso: string) => (/^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(iso) && iso.endsWith("Z") ? `${iso.slice(0, 16).replace("T", " ")} UTC` : printable(iso));

/** Text from the keys file as it may be printed: a hand-edited label could hold terminal control characters. */
const printable = (text: string) => text.replace(/[\p{Cc}\p{Cf}]/gu, "?");
