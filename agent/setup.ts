// `code-remote-agent setup`: asks for the relay URL, token and machine name (or takes them from flags), proves
// them with one real connection made exactly as the daemon makes it, and saves them in the configuration file,
// which only this user can read. It replaces the original's hand-edited .env and setup.sh.

import * as fs from "node:fs";
import { MachineName } from "../protocol.ts";
import { Cancelled, parseFlags, selfCommand, UsageError } from "./cli.ts";
import { ConfigError, defaultMachineName, loadConfig, parseRelayUrl, type AgentConfig } from "./config.ts";
import { configFilePath, fileOnly, readSettingsFile, writeSettingsFile, type Settings } from "./config-file.ts";
import { checkConnection, type CheckResult } from "./link.ts";
import { serviceFilePath } from "./service.ts";
import { runningAgent } from "./state.ts";

const SETUP_FLAGS = { "relay-url": "value", "token-file": "value", "token-stdin": "switch", machine: "value", "allowed-roots": "value", "no-check": "switch", force: "switch", help: "switch" } as const;

const SETUP_HELP = `Usage: code-remote-agent setup [flags]

Saves the agent's settings in ${configFilePath(process.env)} (mode 600, as KEY=value lines), after
checking them by connecting once to the relay as this machine. In a terminal it asks for what the flags leave
out, showing the defaults (the token is read without echo); otherwise the flags must say it all.

  --relay-url URL        the relay's WebSocket URL, wss://relay.example.com/ws/agent (https:// works too)
  --token-file FILE      read the agent token (made by agent-token create on the relay) from FILE
  --token-stdin          read the agent token from standard input
  --machine NAME         the name the assistant uses for this machine (default: the host name)
  --allowed-roots DIRS   directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)
  --no-check             save without connecting to the relay first
  --force                replace an existing file without asking (settings not given are kept from it)

There is no flag for the token itself: command lines are visible to every user of the machine (ps).
Exit status: 0 saved, 1 the check failed (nothing saved), 2 a usage or settings error.`;

export async function setup(args: string[]): Promise<number> {
  const flags = parseFlags(args, SETUP_FLAGS);
  if (flags.has("help")) return (console.log(SETUP_HELP), 0);
  const file = configFilePath(process.env);
  const existing = readExisting(file, flags.has("force"));
  let relay = flags.get("relay-url") as string | undefined;
  let machine = flags.get("machine") as string | undefined;
  let token = await tokenFromFlags(flags);
  // Ask only in a terminal, and only for what the flags left out; a script gets an error instead of a question.
  const interactive = process.stdin.isTTY === true && !flags.has("token-stdin") && (!relay || !machine || !token);
  if (existing && !interactive && !flags.has("force")) {
    throw new UsageError(`${file} already exists. Pass --force to replace it (settings you do not give are kept).`);
  }
  const terminal = interactive ? new Terminal() : undefined;
  if (terminal) {
    console.log(existing ? `Updating ${file}. Press Enter to keep the value in brackets.` : `The agent's settings will be saved in ${file}, readable only by you.`);
    relay ??= await terminal.askValid("Relay URL (wss://host/ws/agent)", existing?.RELAY_URL ?? process.env.RELAY_URL, parseRelayUrl);
    token ??= await askToken(terminal, existing?.AGENT_TOKEN ?? existing?.AUTH_TOKEN);
    machine ??= await terminal.askValid("Machine name", existing?.MACHINE_NAME ?? process.env.MACHINE_NAME ?? defaultMachineName(), checkMachineName);
  }
  relay ??= existing?.RELAY_URL;
  token ??= existing?.AGENT_TOKEN ?? existing?.AUTH_TOKEN;
  machine ??= existing?.MACHINE_NAME ?? defaultMachineName();
  if (!relay) throw new UsageError("No relay URL: pass --relay-url wss://relay.example.com/ws/agent.");
  if (!token) throw new UsageError("No token: pass --token-file FILE or --token-stdin (this machine's agent token from the relay's owner).");

  const settings: Settings = { ...existing, RELAY_URL: parseRelayUrl(relay), AGENT_TOKEN: token, MACHINE_NAME: machine };
  delete settings.AUTH_TOKEN; // written as AGENT_TOKEN
  const roots = flags.get("allowed-roots") as string | undefined;
  if (roots) settings.ALLOWED_ROOTS = roots;
  else if (roots === "") delete settings.ALLOWED_ROOTS; // back to the default
  const config = loadConfig(fileOnly(settings)); // what the daemon will make of them; throws ConfigError with the fix

  if (!flags.has("no-check")) {
    const checked = await check(config);
    if (!checked && !(terminal && (await terminal.confirm("Save these settings anyway?")))) {
      console.error(`Nothing was saved. Fix that${terminal ? "" : ", or pass --no-check to save these settings anyway"}.`);
      return 1;
    }
  }
  writeSettingsFile(file, settings);
  console.log(`Saved ${file} (mode 600: only you can read it).`);
  if (fs.existsSync(serviceFilePath(process.env))) {
    console.log(`A running service still has the old settings; restart it with: ${selfCommand()} install-service`);
  } else {
    console.log(`Next: ${selfCommand()} install-service   keeps the agent running, now and after every login or reboot`);
    console.log(`  or: ${selfCommand()}                   runs it in this terminal`);
  }
  return 0;
}

