// The agent's file tools: read_file, write_file, list_directory and file_info, on what paths.ts says they may reach.
// Reads stream, stay within the result budget and yield to the event loop while they scan; writes are atomic (temp
// file + rename in the same directory), appends go in place (O_APPEND), and neither follows a symlink planted
// meanwhile.

import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { FIELD_BUDGET_CHARS, fail, Failure, jsonCost, MAX_READ_BASE64_BYTES, MAX_WRITE_BYTES, takeWithinCost, type OpArgs, type OpResult } from "../protocol.ts";
import { errnoOf, expandPath, fdPath, type FileScope, isOutOfSight, O_APPEND, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_WRONLY, openChecked, resolveExisting, resolveForWrite } from "./paths.ts";

// --- constants ---

/** read_file returns at most this many JSON characters of text, or this many raw bytes as base64. */
const READ_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;
const READ_BASE64_MAX_BYTES = 32 * 1024;
/** read_file reads in chunks of this size, and stops counting lines past this many bytes (total_lines: null). */
const READ_CHUNK_BYTES = 1024 * 1024;
const COUNT_LINES_MAX_BYTES = 256 * 1024 * 1024;
/** read_file spends at most this long scanning for the lines asked for and counting the rest: an answer comes well
 *  within the relay's deadline for the call, however big the file. */
const READ_SCAN_MS = 10_000;
/** A tail read looks at most this far back from the end of the file. */
const TAIL_MAX_BYTES = 4 * 1024 * 1024;
/** Lines are counted for file_info up to this size. */
const INFO_COUNT_MAX_BYTES = 64 * 1024 * 1024;
/** Bytes of a file sniffed to decide between text and base64 (as git does: a NUL or invalid UTF-8 means binary). */
const SNIFF_BYTES = 8 * 1024;
/** list_directory lists at most this many entries, and fewer when their JSON would pass the budget. */
const LIST_MAX_ENTRIES = 1_000;
/** A deep listing stops looking after this many entries, so a huge tree answers quickly (truncated). */
const LIST_MAX_VISITED = 20_000;
const LIST_BUDGET_CHARS = 2 * FIELD_BUDGET_CHARS;

// --- files ---

/** Reads up to `length` bytes at `position` from an fd. */
function readAt(fd: number, length: number, position: number): Buffer {
  // Not zero-filled: only the bytes read are returned (zero-filling a 1 MiB buffer per call dominated small reads).
  const buffer = Buffer.allocUnsafe(length);
  const n = fs.readSync(fd, buffer, 0, length, position);
  return buffer.subarray(0, n);
}

function openRegularFile(input: string, config: FileScope): { fd: number; real: string; size: number } {
  const real = resolveExisting(input, config);
  // O_NONBLOCK: opening a FIFO must not hang waiting for a writer; fstat then refuses it.
  const fd = openChecked(real, O_RDONLY | O_NONBLOCK, config, input);
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) {
    fs.closeSync(fd);
    if (stat.isDirectory()) fail("wrong_type", `'${input}' is a directory: use list_directory.`);
    fail("path_denied", `'${input}' is not a regular file (FIFOs, devices and sockets are refused).`);
  }
  return { fd, real, size: stat.size };
}

/** True when the bytes look like text: no NUL and valid UTF-8 (a character cut at the end is fine). */
function looksLikeText(sample: Uint8Array): boolean {
  if (sample.includes(0)) return false;
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(sample, { stream: true });
    return true;
  } catch {
    return false;
  }
}

export async function readFile(args: OpArgs<"read_file">, scope: FileScope): Promise<OpResult<"read_file">> {
  const { fd, real, size } = openRegularFile(args.path, scope);
  try {
    const encoding = args.encoding ?? "auto";
    const asText = encoding === "utf8" || (encoding === "auto" && looksLikeText(readAt(fd, SNIFF_BYTES, 0)));
    if (args.tail !== undefined && args.offset !== undefined) fail("invalid_arguments", "Give offset or tail, not both.");
    if (!asText) return readBase64(fd, real, size, args);
    // Awaited here, so the descriptor stays open until the read is done.
    return args.tail !== undefined ? readTail(fd, real, size, args.tail, args.path) : await readTextLines(fd, real, size, args);
  } finally {
    fs.closeSync(fd);
  }
}

