// `code-remote-agent setup`: asks for the relay URL, token and machine name (or takes them from flags), proves
// them with one real connection made exactly as the daemon makes it, and saves them in the configuration file,
// which only this user can read. It replaces the original's hand-edited .env and setup.sh. It also starts the
// owner's policy (policy.toml beside the settings: what an assistant may do here) from a preset, and never
// replaces one the owner has written rules into unless told to.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MachineName } from "../protocol.ts";
import { Cancelled, describeArg, parseFlags, selfCommand, UsageError } from "./cli.ts";
import { ConfigError, defaultMachineName, loadConfig, parseRelayUrl, type AgentConfig } from "./config.ts";
import { configFilePath, fileOnly, readSettingsFile, writePrivately, writeSettingsFile, type Settings } from "./config-file.ts";
import { checkConnection, type CheckResult } from "./link.ts";
import { parsePolicy, PolicyError, PRESETS, readPolicyText, type PresetName } from "./policy.ts";
import { serviceFilePath } from "./service.ts";
import { runningAgent } from "./state.ts";

/** What each policy preset (agent/policy.ts) means, in the one line setup shows for it. */
const PRESET_LINES: Record<PresetName, string> = {
  open: "everything runs at once, as before policies: commands, file changes, reads",
  "ask-to-change": "reads run at once; commands and file changes wait for your approval",
  "read-only": "reads run; commands and file changes are refused",
};
const presetList = () => PRESETS.map((name) => ({ name, line: PRESET_LINES[name] }));

const SETUP_FLAGS = { "relay-url": "value", "token-file": "value", "token-stdin": "switch", machine: "value", "allowed-roots": "value", policy: "value", "no-check": "switch", force: "switch", help: "switch" } as const;

const SETUP_HELP = `Usage: code-remote-agent setup [flags]

Saves the agent's settings in ${configFilePath(process.env)} (mode 600, as KEY=value lines), after
checking them by connecting once to the relay as this machine. In a terminal it asks for what the flags leave
out, showing the defaults (the token is read without echo); otherwise the flags must say it all.

  --relay-url URL        the relay's WebSocket URL, wss://relay.example.com/ws/agent (https:// works too)
  --token-file FILE      read the agent token (made by agent-token create on the relay) from FILE
  --token-stdin          read the agent token from standard input
  --machine NAME         the name the assistant uses for this machine (default: the host name)
  --allowed-roots DIRS   directories the file tools may touch, ':'-separated (default: home, /tmp, /var/tmp)
  --policy PRESET        what an assistant may do on this machine, saved in policy.toml beside the settings:
${presetList().map((p) => `                           ${p.name.padEnd(14)} ${p.line}`).join("\n")}
  --no-check             save without connecting to the relay first
  --force                replace an existing file without asking (settings not given are kept from it); with
                         --policy, also a policy.toml that holds rules of its own

The policy: in a terminal setup asks for it (ask-to-change for a new setup; an existing policy.toml is kept
unless you pick another preset). Without a terminal only --policy writes one: a new setup without it writes
none, and the agent then lets an assistant do anything this user can ("open", as before policies), while an
existing policy.toml is left as it is. A policy.toml with more in it than its preset line is never replaced
without --force. Its comments explain the format; edit it, and the running agent follows it at once.

There is no flag for the token itself: command lines are visible to every user of the machine (ps).
Exit status: 0 saved, 1 the check failed (nothing saved), 2 a usage or settings error.`;