/** The saved settings, as defaults (read even when too open: setup rewrites the file private). With --force, a
 *  file that cannot be parsed is replaced instead of stopping setup. */
function readExisting(file: string, force: boolean): Settings | undefined {
  try {
    return readSettingsFile(file, false);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    if (!force) throw new ConfigError(`${e.message} Fix that, or pass --force to replace the whole file.`);
    console.log(`Replacing ${file}, which cannot be read (${e.message}).`);
    return undefined;
  }
}

async function tokenFromFlags(flags: Map<string, string | true>): Promise<string | undefined> {
  const file = flags.get("token-file");
  if (typeof file === "string") {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      throw new UsageError(`Cannot read the token file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}.`);
    }
    return checkToken(text, `The token file ${file}`);
  }
  if (flags.has("token-stdin")) {
    // Typed at a terminal, the token would be echoed: there, setup asks for it without echo instead.
    if (process.stdin.isTTY) throw new UsageError("--token-stdin reads a pipe or a file; in a terminal, leave it out and setup asks for the token without echoing it.");
    return checkToken(await Bun.stdin.text(), "Standard input");
  }
  return undefined;
}

function checkToken(text: string, from: string): string {
  const token = text.trim();
  if (!token) throw new UsageError(`${from} is empty; it should hold this machine's agent token (from the relay's owner).`);
  if (/\s/.test(token)) throw new UsageError(`${from} holds more than one word; it should hold only the agent token.`);
  return token;
}

function checkMachineName(name: string): string {
  if (!MachineName.safeParse(name).success) throw new ConfigError(`'${name}' is not a machine name: use 1-64 letters, digits, '.', '_' or '-'.`);
  return name;
}

async function askToken(terminal: Terminal, current: string | undefined): Promise<string> {
  for (;;) {
    const answer = await terminal.ask(`Agent token (this machine's, from agent-token create on the relay; typing is hidden)${current ? " [keep the current one]" : ""}: `, true);
    if (!answer && current) return current;
    try {
      return checkToken(answer, "The token");
    } catch (e) {
      console.log((e as Error).message);
    }
  }
}

/** Connects once as the daemon would and says how it went. Never prints the token. */
async function check(config: AgentConfig): Promise<boolean> {
  const running = runningAgent(config.stateDir);
  if (running) {
    console.log(`Note: the agent already running as '${config.machine}' (pid ${running}) gives way to this check and reconnects within a minute.`);
  }
  console.log(`Checking: connecting to ${config.relayUrl} as '${config.machine}'…`);
  const result = await checkConnection(config);
  if (result.ok) {
    console.log(`Connected as '${result.machine}' (relay ${result.serverVersion}).`);
    return true;
  }
  console.error(explainCheck(result, config));
  return false;
}

