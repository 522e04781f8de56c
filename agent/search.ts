// search_files on the agent: file names by glob and contents by regular expression under a directory inside the
// allowed roots. The walk never follows symlinks (so it cannot leave the root or loop), skips .git, node_modules,
// hidden and binary files, and is bounded in results, files visited, file size and time. The regular expression
// comes from the model: a pathological one can backtrack for hours, so matching runs in a worker that is
// terminated when the time is up, and the agent's own loop (heartbeats, other calls) never stalls.

import * as fs from "node:fs";
import * as path from "node:path";
import { FIELD_BUDGET_CHARS, fail, type OpArgs, type OpResult } from "../protocol.ts";
import { fdPath, type FileScope, isOutOfSight, O_DIRECTORY, O_NONBLOCK, O_RDONLY, openChecked, resolveExisting } from "./paths.ts";

/** Directories never entered (unless the search starts inside one): VCS data and dependencies. */
const SKIPPED_DIRS = new Set([".git", "node_modules"]);
const DEFAULT_MAX_RESULTS = 100;
/** The walk stops after this many files, and the whole search after SEARCH_TIME_MS. */
const MAX_FILES_VISITED = 20_000;
const SEARCH_TIME_MS = 10_000;
/** Content is searched in files up to this size; bigger ones are skipped (grep them with run_shell_command). */
const MAX_SEARCHED_FILE_BYTES = 4 * 1024 * 1024;
/** Bytes sniffed for a NUL to call a file binary. */
const SNIFF_BYTES = 8 * 1024;
/** A matching line is shortened to this many characters; a file gives at most this many matches. */
const MAX_LINE_CHARS = 300;
const MAX_MATCHES_PER_FILE = 50;
/** The matches are cut to this many JSON characters (they travel twice: text and structured). */
const RESULTS_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;

type Match = OpResult<"search_files">["matches"][number];
type Reason = OpResult<"search_files">["truncated_reason"];

/** Runs in the worker: numbered matching lines of one file's text. Plain JavaScript, no imports, so it can be
 *  started from a Blob URL (which also works inside the compiled agent). */
const MATCHER_SOURCE = `
let regex = null;
self.onmessage = ({ data }) => {
  if (data.pattern !== undefined) { regex = new RegExp(data.pattern, data.flags); return; }
  const matches = [];
  let line = 0;
  for (let start = 0; start <= data.text.length && matches.length < data.max; ) {
    let end = data.text.indexOf("\\n", start);
    if (end === -1) end = data.text.length;
    line++;
    const text = data.text.slice(start, end);
    regex.lastIndex = 0;
    if (regex.test(text)) matches.push([line, text.length > data.width ? text.slice(0, data.width) + "…" : text]);
    start = end + 1;
  }
  postMessage(matches);
};`;

/** A worker holding one compiled regular expression; `match` gives up (and kills the worker) at a deadline. */
class Matcher {
  #worker: Worker;
  constructor(pattern: string, flags: string) {
    this.#worker = new Worker(URL.createObjectURL(new Blob([MATCHER_SOURCE], { type: "application/javascript" })));
    this.#worker.postMessage({ pattern, flags });
  }

  match(text: string, deadline: number): Promise<[number, string][] | "timeout"> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
      this.#worker.onmessage = (event) => {
        clearTimeout(timer);
        resolve(event.data);
      };
      this.#worker.postMessage({ text, max: MAX_MATCHES_PER_FILE, width: MAX_LINE_CHARS });
    });
  }

  close(): void {
    this.#worker.terminate();
  }
}

function compile(args: OpArgs<"search_files">): { pattern: string; flags: string } | null {
  if (args.content === undefined) return null;
  const flags = args.case_sensitive === false ? "iu" : "u";
  try {
    new RegExp(args.content, flags);
  } catch (e) {
    return fail("invalid_arguments", `content is not a valid regular expression: ${(e as Error).message}`);
  }
  return { pattern: args.content, flags };
}

/** The state of one search: results, counters, and why it stopped early. */
class Search {
  readonly matches: Match[] = [];
  filesVisited = 0;
  skippedBinary = 0;
  reason: Reason = null;
  #cost = 0;
  readonly deadline = Date.now() + SEARCH_TIME_MS;
  constructor(
    readonly maxResults: number,
    readonly includeHidden: boolean,
  ) {}

  get stopped(): boolean {
    return this.reason !== null;
  }

  stop(reason: NonNullable<Reason>): void {
    this.reason ??= reason;
  }

