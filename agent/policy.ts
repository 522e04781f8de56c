// The owner's policy: what an assistant may do on this machine, read from policy.toml (beside agent.env, or
// POLICY_FILE). A preset gives every tool a setting (allow, ask or deny), [tools] overrides it per tool, and rules
// on paths and commands refine it. Judging a call, the first that applies wins: a deny rule, the tool set to deny,
// an ask rule, an allow rule, the tool's setting. The file is the owner's: nothing the relay or the model sends
// changes it (no file tool reaches it, see own-files.ts), and it is re-read when it changes.
//
// Command rules match words. An allow rule matches only a simple command, whose words are exactly what runs; deny
// and ask rules match, best effort, every command a scan of the text can find. A shell can build a command no scan
// sees ($(printf rm) -rf ~), so with run_shell_command on allow a deny rule is a guardrail, not a boundary.

import * as fs from "node:fs";
import * as path from "node:path";
import { z } from "zod";
import { logger } from "../log.ts";
import type { AgentOp, PolicySummary } from "../protocol.ts";
import { ConfigError } from "./config.ts";
import { realLocation } from "./paths.ts";

export type { PolicySummary };

const log = logger("agent");

export type Verdict = "allow" | "ask" | "deny";
const VERDICTS = ["allow", "ask", "deny"] as const satisfies readonly Verdict[];

/** What the policy says about one call, and the rule that decided it, in words the model and the owner can read. */
export interface Judgement {
  verdict: Verdict;
  rule: string;
}

export const PRESETS = ["open", "ask-to-change", "read-only"] as const;
/** Who may answer the policy's questions: the owner through the relay, or only the owner's enrolled passkey. */
export const APPROVAL_MODES = ["relay", "passkey"] as const;
export type ApprovalMode = (typeof APPROVAL_MODES)[number];
export type PresetName = (typeof PRESETS)[number];

export interface Policy {
  /** "fail-closed" when the file broke or went away while the agent runs: every call but status is refused. */
  readonly preset: PresetName | "fail-closed";
  readonly approvalTimeoutMs: number;
  readonly approvals: ApprovalMode;
  /** realPath: the call's path already resolved by the caller to a real path (file tools only). */
  judge(op: AgentOp, args: Record<string, unknown>, realPath?: string): Judgement;
  /** Whether a paths.read rule denies or asks about reading `realPath`: listings and searches that walk past it leave
   *  it out (a walk cannot stop to ask), so `search_files ~` cannot read inside a denied or guarded ~/.ssh; and a
   *  change to such a file is shown to the owner by its size, not its content. */
  hides(realPath: string): boolean;
  /** Whether any rule looks at paths: when none does, a call's path need not be resolved to judge it. */
  readonly judgesPaths: boolean;
  summary(): PolicySummary;
}

export class PolicyError extends Error {}

// --- tools and presets ---

/** What a tool does, for the presets. Every op but status is here, so a new op fails to compile until it has one. */
const TOOL_CLASSES = {
  read_file: "read",
  list_directory: "read",
  search_files: "read",
  file_info: "read",
  get_command_output: "read",
  list_commands: "read",
  write_file: "change",
  edit_file: "change",
  run_shell_command: "command",
  send_command_input: "command",
  kill_command: "kill",
} as const satisfies Record<Exclude<AgentOp, "status">, string>;

type Tool = keyof typeof TOOL_CLASSES;
type ToolClass = (typeof TOOL_CLASSES)[Tool];
const TOOLS = Object.keys(TOOL_CLASSES) as Tool[];

const PRESET_SETTINGS: Record<PresetName, Record<ToolClass, Verdict>> = {
  open: { read: "allow", change: "allow", command: "allow", kill: "allow" },
  "ask-to-change": { read: "allow", change: "ask", command: "ask", kill: "allow" },
  "read-only": { read: "allow", change: "deny", command: "deny", kill: "allow" },
};

/** The file tools, and which of the [paths] tables their path is judged by. */
const PATH_TOOLS: Partial<Record<Tool, "read" | "change">> = {
  read_file: "read",
  list_directory: "read",
  search_files: "read",
  file_info: "read",
  write_file: "change",
  edit_file: "change",
};

const STATUS: Judgement = { verdict: "allow", rule: "status (check_agent_status) is always allowed" };

// --- the file ---

const DEFAULT_APPROVAL_TIMEOUT_S = 600;
const MAX_APPROVAL_TIMEOUT_S = 24 * 60 * 60;

/** A table of the file: an unknown key in it is an error that lists the keys it may have. */
const table = <S extends z.ZodRawShape>(shape: S) =>
  z.strictObject(shape, {
    error: (issue) => (issue.code === "unrecognized_keys" ? `the keys here are ${Object.keys(shape).join(", ")}` : "must be a table"),
  });

const VerdictSetting = z.enum(VERDICTS, { error: 'must be "allow", "ask" or "deny"' }).optional();

const GLOBS_ERROR = 'must be a list of globs, e.g. ["~/.ssh/**"]';
const Glob = z
  .string({ error: 'must be a glob in quotes, e.g. "~/.ssh/**"' })
  .refine((glob) => glob === "~" || glob.startsWith("~/") || glob.startsWith("/"), {
    error: (issue) => `${JSON.stringify(issue.input)} is relative: start it with / or ~/ (globs match real paths)`,
  });