export async function setup(args: string[]): Promise<number> {
  const flags = parseFlags(args, SETUP_FLAGS);
  if (flags.has("help")) return (console.log(SETUP_HELP), 0);
  const presetFlag = flags.has("policy") ? checkPreset(flags.get("policy") as string) : undefined; // before anything is read or asked
  const file = configFilePath(process.env);
  const existing = readExisting(file, flags.has("force"));
  const policyFile = policyFilePath(file, existing);
  const currentPolicy = readPolicy(policyFile);
  let relay = flags.get("relay-url") as string | undefined;
  let machine = flags.get("machine") as string | undefined;
  let token = await tokenFromFlags(flags);
  // Ask only in a terminal, and only for what the flags left out; a script gets an error instead of a question.
  const interactive = process.stdin.isTTY === true && !flags.has("token-stdin") && (!relay || !machine || !token || !presetFlag);
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
  const policy = await planPolicy(policyFile, currentPolicy, presetFlag, terminal, flags.has("force"));
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
  if (policy.write) writePolicyFile(policyFile, policy.write);
  console.log(policy.report);
  if (fs.existsSync(serviceFilePath(process.env))) {
    console.log(`A running service still has the old settings; restart it with: ${selfCommand()} install-service`);
  } else {
    console.log(`Next: ${selfCommand()} install-service   keeps the agent running, now and after every login or reboot`);
    console.log(`  or: ${selfCommand()}                   runs it in this terminal`);
  }
  // The optional step: approvals only the owner's passkey can give, so whoever controls the relay cannot approve.
  if (policy.write === "ask-to-change") {
    console.log(`Approvals the relay cannot forge: ${selfCommand()} enroll-owner pairs your passkey with this machine; then set approvals = "passkey" in ${policyFile}`);
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

// --- the policy file ---

const isPreset = (value: unknown): value is PresetName => PRESETS.some((name) => name === value);

function checkPreset(value: string): PresetName {
  if (!isPreset(value)) throw new UsageError(`--policy ${describeArg(value)} is not a preset: use ${PRESETS.slice(0, -1).join(", ")} or ${PRESETS.at(-1)}.`);
  return value;
}

/** Where the agent will read its policy: POLICY_FILE from the settings file (what the service's agent gets), else
 *  policy.toml beside agent.env, as agent/config.ts has it. Worked out here rather than taken from the config setup
 *  checks, which is made from the file alone: without XDG_CONFIG_HOME, its default would be under ~/.config. */
function policyFilePath(settingsFile: string, settings: Settings | undefined): string {
  const set = settings?.POLICY_FILE;
  if (!set) return path.join(path.dirname(settingsFile), "policy.toml");
  return path.resolve(set === "~" ? os.homedir() : set.startsWith("~/") ? path.join(os.homedir(), set.slice(2)) : set);
}

/** A policy file that is there. */
interface CurrentPolicy {
  /** The preset it names, when setup knows it. */
  preset?: PresetName;
  /** What it holds beyond that preset line, in words ("[commands], approval_timeout"), or why it cannot be read;
   *  unset when it holds nothing more, so that setup may replace it without losing anything the owner wrote. */
  more?: string;
  /** Set when the agent would refuse it: what is wrong with it, as the agent says it. */
  broken?: string;
}

/** The policy file as setup judges it, or undefined when there is none. Only its settings count: comments, such
 *  as the explanations setup writes, are not the owner's rules. */
function readPolicy(file: string): CurrentPolicy | undefined {
  let text: string | undefined;
  try {
    text = readPolicyText(file);
  } catch (e) {
    throw e instanceof PolicyError ? new ConfigError(`The policy file ${e.message} Fix that, or remove it, and run setup again.`) : e;
  }
  if (text === undefined) return undefined;
  let broken: string | undefined;
  try {
    parsePolicy(text, file, os.homedir()); // as the agent will read it
  } catch (e) {
    if (!(e instanceof PolicyError)) throw e;
    broken = e.message;
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = Bun.TOML.parse(text) as Record<string, unknown>;
  } catch {
    return { more: "text that is not valid TOML", broken };
  }
  const preset = isPreset(parsed.preset) ? parsed.preset : undefined;
  const others = Object.entries(parsed).filter(([key]) => key !== "preset" || !preset);
  return { preset, more: others.length ? others.flatMap(([key, value]) => sectionNames(key, value)).join(", ") : undefined, broken };
}

const isTable = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

/** How the owner would name a setting of the file: `approval_timeout`, `[commands]`, `[paths.change]`. */
function sectionNames(key: string, value: unknown): string[] {
  if (!isTable(value)) return [key];
  const inner = Object.entries(value);
  if (inner.length && inner.every(([, v]) => isTable(v))) return inner.map(([name]) => `[${key}.${name}]`);
  return [`[${key}]`];
}

/** What a broken file means for the agent, said whenever setup leaves one in place. */
const brokenNote = (current: CurrentPolicy) =>
  current.broken ? ` It has a mistake: ${current.broken} Until it is fixed, the agent will not start, and a running one refuses every call.` : "";

const describePolicy = (current: CurrentPolicy) =>
  current.preset ? `preset "${current.preset}"${current.more ? ` with ${current.more}` : ""}` : `${current.more ?? "no preset"}`;

/** What setup does with the policy file: write a fresh one with `write`, or leave it as it is; `report` says which,
 *  once the settings are saved. */
interface PolicyPlan {
  write?: PresetName;
  report: string;
}

/** Decides, before anything is saved, what becomes of the policy file: the preset --policy names or the owner picks
 *  in the terminal is written, unless the file already holds rules of the owner's (then only --force, or a yes in
 *  the terminal, replaces it). Without either, the file stays as it is, and a new setup gets none (the agent is
 *  then open, as before policies, which an agent set up from its environment alone must stay). */
async function planPolicy(file: string, current: CurrentPolicy | undefined, flag: PresetName | undefined, terminal: Terminal | undefined, force: boolean): Promise<PolicyPlan> {
  const preset = flag ?? (terminal ? await askPreset(terminal, file, current) : undefined);
  const written = (replaced?: CurrentPolicy): PolicyPlan => ({
    write: preset,
    report:
      `${replaced ? `Replaced ${file}, which held ${describePolicy(replaced)}, with` : `Saved ${file} (mode 600):`} preset "${preset}": ${PRESET_LINES[preset!]}. ` +
      "Its comments explain how to fine-tune it; the agent follows an edit at once.",
  });
  if (!preset) {
    if (current) return { report: `Kept ${file} as it is (${describePolicy(current)}).${brokenNote(current)}` };
    return {
      report:
        `No policy file (${file}): the agent lets an assistant do anything this user can (preset "open", as before policies). ` +
        "To limit that, run setup again in a terminal, or with --force --policy ask-to-change (or read-only).",
    };
  }
  if (!current) return written();
  if (!current.more) return preset === current.preset ? { report: `Kept ${file}: preset "${preset}", unchanged.` } : written();
  if (force) return written(current);
  if (preset === current.preset) return { report: `Kept ${file} as it is (${describePolicy(current)}): it already starts from preset "${preset}".` };
  if (terminal && (await terminal.confirm(`${file} holds ${describePolicy(current)}. Replace it with a fresh file with preset "${preset}", losing those rules?`))) {
    return written(current);
  }
  return {
    report:
      `Kept ${file} as it is (${describePolicy(current)}), so preset "${preset}" was not applied: setup does not replace a file that holds more than a preset line. ` +
      `Edit it, or pass --force with --policy to replace it.${brokenNote(current)}`,
  };
}

/** Asks which preset to start from. Enter keeps what is there: the file's preset, or a file with rules of its own
 *  (undefined: leave it); a new setup defaults to ask-to-change. */
async function askPreset(terminal: Terminal, file: string, current: CurrentPolicy | undefined): Promise<PresetName | undefined> {
  const keep = current?.more !== undefined; // the file says more than a preset: "keep" is a choice of its own
  console.log("What may an assistant do on this machine?");
  presetList().forEach((p, i) => console.log(`  ${i + 1}. ${p.name.padEnd(14)} ${p.line}`));
  if (keep) console.log(`  ${PRESETS.length + 1}. keep           leave ${file} as it is (${describePolicy(current!)})`);
  const fallback = keep ? "keep" : (current?.preset ?? "ask-to-change");
  const answer = await terminal.askValid("Policy", fallback, (text) => {
    const byNumber = keep && text === String(PRESETS.length + 1) ? "keep" : PRESETS[Number(text) - 1];
    const chosen = /^\d+$/.test(text) ? byNumber : text.toLowerCase();
    if ((chosen === "keep" && keep) || isPreset(chosen)) return chosen;
    throw new ConfigError(`Answer ${PRESETS.map((name, i) => `${name} (${i + 1})`).join(", ")}${keep ? `, or keep (${PRESETS.length + 1})` : ""}.`);
  });
  return answer === "keep" ? undefined : (answer as PresetName);
}

/** Writes the policy file as writeSettingsFile writes agent.env: a fresh temp file made 0600 beside it (O_EXCL),
 *  flushed to disk, then renamed over the old one, so the running agent, which rereads the file when it changes,
 *  never sees half of it. The directory is made 0700 when missing and otherwise left alone: POLICY_FILE may name
 *  one that is not the agent's own. */
function writePolicyFile(file: string, preset: PresetName): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writePrivately(file, policyText(preset));
}

/** A new policy file: the preset, and every other setting explained in comments, ready to uncomment. The format is
 *  agent/policy.ts's; docs/SETUP.md describes it at length. */
function policyText(preset: PresetName): string {
  return `# What an assistant may do on this machine: the Code Remote agent's policy, written by \`code-remote-agent setup\`.
# It is yours to edit: the agent rereads it when it changes, no restart needed. If an edit leaves it broken, the
# agent refuses every call, saying what is wrong, until you fix it. Neither the relay nor the assistant can change
# it (no file tool reaches it); but a shell command can, like any file of yours, while run_shell_command is "allow":
# keep commands on "ask" or "deny" for this file to hold against the assistant.
#
# The preset is where the rules below start from:
${presetList().map((p) => `#   ${`"${p.name}"`.padEnd(16)} ${p.line}`).join("\n")}
# (kill_command, stopping a command the assistant started, runs in every preset; check_agent_status always does.)
# A call that asks waits for you on the relay's dashboard, which works on a phone (or a push notification, with the
# relay's APPROVAL_WEBHOOK_URL), for approval_timeout at most.
preset = "${preset}"

# How long a call waits for your approval before it fails, in seconds (default 600). Keep it above the sections.
# approval_timeout = 600

# Who may approve: "relay" (default) takes your answer as the relay carries it, so whoever controls the relay could
# answer too; "passkey" runs such a call only when a passkey enrolled on this machine signed that exact call (enrol
# one with: code-remote-agent enroll-owner). Keep it above the sections.
# approvals = "passkey"

# [tools]: "allow", "ask" or "deny" per tool, over the preset. Reads: read_file, list_directory, search_files,
# file_info, get_command_output, list_commands. Changes: write_file, edit_file. Commands: run_shell_command,
# send_command_input (typing into a running command). And kill_command.
# [tools]
# run_shell_command = "ask"
# write_file = "deny"

# [paths.read] (read_file, list_directory, search_files, file_info, and edit_file, which reads too) and
# [paths.change] (write_file, edit_file): lists of globs on real paths, within the allowed roots. "~" is your home directory,
# "*" any characters within one path segment, "**" any depth; a trailing "/**" matches the directory itself too.
# [paths.read]
# deny = ["~/.ssh/**", "~/.aws/**"]
# [paths.change]
# allow = ["~/src/**"]
# ask = []
# deny = ["~/.ssh/**"]

# [commands]: rules for run_shell_command, matched on the words of a command. A "*" as the whole last word matches
# any further words (or none); "*" or "?" inside a word match characters of that word. An allow rule lets only a
# simple command through: plain words, quoted or not, with none of ; & | < > ( ) $ \` \\ # * ? [ ] { } ~ ! ^ or a
# newline outside quotes, no NAME=value first, no env and no other shell (so "git status" never lets
# "git status; rm -rf ~" through). Deny and ask rules are checked on every command found in the text, even inside
# $( ) or after sudo or sh -c; that is best effort, since a shell can always build a command no scan sees. And an
# allowed command runs what its files say: "npm test" runs package.json's script, git what .git/config names.
# [commands]
# allow = ["git status", "git diff *", "npm test"]
# ask = []
# deny = ["rm -rf *", "sudo *"]

# For each call, the first that applies: a deny rule; the tool on "deny"; an ask rule; an allow rule; the tool's
# setting (from [tools], else the preset). A refusal or a question names the rule that decided it.
`;
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