  add(match: Match): void {
    if (this.matches.length >= this.maxResults) return this.stop("max_results");
    this.#cost += JSON.stringify(match).length + 1;
    if (this.#cost > RESULTS_BUDGET_CHARS) return this.stop("size");
    this.matches.push(match);
  }

  skips(name: string, isDir: boolean): boolean {
    if (name.startsWith(".") && !this.includeHidden) return true;
    return isDir && SKIPPED_DIRS.has(name);
  }
}

export async function searchFiles(args: OpArgs<"search_files">, scope: FileScope): Promise<OpResult<"search_files">> {
  if (args.pattern === undefined && args.content === undefined) {
    fail("invalid_arguments", "Give pattern (a glob on file names), content (a regular expression), or both.");
  }
  const regex = compile(args); // first: a bad pattern is refused before anything is opened
  const root = resolveExisting(args.path, scope);
  const dirFd = openChecked(root, O_RDONLY | O_DIRECTORY, scope, args.path);
  const started = Date.now();
  const search = new Search(args.max_results ?? DEFAULT_MAX_RESULTS, args.include_hidden === true);
  let matcher: Matcher | null = null;
  try {
    matcher = regex ? new Matcher(regex.pattern, regex.flags) : null;
    const glob = args.pattern ? new Bun.Glob(args.pattern) : null;
    await walk(search, fdPath(dirFd, root), "", { root, scope }, async (file, relative) => {
      if (glob && !glob.match(relative)) return;
      if (!matcher) return search.add({ file: relative, line: null, text: null });
      await searchContent(search, matcher, file, relative, scope);
    });
  } finally {
    matcher?.close();
    fs.closeSync(dirFd);
  }
  return {
    path: root,
    matches: search.matches,
    files_visited: search.filesVisited,
    skipped_binary: search.skippedBinary,
    truncated: search.stopped,
    truncated_reason: search.reason,
    elapsed_ms: Date.now() - started,
  };
}

/** Where a walk started (its real path) and what it may reach. */
interface WalkScope {
  root: string;
  scope: FileScope;
}

/** Depth-first over `dirPath`, names sorted, calling `visit` for each regular file. Symlinks are never followed,
 *  and each directory is entered through a checked descriptor, so one swapped for a symlink mid-walk is skipped.
 *  The agent's own files are skipped. */
async function walk(
  search: Search,
  dirPath: string,
  prefix: string,
  where: WalkScope,
  visit: (file: string, relative: string) => Promise<void>,
): Promise<void> {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dirPath, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
  } catch {
    return; // unreadable directory: skipped
  }
  for (const entry of entries) {
    if (search.stopped) return;
    if (Date.now() > search.deadline) return search.stop("time");
    if (search.skips(entry.name, entry.isDirectory())) continue;
    if (isOutOfSight(path.join(where.root, prefix + entry.name), where.scope)) continue;
    const full = `${dirPath}/${entry.name}`;
    if (entry.isDirectory()) await walkInto(search, full, `${prefix}${entry.name}/`, where, visit);
    else if (entry.isFile()) {
      if (++search.filesVisited > MAX_FILES_VISITED) return search.stop("max_files");
      await visit(full, prefix + entry.name);
    }
  }
}

async function walkInto(search: Search, dir: string, prefix: string, where: WalkScope, visit: (file: string, relative: string) => Promise<void>) {
  let fd: number;
  try {
    fd = openChecked(dir, O_RDONLY | O_DIRECTORY, where.scope, dir);
  } catch {
    return; // replaced by a symlink, or unreadable: skipped
  }
  try {
    await walk(search, fdPath(fd, dir), prefix, where, visit);
  } finally {
    fs.closeSync(fd);
  }
}

async function searchContent(search: Search, matcher: Matcher, file: string, relative: string, scope: FileScope): Promise<void> {
  const text = readSearchable(file, scope);
  if (text === "binary") return void search.skippedBinary++;
  if (text === null) return;
  const found = await matcher.match(text, search.deadline);
  if (found === "timeout") return search.stop("time");
  for (const [line, lineText] of found) search.add({ file: relative, line, text: lineText });
}

/** A file's text, "binary" when it has a NUL or is not UTF-8, or null when it is too big, unreadable, or was
 *  swapped for something out of reach. */
function readSearchable(file: string, scope: FileScope): string | "binary" | null {
  let fd: number;
  try {
    fd = openChecked(file, O_RDONLY | O_NONBLOCK, scope, file);
  } catch {
    return null;
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile() || stat.size > MAX_SEARCHED_FILE_BYTES) return null;
    const bytes = Buffer.alloc(stat.size);
    const n = fs.readSync(fd, bytes, 0, stat.size, 0);
    if (bytes.subarray(0, Math.min(n, SNIFF_BYTES)).includes(0)) return "binary";
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, n));
  } catch {
    return "binary"; // invalid UTF-8
  } finally {
    fs.closeSync(fd);
  }
}