const COMMANDS_ERROR = 'must be a list of commands, e.g. ["git status", "ls *"]';
const CommandRule = z
  .string({ error: 'must be a command in quotes, e.g. "git status"' })
  .refine((rule) => rule.trim() !== "", { error: "holds an empty command" })
  .refine((rule) => !/[\0-\x1f\x7f]/.test(rule.trim()), { error: "holds a control character (a newline?): a rule is words on one line" });

const rulesTable = <T extends z.ZodType<string>>(rule: T, error: string) => {
  const list = z.array(rule, { error }).prefault([]);
  return table({ allow: list, ask: list, deny: list }).prefault({});
};

const TIMEOUT_ERROR = `must be a whole number of seconds from 1 to ${MAX_APPROVAL_TIMEOUT_S}`;

const PolicyFile = table({
  // Required: an empty or half-written file (an editor saving in place) must not read as "open".
  preset: z.enum(PRESETS, { error: (issue) => `${issue.input === undefined ? "is missing: name one of" : "must be one of"} ${PRESETS.map((p) => `"${p}"`).join(", ")}` }),
  approval_timeout: z
    .number({ error: TIMEOUT_ERROR })
    .int({ error: TIMEOUT_ERROR })
    .min(1, { error: TIMEOUT_ERROR })
    .max(MAX_APPROVAL_TIMEOUT_S, { error: TIMEOUT_ERROR })
    .default(DEFAULT_APPROVAL_TIMEOUT_S),
  // "relay": the owner's answer as the relay carries it; "passkey": only an answer signed by a passkey the agent
  // enrolled (enroll-owner) counts, so whoever controls the relay cannot approve.
  approvals: z.enum(APPROVAL_MODES, { error: `must be one of ${APPROVAL_MODES.map((m) => `"${m}"`).join(", ")}` }).default("relay"),
  tools: table(Object.fromEntries(TOOLS.map((tool) => [tool, VerdictSetting]))).prefault({}),
  paths: table({ read: rulesTable(Glob, GLOBS_ERROR), change: rulesTable(Glob, GLOBS_ERROR) }).prefault({}),
  commands: rulesTable(CommandRule, COMMANDS_ERROR),
});
type PolicySettings = z.infer<typeof PolicyFile>;

/** Parses and checks the text of a policy file. Throws a PolicyError that names the file, and the key or line. */
export function parsePolicy(text: string, file: string, home: string): Policy {
  let raw: unknown;
  try {
    raw = Bun.TOML.parse(text);
  } catch (e) {
    const message = (e as Error).message;
    const line = errorLine(text, message);
    throw new PolicyError(`${file}${line ? `, line ${line}` : ""}: not valid TOML (${message.replace(/^TOML Parse error: /, "")}).`);
  }
  const parsed = PolicyFile.safeParse(raw);
  if (!parsed.success) throw new PolicyError(`${file}: ${parsed.error.issues.map(describeIssue).join("; ")}.`);
  return new RulePolicy(parsed.data, file, home);
}

/** Bun's TOML errors carry no position: the line is the first at which the file's beginning fails the same way. */
function errorLine(text: string, message: string): number | undefined {
  const lines = text.split("\n");
  for (let n = 1; n <= lines.length; n++) {
    try {
      Bun.TOML.parse(lines.slice(0, n).join("\n") + "\n");
    } catch (e) {
      if ((e as Error).message === message) return n;
    }
  }
  return undefined;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = keyName(issue.path);
  if (issue.code === "unrecognized_keys") {
    const unknown = issue.keys.map((k) => (key ? `${key}.${k}` : k)).join(", ");
    return `unknown key${issue.keys.length > 1 ? "s" : ""} ${unknown} (${issue.message})`;
  }
  return `${key || "the file"} ${issue.message}`;
}

/** A key as the owner would write it: paths.read.deny[0]. */
const keyName = (keys: readonly PropertyKey[]) => keys.map((k, i) => (typeof k === "number" ? `[${k}]` : `${i ? "." : ""}${String(k)}`)).join("");

// --- rules ---

/** A rule compiled once per load, and how a judgement names it: paths.change.deny "~/.ssh/**". */
interface PathRule {
  name: string;
  text: string;
  pattern: RegExp;
}

interface CommandRule {
  name: string;
  text: string;
  /** One pattern per word of the rule, its last "*" excepted. */
  words: RegExp[];
  /** The rule ended in a "*" word: any further words match (none included). */
  anyMore: boolean;
}

type RuleSet<R> = Record<Verdict, R[]>;

const ruleSet = <R>(lists: Record<Verdict, string[]>, compile: (text: string, name: string) => R): RuleSet<R> => ({
  allow: lists.allow.map((text) => compile(text, "allow")),
  ask: lists.ask.map((text) => compile(text, "ask")),
  deny: lists.deny.map((text) => compile(text, "deny")),
});

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

/** A glob as a RegExp on real paths. Its literal directories are resolved like the roots (realLocation: /tmp is
 *  /private/tmp on macOS, ~/.ssh may be a link), as the caller passes the call's real path; "*" is any characters
 *  within a segment, a "**" segment any depth, so a trailing "/**" also matches the directory itself. */