function readBase64(fd: number, real: string, size: number, args: OpArgs<"read_file">): OpResult<"read_file"> {
  const offset = args.offset ?? 0;
  const length = Math.min(args.limit ?? READ_BASE64_MAX_BYTES, MAX_READ_BASE64_BYTES, Math.max(0, size - offset));
  const bytes = readAt(fd, length, offset);
  const end = offset + bytes.length;
  return {
    path: real,
    encoding: "base64",
    content: bytes.toString("base64"),
    size,
    offset,
    returned: bytes.length,
    total_lines: null,
    truncated: end < size,
    next_offset: end < size ? end : null,
  };
}

/** The last `count` lines, found by reading backwards from the end (a huge log costs no more than its tail).
 *  If they do not fit the budget, the earliest of them are left out; `offset` says where the result starts. A last
 *  line too long for the budget on its own comes back as its end, the newest part of it (`truncated`, with no
 *  next_offset: nothing follows). */
function readTail(fd: number, real: string, size: number, count: number, input: string): OpResult<"read_file"> {
  const start = tailStart(fd, size, count);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(readAt(fd, size - start, start));
  } catch {
    return fail("wrong_type", `The end of '${input}' is not valid UTF-8: read it with encoding "base64".`);
  }
  const lines = text.split(/(?<=\n)/).filter(Boolean);
  let cost = 0;
  let first = lines.length;
  while (first > 0 && cost + jsonCost(lines[first - 1]!) <= READ_BUDGET_CHARS) cost += jsonCost(lines[--first]!);
  const kept = lines.slice(first);
  const cutLine = kept.length === 0 && lines.length > 0;
  if (cutLine) kept.push(endWithinCost(lines[lines.length - 1]!, READ_BUDGET_CHARS));
  const total = size <= COUNT_LINES_MAX_BYTES ? countLines(fd, size) : null;
  return {
    path: real,
    encoding: "utf8",
    content: kept.join(""),
    size,
    offset: total === null ? 0 : total - kept.length + 1,
    returned: kept.length,
    total_lines: total,
    truncated: cutLine,
    next_offset: null,
  };
}

/** The end of `line` whose JSON form fits `budget` characters, in whole code points. */
function endWithinCost(line: string, budget: number): string {
  // Each character costs at least one: the last budget + 1 UTF-16 units hold the answer, and the first of them may
  // be half of a surrogate pair, so it goes.
  const chars = Array.from(line.slice(-(budget + 1))).slice(1);
  return takeWithinCost(chars.reverse(), budget).reverse().join("");
}

/** The byte where the last `count` lines begin (a final newline does not start another line), reading at most
 *  TAIL_MAX_BYTES back from the end. */
function tailStart(fd: number, size: number, count: number): number {
  const lastByteIsNewline = size > 0 && readAt(fd, 1, size - 1)[0] === 0x0a;
  let newlines = lastByteIsNewline ? -1 : 0;
  const limit = Math.max(0, size - TAIL_MAX_BYTES);
  for (let end = size; end > limit; ) {
    const from = Math.max(limit, end - READ_CHUNK_BYTES);
    const chunk = readAt(fd, end - from, from);
    for (let i = chunk.length - 1; i >= 0; i--) {
      if (chunk[i] === 0x0a && ++newlines === count) return from + i + 1;
    }
    end = from;
  }
  if (limit === 0) return 0;
  // Past TAIL_MAX_BYTES: start at the first whole line inside the window, or, when the last line is longer than the
  // window, at the first whole character (a UTF-8 continuation byte is 0b10xxxxxx).
  const window = readAt(fd, Math.min(READ_CHUNK_BYTES, size - limit), limit);
  const firstBreak = window.indexOf(0x0a);
  if (firstBreak !== -1) return limit + firstBreak + 1;
  let skip = 0;
  while (skip < 3 && ((window[skip] ?? 0) & 0xc0) === 0x80) skip++;
  return limit + skip;
}

/** Lines in a file: its newlines, plus one for a last line without a newline. */
function countLines(fd: number, size: number): number {
  let lines = 0;
  for (let at = 0; at < size; at += READ_CHUNK_BYTES) {
    const chunk = readAt(fd, READ_CHUNK_BYTES, at);
    for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) lines++;
  }
  return size > 0 && readAt(fd, 1, size - 1)[0] !== 0x0a ? lines + 1 : lines;
}