/** One or two sentences per way the check can fail, each saying what to do. */
function explainCheck(result: Exclude<CheckResult, { ok: true }>, config: Pick<AgentConfig, "relayUrl" | "machine">): string {
  const url = config.relayUrl;
  const health = new URL("/health", url.replace(/^ws/, "http")).toString();
  switch (result.problem) {
    case "refused":
      return (
        `The relay refused the token (${result.detail}). Use the agent token the relay's owner gave you, exactly as given: ` +
        "a token made for this one machine (it works only with the machine name it was made for), or the relay's shared AGENT_TOKEN."
      );
    case "unreachable":
      return `Could not reach the relay at ${url} (${result.detail}). Check the address, and that the relay is up: curl ${health}`;
    case "turned_away":
      return `The relay accepted the token but turned this agent away (${result.detail}). A token made for one machine works only with the machine name it was made for.`;
    case "identity":
      return (
        `The name '${config.machine}' belongs to another agent: the relay pinned that agent's key to it (${result.detail}). ` +
        `Pass another name with --machine; or, if this machine was reinstalled and lost its key, ask the relay's owner to run: bun run server.ts machine-key unpin ${config.machine}`
      );
    case "replaced":
      return `This machine connected again from another process during the check (${result.detail}). Try again in a minute.`;
    case "timeout":
      return `The relay at ${url} accepted the connection but never welcomed this agent (${result.detail}). Is it a Code Remote relay?`;
    case "not_relay":
      return `${url} is not a Code Remote relay's agent address (${result.detail}). Use the relay's address with /ws/agent, and check that any proxy in front of it passes WebSocket upgrades.`;
    case "rejected":
      return `The relay turned the connection away (${result.detail}).`;
  }
}

// --- questions on the terminal ---

/** Questions on the terminal, in raw mode so that a hidden answer (the token) is never echoed; the few editing
 *  keys a one-line answer needs are handled here. Text typed or pasted ahead is kept for the next question. */
class Terminal {
  #ahead = "";

  ask(question: string, hidden = false): Promise<string> {
    const out = (text: string) => process.stdout.write(text);
    const stdin = process.stdin;
    stdin.setRawMode(true); // before the question: whatever is typed once it shows is never echoed by the terminal
    out(question);
    let answer = "";
    return new Promise<string>((resolve, reject) => {
      const done = (error?: Error) => {
        stdin.off("data", onData).off("end", onEnd);
        stdin.setRawMode(false);
        stdin.pause();
        out("\n"); // out of raw mode, the terminal turns it into a line break
        if (error) reject(error);
        else resolve(answer.trim());
      };
      const drain = () => {
        while (this.#ahead) {
          const escape = /^\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|.)?/s.exec(this.#ahead); // arrow keys and the like: ignored
          const key = escape ? escape[0] : this.#ahead[0]!;
          this.#ahead = this.#ahead.slice(key.length);
          if (key === "\r" || key === "\n") {
            if (key === "\r" && this.#ahead.startsWith("\n")) this.#ahead = this.#ahead.slice(1);
            return done();
          }
          if (key === "\x03" || (key === "\x04" && !answer)) return done(new Cancelled()); // Ctrl-C; Ctrl-D on an empty line
          if (key === "\x7f" || key === "\b") {
            if (answer && !hidden) out("\b \b");
            answer = [...answer].slice(0, -1).join("");
          } else if (key === "\x15") {
            if (!hidden) out("\b \b".repeat([...answer].length)); // Ctrl-U: clear the line
            answer = "";
          } else if (key >= " ") {
            answer += key;
            if (!hidden) out(key);
          }
        }
      };
      const onData = (chunk: Buffer) => {
        this.#ahead += chunk.toString("utf8");
        drain();
      };
      const onEnd = () => done(new Cancelled());
      stdin.on("data", onData).on("end", onEnd);
      stdin.resume();
      drain();
    });
  }

  /** Asks until `parse` accepts the answer (Enter takes the default), then returns what it returned. */
  async askValid(label: string, fallback: string | undefined, parse: (answer: string) => string): Promise<string> {
    for (;;) {
      const answer = (await this.ask(`${label}${fallback ? ` [${fallback}]` : ""}: `)) || fallback;
      if (!answer) {
        console.log(`${label.replace(/ \(.*\)$/, "")} is required.`);
        continue;
      }
      try {
        return parse(answer);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        console.log(e.message);
      }
    }
  }

  async confirm(question: string): Promise<boolean> {
    return /^y(es)?$/i.test(await this.ask(`${question} [y/N] `));
  }
}