function compileGlob(glob: string, home: string): RegExp {
  const parts = path.normalize(expandTilde(glob, home)).split("/").filter(Boolean);
  const firstPattern = parts.findIndex((part) => part.includes("*"));
  const literal = firstPattern < 0 ? parts.length : firstPattern;
  const prefix = realLocation("/" + parts.slice(0, literal).join("/"));
  let source = prefix === "/" ? "" : escapeRegExp(prefix);
  for (const part of parts.slice(literal)) {
    source += part === "**" ? "(?:/.*)?" : "/" + part.split("*").map(escapeRegExp).join("[^/]*");
  }
  return new RegExp(`^${source || "/"}$`, CASE_INSENSITIVE_FILES ? "si" : "s");
}

const expandTilde = (input: string, home: string) => (input === "~" || input.startsWith("~/") ? home + input.slice(1) : input);

/** macOS and Windows name files case-insensitively by default, and a real path keeps the case it was asked with:
 *  ~/.SSH/id_rsa is ~/.ssh/id_rsa there, so a rule must match it too. */
const CASE_INSENSITIVE_FILES = process.platform === "darwin" || process.platform === "win32";

/** A command rule: words separated by spaces (no quoting); "*" as the whole last word matches any further words,
 *  "*" and "?" inside a word match characters of that word. `ignoreCase` for deny and ask rules where files are named
 *  case-insensitively (RM runs rm there); an allow rule keeps its case everywhere: a program's options do (ls -L is
 *  not ls -l), and a miss only leaves the call to the tool's setting. */
function compileCommandRule(text: string, name: string, ignoreCase: boolean): CommandRule {
  const words = text.trim().split(/\s+/);
  const anyMore = words.at(-1) === "*";
  const patterns = (anyMore ? words.slice(0, -1) : words).map((word) => {
    const source = word.split(/([*?])/).map((piece) => (piece === "*" ? ".*" : piece === "?" ? "." : escapeRegExp(piece)));
    return new RegExp(`^${source.join("")}$`, ignoreCase ? "sui" : "su");
  });
  return { name: `${name} ${JSON.stringify(text)}`, text, words: patterns, anyMore };
}

function matchesWords(rule: CommandRule, words: readonly string[]): boolean {
  if (rule.anyMore ? words.length < rule.words.length : words.length !== rule.words.length) return false;
  return rule.words.every((pattern, i) => pattern.test(words[i]!));
}

// --- the words of a command ---

/** Characters a word of a simple command may hold outside quotes: nothing a shell expands, splits or redirects on. */
const PLAIN = /^[A-Za-z0-9_\-.\/,:=+@%]$/;
/** Inside double quotes, what a shell (or fish, or an interactive one) would still expand or escape; anywhere, a
 *  control character. */