/** Splits decoded text into lines (each keeping its "\n"); a line longer than `maxChars` keeps only its head,
 *  so memory stays bounded even for a file that is one enormous line. */
class LineSplitter {
  #partial = "";
  #overlong = false;
  constructor(readonly maxChars: number) {}

  *push(text: string): Generator<string> {
    let start = 0;
    for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", start)) {
      this.#append(text.slice(start, nl + 1));
      start = nl + 1;
      yield this.#take();
    }
    this.#append(text.slice(start));
  }

  *end(): Generator<string> {
    if (this.#partial) yield this.#take();
  }

  #append(piece: string) {
    if (this.#overlong) return;
    this.#partial += piece;
    if (this.#partial.length > this.maxChars) {
      this.#partial = this.#partial.slice(0, this.maxChars);
      this.#overlong = true;
    }
  }

  #take(): string {
    const line = this.#partial;
    this.#partial = "";
    this.#overlong = false;
    return line;
  }
}

/** Keeps the lines numbered first..last (from 1) that fit the budget, and counts every line offered. */
class LineSelection {
  seen = 0;
  readonly kept: string[] = [];
  #cost = 0;
  /** The budget stopped the selection; more lines follow. */
  full = false;
  /** The first selected line alone was over the budget and only its head was kept. */
  cutLine = false;
  constructor(
    readonly first: number,
    readonly last: number,
    readonly budget: number,
  ) {}

  get done() {
    return this.full || this.seen >= this.last;
  }

  offer(line: string): void {
    this.seen++;
    if (this.seen < this.first || this.seen > this.last || this.full) return;
    const cost = jsonCost(line);
    if (this.#cost + cost > this.budget) {
      if (this.kept.length === 0) {
        this.kept.push(takeWithinCost(Array.from(line), this.budget).join(""));
        this.cutLine = true;
      }
      this.full = true;
      return;
    }
    this.kept.push(line);
    this.#cost += cost;
  }
}

/** Reads lines [offset, offset + limit) of a UTF-8 file within the budget, streaming, and counts all lines
 *  (up to COUNT_LINES_MAX_BYTES, for at most READ_SCAN_MS). Between chunks it lets the event loop run, so a scan
 *  through gigabytes never holds up heartbeats and other calls. Invalid UTF-8 is an error that points to base64,
 *  never silently mangled. */
async function readTextLines(fd: number, real: string, size: number, args: OpArgs<"read_file">): Promise<OpResult<"read_file">> {
  const first = Math.max(1, args.offset ?? 1);
  const selection = new LineSelection(first, args.limit ? first + args.limit - 1 : Infinity, READ_BUDGET_CHARS);
  const splitter = new LineSplitter(2 * READ_BUDGET_CHARS);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let position = 0;
  let atEnd = false;
  const deadline = Date.now() + READ_SCAN_MS;
  while (!atEnd && !(selection.done && (position > COUNT_LINES_MAX_BYTES || Date.now() > deadline))) {
    if (Date.now() > deadline) lineOutOfReach(args.path, first, selection.seen, position, size);
    await new Promise((resolve) => setImmediate(resolve));
    // Ask for one byte more than the file should have left: a short read is the end, with no extra read to see it.
    const want = Math.min(READ_CHUNK_BYTES, Math.max(0, size - position) + 1);
    const chunk = readAt(fd, want, position);
    position += chunk.length;
    atEnd = chunk.length < want;
    let text: string;
    try {
      text = decoder.decode(chunk, { stream: !atEnd });
    } catch {
      return fail("wrong_type", `'${args.path}' is not valid UTF-8 after line ${selection.seen}: read it with encoding "base64".`);
    }
    for (const line of splitter.push(text)) selection.offer(line);
    if (atEnd) for (const line of splitter.end()) selection.offer(line);
  }
  const returned = selection.kept.length;
  const more = returned > 0 && (selection.cutLine || !atEnd || first + returned - 1 < selection.seen);
  return {
    path: real,
    encoding: "utf8",
    content: selection.kept.join(""),
    size,
    offset: first,
    returned,
    total_lines: atEnd ? selection.seen : null,
    truncated: more,
    next_offset: more ? first + returned : null,
  };
}