const EXPANDS_IN_DOUBLE_QUOTES = /[$`\\!\0-\x1f\x7f]/;
/** Inside single quotes: fish reads \' and \\ as escapes there, and no word of a rule needs them. */
const ESCAPES_IN_SINGLE_QUOTES = /[\\\0-\x1f\x7f]/;
const ASSIGNMENT = /^[A-Za-z_][A-Za-z0-9_]*=/;
/** Words a shell reads before a command rather than as one: `if rm -rf x; then` runs rm. */
const KEYWORDS = new Set(["!", "{", "}", "if", "then", "elif", "else", "fi", "while", "until", "do", "done"]);

/** Exported for tests and for the approval summary: the words of a simple command, or undefined when the text has
 *  shell syntax that could run something else. A simple command is words separated by spaces or tabs, each made of
 *  letters, digits and _ - . / , : = + @ % (a word starting with "=" refused: zsh expands it), 'single-quoted' text
 *  without \ or control characters, and "double-quoted" text without $ ` \ ! or control characters; and its first
 *  word is no NAME=value assignment (it would set a variable for the program: LD_PRELOAD, GIT_DIR). Everything
 *  else is refused: ; & | < > ( ) $ ` \ # * ? [ ] { } ~ ! ^ newlines and other control characters, non-ASCII outside
 *  quotes, an unclosed quote. */
export function simpleCommandWords(text: string): string[] | undefined {
  const words: string[] = [];
  let word: string | undefined; // undefined between words, so '' is a word of its own
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === " " || c === "\t") {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      const quoted = text.slice(i + 1, end);
      if (end < 0 || (c === "'" ? ESCAPES_IN_SINGLE_QUOTES : EXPANDS_IN_DOUBLE_QUOTES).test(quoted)) return undefined;
      word = (word ?? "") + quoted;
      i = end;
    } else {
      if (!PLAIN.test(c) || (c === "=" && word === undefined)) return undefined;
      word = (word ?? "") + c;
    }
  }
  if (word !== undefined) words.push(word);
  if (words.length === 0 || ASSIGNMENT.test(words[0]!)) return undefined;
  return words;
}

/** Programs that run the rest of their words as a command, after options of their own, which are not parsed: each
 *  of the next few words is tried as the start of the command. With them the keywords function and coproc, which may
 *  name something before their command (function f { rm -rf x; }, coproc rm -rf x). */
const WRAPPER_STARTS = 8;
const WRAPPERS = new Set([
  "sudo", "doas", "pkexec", "runuser", "env", "command", "builtin", "exec", "nohup", "setsid", "xargs", "busybox",
  "nice", "ionice", "chrt", "taskset", "time", "timeout", "stdbuf", "flock", "unshare", "function", "coproc",
]);
/** Shells (and su): their -c option is a command line of its own, and so is their stdin. */
const SHELLS = new Set(["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "su"]);
/** Programs whose -c option (alone or among one-letter options: -lc, -qc) or --command is a command line. */
const COMMAND_OPTION = new Set([...SHELLS, "script", "flock", "runuser"]);
/** Options taking an argument, stepped over on the way to a shell's command line (bash -c -o pipefail '…'), to
 *  watch's command (watch -n 5 '…') and to env -S (env -u X -S '…'), whose text env splits into words. */
const SHELL_ARGUMENT = /^[-+][A-Za-z]*[oO]$/;
const WATCH_ARGUMENT = /^(?:-n|--interval|-q|--equexit)$/;
const ENV_ARGUMENT = /^(?:-u|-C|-a|--unset|--chdir|--argv0)$/;
const ENV_SPLIT = /^(?:-[iv0]*S|--split-string=?)/;
/** Programs commandForms follows into other commands: after a wrapper, the first of these is followed further. */
const RUNS_COMMANDS = new Set([...WRAPPERS, ...COMMAND_OPTION, "eval", "watch", "find"]);
/** find's actions that run a command: the words after them up to ";" (or "+" after "{}"). */
const FIND_EXEC = new Set(["-exec", "-execdir", "-ok", "-okdir"]);
/** A brace expansion makes at most this many words of a word, and expands at most this many groups in it: it bounds
 *  the work. */
const BRACE_WORDS = 16;
/** Commands nested deeper than this ($( ) in $( ), sh -c in eval…) are not looked into: it bounds the work. */
const MAX_NESTING = 8;

/** Every command the text could run, best effort, as lists of words, for deny and ask rules: the text split into
 *  commands on ; & | newlines and parentheses outside quotes, the insides of $( ) and backquotes (in double quotes
 *  too), and for each command its forms in commandForms. Quotes and backslashes are removed as a shell would, $'…'
 *  decoded, and a word with a { outside quotes brace-expanded ({rm,-rf,~} is rm -rf ~). A here-string (<<< text)
 *  given to a shell is its stdin: its commands are looked into too. */
function commandsIn(text: string, nesting = 0, found: string[][] = []): string[][] {
  let words: string[] = [];
  let word: string | undefined;
  let wordBraced = false;
  const braced = new Set<number>(); // the words to brace-expand
  let hereString = false; // the next word follows <<<
  let hereStrings: string[] = [];
  const endWord = () => {
    if (word !== undefined) {
      if (wordBraced) braced.add(words.length);
      if (hereString) hereStrings.push(word);
      words.push(word);
      hereString = false;
    }
    word = undefined;
    wordBraced = false;
  };
  const endCommand = () => {
    endWord();
    if (words.length > 0) {
      const before = found.length;
      commandForms(braced.size > 0 ? words.flatMap((w, i) => (braced.has(i) ? expandBraces(w) : [w])) : words, nesting, found);
      if (hereStrings.length > 0 && nesting < MAX_NESTING && found.slice(before).some(runsShell)) {
        for (const script of hereStrings) commandsIn(script, nesting + 1, found);
      }
    }
    words = [];
    braced.clear();
    hereString = false;
    if (hereStrings.length > 0) hereStrings = [];
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    const after = substitution(text, i, nesting, found);
    if (after !== undefined) {
      word ??= "";
      i = after;
    } else if (c === "\\") {
      if (text[i + 1] !== "\n") word = (word ?? "") + (text[i + 1] ?? "");
      i += 2;
    } else if (c === "$" && text[i + 1] === "'") {
      const [value, end] = ansiCQuoted(text, i + 2);
      word = (word ?? "") + value;
      i = end;
    } else if (c === "$" && text[i + 1] === '"') {
      i++; // $"…" is "…", translated
    } else if (c === "'") {
      const end = closing(text, i + 1, "'");
      word = (word ?? "") + text.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      word ??= "";
      i = doubleQuoted(text, i + 1, nesting, found, (part) => (word = (word ?? "") + part));
    } else if (";&|\n()".includes(c)) {
      endCommand();
      i++;
    } else if (c === "<" && text.startsWith("<<<", i)) {
      endWord();
      hereString = true;
      i += 3;
    } else if (c === " " || c === "\t" || c === "<" || c === ">") {
      endWord();
      i++;
    } else {
      if (c === "{") wordBraced = true;
      word = (word ?? "") + c;
      i++;
    }
  }
  endCommand();
  return found;
}

/** A shell runs these words (sudo bash, /bin/sh -s): its stdin is a script. */
const runsShell = (words: readonly string[]) => words.length > 0 && SHELLS.has(programOf(words[0]!));

/** The program a command's first word names, as the sets above spell it: its base name (/bin/rm is rm), in lower case
 *  where files are named case-insensitively (SUDO runs sudo there). */
const programOf = (word: string) => (CASE_INSENSITIVE_FILES ? path.basename(word).toLowerCase() : path.basename(word));

/** Reads $'…' text from `start` (after the quote), its escapes decoded as bash does ($'\x72m' is rm); returns the
 *  text and the index after the closing quote. */
function ansiCQuoted(text: string, start: number): [string, number] {
  let end = start;
  while (end < text.length && text[end] !== "'") end += text[end] === "\\" ? 2 : 1;
  const value = text.slice(start, end).replace(/\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)/gs, (_, escape: string) => {
    if (/^[xuU]./.test(escape)) {
      const code = parseInt(escape.slice(1), 16);
      return code <= 0x10ffff ? String.fromCodePoint(code) : "";
    }
    if (/^[0-7]/.test(escape)) return String.fromCharCode(parseInt(escape, 8) & 0xff);
    if (/^c./s.test(escape)) return String.fromCharCode(escape.charCodeAt(1) & 0x1f);
    return C_ESCAPES[escape] ?? escape;
  });
  return [value, end + 1];
}
const C_ESCAPES: Record<string, string> = { a: "\x07", b: "\b", e: "\x1b", E: "\x1b", f: "\f", n: "\n", r: "\r", t: "\t", v: "\v" };

/** The words a shell makes of a word by brace expansion: {rm,-rf,~} is rm -rf ~, a{b,c}d is abd acd. It bounds the
 *  work: at most BRACE_WORDS words, from the first BRACE_WORDS groups of a part and the first BRACE_WORDS choices of
 *  a group, and a word with braces nested deeper than MAX_NESTING is left as it is. So are sequences ({1..3}). */
function expandBraces(word: string): string[] {
  // One pass pairs each { with its } and notes the commas directly inside: a pair with commas is a group.
  const groups = new Map<number, { end: number; commas: number[] }>();
  const open: { start: number; commas: number[] }[] = [];
  let deepest = 0;
  for (let i = 0; i < word.length; i++) {
    if (word[i] === "{") deepest = Math.max(deepest, open.push({ start: i, commas: [] }));
    else if (word[i] === "," && open.length > 0) open.at(-1)!.commas.push(i);
    else if (word[i] === "}" && open.length > 0) {
      const pair = open.pop()!;
      if (pair.commas.length > 0) groups.set(pair.start, { end: i, commas: pair.commas });
    }
  }
  if (groups.size === 0 || deepest > MAX_NESTING) return [word];
  /** The words of word[start, end): each group in it (the first few) makes a choice of its parts' words. */
  const expand = (start: number, end: number): string[] => {
    let results = [""];
    let from = start; // where the text not yet added starts
    for (let i = start, expanded = 0; i < end && expanded < BRACE_WORDS; i++) {
      const group = groups.get(i);
      if (!group) continue;
      expanded++;
      const bounds = [i, ...group.commas.slice(0, BRACE_WORDS - 1), group.end];
      const choices: string[] = [];
      for (let k = 1; k < bounds.length && choices.length < BRACE_WORDS; k++) choices.push(...expand(bounds[k - 1]! + 1, bounds[k]!));
      const literal = word.slice(from, i);
      results = results.flatMap((result) => choices.slice(0, BRACE_WORDS).map((choice) => result + literal + choice)).slice(0, BRACE_WORDS);
      i = group.end;
      from = group.end + 1;
    }
    return results.map((result) => result + word.slice(from, end));
  };
  return expand(0, word.length);
}

/** Reads double-quoted text from `start` (after the quote), handing its characters to `add` and the commands in
 *  its substitutions to `found`; returns the index after the closing quote. */
function doubleQuoted(text: string, start: number, nesting: number, found: string[][], add: (part: string) => void): number {
  let i = start;
  while (i < text.length && text[i] !== '"') {
    const after = substitution(text, i, nesting, found);
    if (after !== undefined) {
      i = after;
    } else if (text[i] === "\\" && '$`"\\\n'.includes(text[i + 1] ?? "")) {
      if (text[i + 1] !== "\n") add(text[i + 1]!);
      i += 2;
    } else {
      add(text[i]!);
      i++;
    }
  }
  return i + 1;
}

/** At a $( ) or backquoted command: scans its inside as commands of their own and returns the index after it. */
function substitution(text: string, i: number, nesting: number, found: string[][]): number | undefined {
  let inside: [number, number];
  if (text[i] === "`") inside = [i + 1, closing(text, i + 1, "`")];
  else if (text[i] === "$" && text[i + 1] === "(") inside = [i + 2, closingParen(text, i + 2)];
  else return undefined;
  if (nesting < MAX_NESTING) commandsIn(text.slice(...inside), nesting + 1, found);
  return inside[1] + 1;
}

/** Where the unescaped `quote` closing text from `start` is (the end of the text if none). */
function closing(text: string, start: number, quote: string): number {
  for (let i = start; i < text.length; i++) {
    if (text[i] === quote) return i;
    if (text[i] === "\\" && quote !== "'") i++;
  }
  return text.length;
}

/** Where the parenthesis that closes one opened before `start` is, skipping quoted text (the end of the text if
 *  none). */
function closingParen(text: string, start: number): number {
  let depth = 1;
  for (let i = start; i < text.length; i++) {
    const c = text[i]!;
    if (c === "\\") i++;
    else if (c === "'" || c === '"') i = closing(text, i + 1, c);
    else if (c === "(") depth++;
    else if (c === ")" && --depth === 0) return i;
  }
  return text.length;
}

/** A command's forms, as rules should see them: its plain forms (plainForms); after a wrapper, the plain forms of
 *  every start (sudo -u root rm: "root rm", "rm", ...); the commands of a command line it runs (commandLine); and
 *  find's -exec commands. */