/** The line asked for was not reached within READ_SCAN_MS (it lies far into a huge file, or past its end). */
function lineOutOfReach(input: string, line: number, seen: number, position: number, size: number): never {
  return fail(
    "too_large",
    `'${input}' is too big to reach line ${line} by counting: ${seen} lines were read (${position} of ${size} bytes) in ` +
      `${READ_SCAN_MS / 1000} s. Read its end with tail, bytes from an offset with encoding "base64", or use ` +
      `run_shell_command (sed -n '${line},+99p').`,
  );
}

/** Turns an errno from a write into a sentence for the model. */
function ioFailure(e: unknown, input: string): never {
  if (e instanceof Failure) throw e;
  const code = errnoOf(e);
  const reason: Record<string, string> = {
    ENOSPC: "the disk is full",
    EDQUOT: "the disk quota is exceeded",
    EROFS: "the file system is read-only",
    EACCES: "permission denied",
    EPERM: "permission denied",
    ENAMETOOLONG: "a name in the path is too long",
    ELOOP: "it was replaced by a symlink meanwhile",
    EISDIR: "it is a directory",
  };
  return fail("io_error", `Cannot write '${input}': ${(code && reason[code]) ?? code ?? String(e)}. Nothing was changed.`);
}

function decodeContent(content: string, encoding: "utf8" | "base64"): Buffer {
  if (encoding === "utf8") return Buffer.from(content, "utf8");
  // Buffer.from(…, "base64") skips bad characters silently; a typo must be an error, not a corrupt file.
  if (content.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(content)) {
    fail("invalid_arguments", "content is not valid base64 (A-Z, a-z, 0-9, +, / with = padding, no spaces).");
  }
  return Buffer.from(content, "base64");
}

/** A directory opened for writing into, and the directories that opening it created: each as its parent's
 *  descriptor (kept open until closeDir) and its name, outermost first. */
interface OpenedDir {
  fd: number;
  real: string;
  created: { parentFd: number; parentReal: string; name: string }[];
}

/** Opens the real directory `dir`, creating the missing components one at a time below a checked descriptor,
 *  so a symlink swapped in meanwhile cannot send the new directories or the file elsewhere. */
function openDirCreating(dir: string, scope: FileScope, input: string): OpenedDir {
  const missing: string[] = [];
  let existing = dir;
  while (!fs.existsSync(existing)) {
    missing.unshift(path.basename(existing));
    existing = path.dirname(existing);
  }
  const opened: OpenedDir = { fd: openChecked(existing, O_RDONLY | O_DIRECTORY, scope, input), real: existing, created: [] };
  try {
    for (const name of missing) {
      const child = `${fdPath(opened.fd, opened.real)}/${name}`;
      let made = false;
      try {
        fs.mkdirSync(child);
        made = true;
      } catch (e) {
        if (errnoOf(e) !== "EEXIST") ioFailure(e, input);
      }
      const next = openChecked(child, O_RDONLY | O_DIRECTORY, scope, input);
      if (made) opened.created.push({ parentFd: opened.fd, parentReal: opened.real, name });
      else fs.closeSync(opened.fd);
      opened.fd = next;
      opened.real = path.join(opened.real, name);
    }
  } catch (e) {
    closeDir(opened, true);
    throw e;
  }
  return opened;
}

/** Closes what openDirCreating opened. With `undo` (the write failed), first removes the directories it created,
 *  innermost first and only while empty, so "nothing was changed" holds for new directories too. */
function closeDir(dir: OpenedDir, undo: boolean): void {
  fs.closeSync(dir.fd);
  for (const { parentFd, parentReal, name } of dir.created.reverse()) {
    if (undo) {
      try {
        fs.rmdirSync(`${fdPath(parentFd, parentReal)}/${name}`); // through the parent's descriptor, as it was made
      } catch {
        // not empty: something else was written there meanwhile, and it stays
      }
    }
    fs.closeSync(parentFd);
  }
}

/** lstat of `name` in an open directory, or null when there is nothing there. */
function lstatIn(dirPath: string, name: string): fs.Stats | null {
  try {
    return fs.lstatSync(`${dirPath}/${name}`);
  } catch (e) {
    if (errnoOf(e) === "ENOENT") return null;
    throw e;
  }
}