function commandForms(words: string[], nesting: number, found: string[][]): string[][] {
  const rest = plainForms(words, found);
  if (!rest || nesting >= MAX_NESTING) return found;
  const program = programOf(rest[0]!);
  const line = commandLine(program, rest);
  if (WRAPPERS.has(program)) {
    let next: string[] | undefined;
    for (let start = 1; start < Math.min(rest.length, 1 + WRAPPER_STARTS); start++) {
      const command = plainForms(rest.slice(start), found);
      if (!next && command && RUNS_COMMANDS.has(programOf(command[0]!))) next = command;
    }
    // Of these guesses, the first that runs commands again (sudo nice rm, timeout 5 sh -c '…') is followed further,
    // unless the wrapper has a command line of its own (flock -c '…'): one path, so the work stays linear.
    if (next && line === undefined) commandForms(next, nesting + 1, found);
  }
  if (line !== undefined) commandsIn(line, nesting + 1, found);
  if (program === "find") {
    for (let i = 1; i < rest.length; i++) {
      if (!FIND_EXEC.has(rest[i]!)) continue;
      let end = i + 1;
      while (end < rest.length && rest[end] !== ";" && !(rest[end] === "+" && rest[end - 1] === "{}")) end++;
      if (end > i + 1) commandForms(rest.slice(i + 1, end), nesting + 1, found);
      i = end;
    }
  }
  return found;
}

/** Adds a command's plain forms: its words as they are; without leading NAME=value assignments and keywords; with its
 *  program as programOf names it (/bin/rm is rm). Returns the words from the program on, if any. */
function plainForms(words: string[], found: string[][]): string[] | undefined {
  found.push(words);
  const start = words.findIndex((word) => !ASSIGNMENT.test(word) && !KEYWORDS.has(word));
  if (start < 0) return undefined;
  const rest = start === 0 ? words : words.slice(start);
  if (start > 0) found.push(rest);
  const program = programOf(rest[0]!);
  if (program !== rest[0]) found.push([program, ...rest.slice(1)]);
  return rest;
}

/** The command line a program runs as text, if it does: the -c (or --command) of a shell, su, script, flock or
 *  runuser, past other options (bash -c -- '…'); env -S, whose text env splits into words (env -S 'rm -rf' ~ is env
 *  rm -rf ~); eval's words; watch's words, which it runs with sh -c. */
function commandLine(program: string, words: string[]): string | undefined {
  if (program === "eval") return words.slice(1).join(" ");
  if (program === "watch") return words.slice(firstOperand(words, 1, WATCH_ARGUMENT)).join(" ");
  if (program === "env") {
    for (let i = 1; i < words.length && words[i]!.startsWith("-"); i++) {
      if (ENV_SPLIT.test(words[i]!)) return ["env", words[i]!.replace(ENV_SPLIT, ""), ...words.slice(i + 1)].join(" ");
      if (ENV_ARGUMENT.test(words[i]!)) i++;
    }
    return undefined;
  }
  if (!COMMAND_OPTION.has(program)) return undefined;
  const at = words.findIndex((word, i) => i > 0 && (/^-[A-Za-z]*c[A-Za-z]*$/.test(word) || /^--command(?:=|$)/.test(word)));
  if (at < 0) return undefined;
  if (words[at]!.startsWith("--command=")) return words[at]!.slice("--command=".length);
  return words[firstOperand(words, at + 1, SHELL_ARGUMENT)];
}

/** The index of the first word from `start` that is no option: past "--", and past the argument of an option that
 *  `takesArgument` matches. */
function firstOperand(words: string[], start: number, takesArgument: RegExp): number {
  for (let i = start; i < words.length; i++) {
    const word = words[i]!;
    if (word === "--") return i + 1;
    if (!/^[-+]/.test(word)) return i;
    if (takesArgument.test(word)) i++;
  }
  return words.length;
}

/** Every command a run_shell_command call could run, best effort; a shell fed a script on stdin runs that too. */
function commandsOfCall(argv: string[] | undefined, command: string, stdin: unknown): string[][] {
  const found = argv ? commandForms(argv, 0, []) : commandsIn(command);
  if (typeof stdin === "string" && found.some(runsShell)) commandsIn(stdin, 1, found);
  return found;
}

// --- judging ---

/** The policy a valid file (or none) gives. */
class RulePolicy implements Policy {
  readonly preset: PresetName;
  readonly approvalTimeoutMs: number;
  readonly approvals: ApprovalMode;
  readonly #file: string | null;
  readonly #home: string;
  readonly #settings: Record<Tool, Judgement>;
  /** edit_file with dry_run is judged as a read of its path. */
  readonly #dryRunSetting: Judgement;
  readonly #reads: RuleSet<PathRule>;
  readonly #changes: RuleSet<PathRule>;
  /** edit_file also reads the file (its diff, and the closest lines when an edit misses, show what is there), so
   *  read denies and asks bind it as well as its change rules. */
  readonly #edits: RuleSet<PathRule>;
  readonly #commands: RuleSet<CommandRule>;