export async function writeFile(args: OpArgs<"write_file">, config: FileScope): Promise<OpResult<"write_file">> {
  const data = decodeContent(args.content, args.encoding ?? "utf8");
  if (data.length > MAX_WRITE_BYTES) {
    fail("too_large", `content is ${data.length} bytes; write at most ${MAX_WRITE_BYTES} per call and append the rest.`);
  }
  const target = resolveForWrite(args.path, config);
  const dir = openDirCreating(path.dirname(target), config, args.path);
  let written = false;
  try {
    const dirPath = fdPath(dir.fd, dir.real);
    const name = path.basename(target);
    const existing = lstatIn(dirPath, name);
    if (existing && !existing.isFile()) fail("wrong_type", `'${args.path}' exists and is not a regular file; refusing to replace it.`);
    const size = args.append === true && existing ? appendInPlace(`${dirPath}/${name}`, data, args.path) : replaceAtomically(dirPath, name, data, existing);
    written = true;
    return { path: target, bytes_written: data.length, size, created: !existing };
  } catch (e) {
    return ioFailure(e, args.path);
  } finally {
    closeDir(dir, !written);
  }
}

/** Writes a temp file in the same directory and renames it over `name` (a regular file, or none yet: `existing`):
 *  readers see the old file or the new one, never half of it. Returns the new size. */
function replaceAtomically(dirPath: string, name: string, data: Buffer, existing: fs.Stats | null): number {
  const tempPath = `${dirPath}/.code-remote-${randomBytes(8).toString("hex")}.tmp`;
  // Security: O_EXCL|O_NOFOLLOW, so a symlink planted under the temp name is never followed.
  const fd = fs.openSync(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  try {
    writeAll(fd, data);
    fs.fchmodSync(fd, existing ? existing.mode & 0o7777 : 0o666 & ~process.umask());
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tempPath, `${dirPath}/${name}`);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      // already closed
    }
    fs.rmSync(tempPath, { force: true });
    throw e;
  }
  return data.length;
}

/** Appends to the existing file at `file` (a name in a checked directory) in place, through O_APPEND on a
 *  descriptor that does not follow a symlink: what other programs append before or after is kept, and hard links
 *  stay one file. A copy and rename would lose their later appends. "Nothing was changed" holds as far as it can
 *  for a file others may be writing too: an append cut short (the disk full) is cut off again when nothing else
 *  was appended after it. Returns the size after the append. */
function appendInPlace(file: string, data: Buffer, input: string): number {
  const fd = fs.openSync(file, O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK);
  try {
    const before = fs.fstatSync(fd);
    if (!before.isFile()) fail("wrong_type", `'${input}' is not a regular file; refusing to append to it.`);
    let written = 0;
    try {
      while (written < data.length) written += fs.writeSync(fd, data, written);
      fs.fsyncSync(fd);
    } catch (e) {
      // Ours are the last bytes only if the file grew by exactly what we wrote; then they can be taken back.
      if (written > 0 && fs.fstatSync(fd).size === before.size + written) fs.ftruncateSync(fd, before.size);
      throw e;
    }
    return fs.fstatSync(fd).size;
  } finally {
    fs.closeSync(fd);
  }
}

/** A text file read whole, with what is needed to replace it later only if nobody changed it meanwhile. */
export interface WholeText {
  real: string;
  text: string;
  mtimeMs: number;
  size: number;
}

/** Reads a whole UTF-8 file of at most `maxBytes` (edit_file works on text in memory). */
export function readWholeText(input: string, scope: FileScope, maxBytes: number): WholeText {
  const { fd, real, size } = openRegularFile(input, scope);
  try {
    if (size > maxBytes) fail("too_large", `'${input}' is ${size} bytes; edit_file takes files up to ${maxBytes}. Use run_shell_command (sed, patch) instead.`);
    const bytes = readAt(fd, size, 0);
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return fail("wrong_type", `'${input}' is not UTF-8 text; edit_file changes text files only.`);
    }
    return { real, text, mtimeMs: fs.fstatSync(fd).mtimeMs, size };
  } finally {
    fs.closeSync(fd);
  }
}

/** Replaces a file read by readWholeText with `data`, atomically, unless it changed since (then nothing is
 *  written: the model reads it again rather than overwriting someone else's change). */
export function replaceFile(input: string, file: WholeText, data: Buffer, scope: FileScope): void {
  const dir = openDirCreating(path.dirname(file.real), scope, input);
  let replaced = false;
  try {
    const name = path.basename(file.real);
    const now = lstatIn(fdPath(dir.fd, dir.real), name);
    if (!now || now.mtimeMs !== file.mtimeMs || now.size !== file.size) {
      fail("io_error", `'${input}' changed while it was being edited; nothing was written. Read it again and retry.`);
    }
    replaceAtomically(fdPath(dir.fd, dir.real), name, data, now);
    replaced = true;
  } catch (e) {
    ioFailure(e, input);
  } finally {
    // The file's directory existed when it was read; if it was moved away since, opening it made a new one, which
    // a refused edit must not leave behind.
    closeDir(dir, !replaced);
  }
}