  constructor(settings: PolicySettings, file: string | null, home: string) {
    this.preset = settings.preset;
    this.approvalTimeoutMs = settings.approval_timeout * 1000;
    this.approvals = settings.approvals;
    this.#file = file;
    this.#home = home;
    this.#settings = Object.fromEntries(TOOLS.map((tool) => [tool, toolSetting(settings, tool)])) as Record<Tool, Judgement>;
    const read = this.#settings.read_file;
    this.#dryRunSetting = { verdict: read.verdict, rule: `edit_file with dry_run is judged as a read: ${read.rule}` };
    const paths = (table: "read" | "change") => ruleSet(settings.paths[table], (glob, verdict) => ({ name: `paths.${table}.${verdict} ${JSON.stringify(glob)}`, text: glob, pattern: compileGlob(glob, home) }));
    this.#reads = paths("read");
    this.#changes = paths("change");
    this.#edits = { allow: this.#changes.allow, ask: [...this.#changes.ask, ...this.#reads.ask], deny: [...this.#changes.deny, ...this.#reads.deny] };
    this.#commands = ruleSet(settings.commands, (text, verdict) => compileCommandRule(text, `commands.${verdict}`, CASE_INSENSITIVE_FILES && verdict !== "allow"));
  }

  judge(op: AgentOp, args: Record<string, unknown>, realPath?: string): Judgement {
    if (op === "status") return STATUS;
    const dryRun = op === "edit_file" && args.dry_run === true;
    const setting = dryRun ? this.#dryRunSetting : this.#settings[op];
    const match = this.#matcher(op, args, realPath, dryRun);
    const denied = match("deny");
    if (denied) return { verdict: "deny", rule: denied };
    if (setting.verdict === "deny") return setting;
    const asked = match("ask");
    if (asked) return { verdict: "ask", rule: asked };
    const allowed = match("allow");
    if (allowed) return { verdict: "allow", rule: allowed };
    return setting;
  }

  hides(realPath: string): boolean {
    return this.#reads.deny.some((rule) => rule.pattern.test(realPath)) || this.#reads.ask.some((rule) => rule.pattern.test(realPath));
  }

  get judgesPaths(): boolean {
    return [this.#reads, this.#changes].some((rules) => VERDICTS.some((verdict) => rules[verdict].length > 0));
  }

  /** The name of the first rule of a verdict that matches the call, if any. */
  #matcher(op: Tool, args: Record<string, unknown>, realPath: string | undefined, dryRun: boolean): (verdict: Verdict) => string | undefined {
    const table = dryRun ? "read" : PATH_TOOLS[op];
    if (table && typeof args.path === "string") {
      const rules = op === "edit_file" && !dryRun ? this.#edits : table === "read" ? this.#reads : this.#changes;
      // Resolved only when a rule could match: with no path rules (the presets alone) a call costs no realpath here.
      let target = realPath;
      return (verdict) => {
        if (rules[verdict].length === 0) return undefined;
        target ??= realLocation(expandTilde(args.path as string, this.#home));
        return rules[verdict].find((rule) => rule.pattern.test(target!))?.name;
      };
    }
    if (op === "run_shell_command") return this.#commandMatcher(args);
    return () => undefined;
  }

  /** Deny and ask rules match any command found in the call (best effort); allow rules only a simple command that
   *  sets no variables and runs in the agent's shell: BASH_ENV, LD_PRELOAD or GIT_* can make any program run
   *  anything, and another shell is another program. argv (no shell) is a simple command: its words are argv. */
  #commandMatcher(args: Record<string, unknown>): (verdict: Verdict) => string | undefined {
    const argv = Array.isArray(args.argv) ? args.argv.map(String) : undefined;
    const command = typeof args.command === "string" ? args.command : "";
    let found: string[][] | undefined;
    return (verdict) => {
      if (this.#commands[verdict].length === 0) return undefined;
      if (verdict !== "allow") {
        found ??= commandsOfCall(argv, command, args.stdin);
        return this.#commands[verdict].find((rule) => found!.some((words) => matchesWords(rule, words)))?.name;
      }
      const setsEnv = typeof args.env === "object" && args.env !== null && Object.keys(args.env).length > 0;
      if (setsEnv || args.shell !== undefined) return undefined;
      const words = argv ?? simpleCommandWords(command);
      return words && this.#commands.allow.find((rule) => matchesWords(rule, words))?.name;
    };
  }

  summary(): PolicySummary {
    const parts: Record<Verdict, string[]> = { allow: [], ask: [], deny: [] };
    for (const group of SUMMARY_GROUPS) {
      const settings = group.tools.map((tool) => this.#settings[tool].verdict);
      const rules = group.rules ? this.#rulesOf(group.rules) : undefined;
      const shown = VERDICTS.filter((verdict) => rules && rules[verdict].length > 0 && ruleApplies(verdict, settings));
      if (settings.every((verdict) => verdict === settings[0])) parts[settings[0]!].push(shown.length ? `other ${group.words}` : group.words);
      else group.tools.forEach((tool, i) => parts[settings[i]!].push(tool));
      for (const verdict of shown) parts[verdict].push(`${RULE_WORDS[group.rules!]}${rules![verdict].map((rule) => rule.text).join(", ")}`);
    }
    const text = (list: string[]) => cap(list.length ? list.join("; ") : "nothing");
    const everything = parts.ask.length === 0 && parts.deny.length === 0;
    const asks = parts.ask.length && this.approvals === "passkey" ? `${text(parts.ask)} (approved only with the owner's passkey)` : text(parts.ask);
    return { preset: this.preset, file: this.#file, allows: everything ? "everything" : text(parts.allow), asks, denies: text(parts.deny) };
  }

  #rulesOf(rules: RuleTable): RuleSet<{ text: string }> {
    return rules === "read" ? this.#reads : rules === "change" ? this.#changes : this.#commands;
  }
}

function toolSetting(settings: PolicySettings, tool: Tool): Judgement {
  const set = settings.tools[tool];
  if (set) return { verdict: set, rule: `tools.${tool} = "${set}"` };
  const verdict = PRESET_SETTINGS[settings.preset][TOOL_CLASSES[tool]];
  return { verdict, rule: `tools.${tool} = "${verdict}" (preset ${settings.preset})` };
}

/** What the summary calls the tools, and the rules that refine each group. */
const SUMMARY_GROUPS: { words: string; tools: Tool[]; rules?: RuleTable }[] = [
  { words: "reads", tools: TOOLS.filter((tool) => TOOL_CLASSES[tool] === "read"), rules: "read" },
  { words: "file changes", tools: ["write_file", "edit_file"], rules: "change" },
  { words: "commands", tools: ["run_shell_command"], rules: "commands" },
  { words: "input to running commands", tools: ["send_command_input"] },
  { words: "stopping commands", tools: ["kill_command"] },
];

type RuleTable = "read" | "change" | "commands";
const RULE_WORDS: Record<RuleTable, string> = { read: "reads in ", change: "file changes in ", commands: "commands: " };

/** Whether rules of `verdict` change anything for tools with these settings (a deny setting beats ask and allow
 *  rules; an allow rule adds nothing to an allow setting, nor an ask rule to ask). */
const ruleApplies = (verdict: Verdict, settings: Verdict[]) =>
  verdict === "deny" ? settings.some((s) => s !== "deny") : settings.includes(verdict === "allow" ? "ask" : "allow");

/** Summary texts stay well within what the status frame allows (2,000 characters each). */
const SUMMARY_MAX_CHARS = 1000;
const cap = (text: string) => (text.length <= SUMMARY_MAX_CHARS ? text : `${text.slice(0, SUMMARY_MAX_CHARS - 1)}…`);

/** The policy while the file is broken or gone: only status runs, and every refusal says why and what to do. */
function failClosed(file: string, problem: string, fix: string): Policy {
  const rule = `${problem} Until the owner ${fix}, every call but check_agent_status is refused (the file is re-read when it changes)`;
  return {
    preset: "fail-closed",
    approvalTimeoutMs: DEFAULT_APPROVAL_TIMEOUT_S * 1000,
    approvals: "passkey",
    judge: (op) => (op === "status" ? STATUS : { verdict: "deny", rule }),
    hides: () => true,
    judgesPaths: false,
    summary: () => ({ preset: "fail-closed", file, allows: "check_agent_status only", asks: "nothing", denies: cap(`everything else: ${problem}`) }),
  };
}

// --- the policy in force ---

/** What changes when the file does (inode, size, times); "missing" when there is none. */
function fileSignature(file: string): string {
  try {
    const stat = fs.statSync(file, { throwIfNoEntry: false });
    return stat ? `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}` : "missing";
  } catch (e) {
    return `unreadable:${(e as NodeJS.ErrnoException).code}`;
  }
}

/** The policy file's text, or undefined when there is no file. Throws a PolicyError when it cannot be read. */
export function readPolicyText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw new PolicyError(`${file}: cannot be read (${code ?? (e as Error).message}).`);
  }
}

/** The file's policy, or undefined when there is no file. Throws a PolicyError when it cannot be read or is invalid. */
function readPolicy(file: string, home: string): Policy | undefined {
  const text = readPolicyText(file);
  return text === undefined ? undefined : parsePolicy(text, file, home);
}

/** The policy in force: loaded at construction (throws ConfigError from ./config.ts when the file is invalid at
 *  start; no file = open), re-read when the file changes (a stat per call); a file broken or removed while running
 *  gives a fail-closed policy (every op but status denied, the rule text says what is wrong and how to fix it),
 *  logged once per change. */
export class PolicySource {
  readonly #file: string;
  readonly #home: string;
  /** The file's signature when #policy was made from it. */
  #seen: string;
  #policy: Policy;

  constructor(file: string, home: string) {
    this.#file = file;
    this.#home = home;
    this.#seen = fileSignature(file); // before reading: a change in between is seen at the next call
    try {
      this.#policy = readPolicy(file, home) ?? new RulePolicy(PolicyFile.parse({ preset: "open" }), null, home);
    } catch (e) {
      if (e instanceof PolicyError) throw new ConfigError(`The policy file is not valid: ${e.message} Fix it (or remove it to run without a policy) and start again.`);
      throw e;
    }
  }

  current(): Policy {
    const signature = fileSignature(this.#file);
    if (signature !== this.#seen) {
      this.#seen = signature;
      this.#policy = this.#reload();
    }
    return this.#policy;
  }

  #reload(): Policy {
    const file = this.#file;
    try {
      const policy = readPolicy(file, this.#home);
      if (policy) {
        log("info", "policy file changed; now in force", { file, preset: policy.preset });
        return policy;
      }
      log("error", "policy file removed; every call but status is refused until it is back", { file });
      return failClosed(file, `the policy file ${file} was removed while the agent was running.`, `puts it back (or restarts the agent, which then runs without a policy, as preset "open")`);
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      log("error", "policy file is not valid; every call but status is refused until it is fixed", { file, problem: e.message });
      return failClosed(file, `the policy file is not valid: ${e.message}`, "fixes it");
    }
  }
}