function writeAll(fd: number, data: Uint8Array): void {
  for (let offset = 0; offset < data.length; ) offset += fs.writeSync(fd, data, offset);
}

function entryType(stat: fs.Stats): "file" | "dir" | "symlink" | "other" {
  if (stat.isSymbolicLink()) return "symlink";
  if (stat.isDirectory()) return "dir";
  return stat.isFile() ? "file" : "other";
}

export function listDirectory(args: OpArgs<"list_directory">, scope: FileScope): OpResult<"list_directory"> {
  const real = resolveExisting(args.path, scope);
  if (!fs.statSync(real).isDirectory()) fail("wrong_type", `'${args.path}' is not a directory: use read_file.`);
  const fd = openChecked(real, O_RDONLY | O_DIRECTORY, scope, args.path);
  try {
    const listing = new Listing(args.include_hidden === true, real, scope);
    listing.walk(fdPath(fd, real), "", args.depth ?? 1);
    return { path: real, entries: listing.entries, total: listing.seen, hidden_skipped: listing.hiddenSkipped, truncated: listing.truncated };
  } finally {
    fs.closeSync(fd);
  }
}

/** A depth-first listing of the directory at `base`, sorted at each level ("a", "a/x", "b"), within the entry and
 *  size budgets. Symlinked directories are listed but not entered; the agent's own files are left out. */
class Listing {
  readonly entries: OpResult<"list_directory">["entries"] = [];
  seen = 0;
  hiddenSkipped = 0;
  truncated = false;
  #cost = 0;
  constructor(
    readonly includeHidden: boolean,
    readonly base: string,
    readonly scope: FileScope,
  ) {}

  walk(dirPath: string, prefix: string, levels: number): void {
    let names: string[];
    try {
      names = fs.readdirSync(dirPath).sort();
    } catch {
      return; // unreadable below the top: listed as a dir, not entered
    }
    for (const name of names) {
      if (this.seen >= LIST_MAX_VISITED) return void (this.truncated = true);
      if (name.startsWith(".") && !this.includeHidden) {
        this.hiddenSkipped++;
        continue;
      }
      if (isOutOfSight(path.join(this.base, prefix + name), this.scope)) continue;
      const stat = lstatIn(dirPath, name);
      if (!stat) continue; // removed while we listed
      this.seen++;
      this.#add({ name: prefix + name, type: entryType(stat), size: stat.size, modified: stat.mtime.toISOString() });
      if (stat.isDirectory() && levels > 1) this.#enter(`${dirPath}/${name}`, `${prefix}${name}/`, levels - 1);
    }
  }

  /** Lists a subdirectory through a descriptor of its own, opened without following a symlink: a directory swapped
   *  for a symlink since the lstat above (a race a local user can run in /tmp) is listed but never entered, so the
   *  walk cannot wander outside the roots. */
  #enter(dirPath: string, prefix: string, levels: number): void {
    let fd: number;
    try {
      fd = fs.openSync(dirPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch {
      return; // now a symlink, gone, or unreadable: listed as a dir, not entered
    }
    try {
      this.walk(fdPath(fd, dirPath), prefix, levels);
    } finally {
      fs.closeSync(fd);
    }
  }

  #add(entry: OpResult<"list_directory">["entries"][number]): void {
    this.#cost += JSON.stringify(entry).length + 1;
    if (this.entries.length >= LIST_MAX_ENTRIES || this.#cost > LIST_BUDGET_CHARS) this.truncated = true;
    else this.entries.push(entry);
  }
}

// --- file_info ---

const TYPE_OF: [(s: fs.Stats) => boolean, OpResult<"file_info">["type"]][] = [
  [(s) => s.isFile(), "file"],
  [(s) => s.isDirectory(), "dir"],
  [(s) => s.isSymbolicLink(), "symlink"],
  [(s) => s.isFIFO(), "fifo"],
  [(s) => s.isSocket(), "socket"],
  [(s) => s.isCharacterDevice() || s.isBlockDevice(), "device"],
];

/** file_info: the entry's own type (a symlink says so, and where it points), with size, mode, owner and times
 *  of what it leads to, and a line count for text files. Only paths leading inside the roots are described. */
export function fileInfo(args: OpArgs<"file_info">, scope: FileScope): OpResult<"file_info"> {
  const real = resolveExisting(args.path, scope);
  const entry = fs.lstatSync(expandPath(args.path, scope.home));
  const stat = statInside(real, scope, args.path);
  const isLink = entry.isSymbolicLink();
  return {
    path: expandPath(args.path, scope.home),
    type: TYPE_OF.find(([test]) => test(entry))?.[1] ?? "other",
    size: stat.size,
    mode: `0${(stat.mode & 0o7777).toString(8).padStart(3, "0")}`,
    permissions: permissionString(stat),
    uid: stat.uid,
    gid: stat.gid,
    owner: nameOf("/etc/passwd", stat.uid),
    group: nameOf("/etc/group", stat.gid),
    modified: stat.mtime.toISOString(),
    accessed: stat.atime.toISOString(),
    changed: stat.ctime.toISOString(),
    created: stat.birthtimeMs > 0 ? stat.birthtime.toISOString() : null,
    symlink_target: isLink ? fs.readlinkSync(expandPath(args.path, scope.home)) : null,
    resolved_path: isLink ? real : null,
    ...textFacts(real, stat, scope, args.path),
  };
}

/** Linux's O_PATH (the same value on x64 and arm64; Node does not export it): a descriptor only to fstat, which
 *  needs no permission on the file and opens nothing for real (a FIFO, a device). */
const O_PATH = 0o10000000;

/** What `real` (checked to be inside the roots) is, through a descriptor whose place is checked again once open: a
 *  directory on the way swapped for a symlink since the check cannot make file_info describe something outside
 *  (stat by name did, in the symlink-swap race). Without /proc (macOS), by name: the documented window remains. */
function statInside(real: string, scope: FileScope, input: string): fs.Stats {
  if (process.platform !== "linux") return fs.statSync(real);
  const fd = openChecked(real, O_PATH, scope, input);
  try {
    const stat = fs.fstatSync(fd);
    if (stat.isSymbolicLink()) fail("path_denied", `'${input}' changed into a symlink while being described.`);
    return stat;
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether a regular file is binary, and its line count when it is text (and not too big to count). */
function textFacts(real: string, stat: fs.Stats, scope: FileScope, input: string): { line_count: number | null; binary: boolean | null } {
  if (!stat.isFile()) return { line_count: null, binary: null };
  // A file this user may not read is still described, as `ls -l` would: its contents are simply unknown.
  if (!readable(real)) return { line_count: null, binary: null };
  const fd = openChecked(real, O_RDONLY | O_NONBLOCK, scope, input);
  try {
    const binary = !looksLikeText(readAt(fd, SNIFF_BYTES, 0));
    return { binary, line_count: binary || stat.size > INFO_COUNT_MAX_BYTES ? null : countLines(fd, stat.size) };
  } finally {
    fs.closeSync(fd);
  }
}

function readable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

/** rwx bits as ls shows them, with setuid, setgid and sticky. */
function permissionString(stat: fs.Stats): string {
  const type = stat.isDirectory() ? "d" : stat.isSymbolicLink() ? "l" : stat.isFile() ? "-" : "?";
  const bit = (mask: number, ch: string) => (stat.mode & mask ? ch : "-");
  const special = (exec: number, flag: number, on: string) => (stat.mode & flag ? (stat.mode & exec ? on : on.toUpperCase()) : bit(exec, "x"));
  return (
    type +
    bit(0o400, "r") + bit(0o200, "w") + special(0o100, 0o4000, "s") +
    bit(0o040, "r") + bit(0o020, "w") + special(0o010, 0o2000, "s") +
    bit(0o004, "r") + bit(0o002, "w") + special(0o001, 0o1000, "t")
  );
}

/** The name for a numeric id in /etc/passwd or /etc/group, or null (directory services are not asked). */
function nameOf(file: string, id: number): string | null {
  try {
    const line = fs
      .readFileSync(file, "utf8")
      .split("\n")
      .find((l) => l.split(":")[2] === String(id));
    return line?.split(":")[0] ?? null;
  } catch {
    return null;
  }
}
