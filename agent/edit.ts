// edit_file on the agent: exact text replacements applied in order, all or nothing, keeping the file's line
// endings, returned as a unified diff. A miss is explained with the closest candidates, so the model can correct
// old_text instead of guessing. The pure parts (applyEdits, unifiedDiff) are exported for tests.

import { FIELD_BUDGET_CHARS, fail, fitToBudget, type OpArgs, type OpResult } from "../protocol.ts";
import { readWholeText, replaceFile } from "./files.ts";
import type { FileScope } from "./paths.ts";

/** Files larger than this are not edited in memory (use run_shell_command with sed, or write_file). */
const EDIT_MAX_BYTES = 8 * 1024 * 1024;
/** Lines of context around each change in the diff, as `diff -u` shows. */
const DIFF_CONTEXT_LINES = 3;
/** The diff is cut to this many JSON characters (it travels twice: text and structured). */
const DIFF_BUDGET_CHARS = FIELD_BUDGET_CHARS;
/** Above this many cells, the line-matching table would cost too much: the changed region is shown whole. */
const DIFF_MAX_CELLS = 4_000_000;
/** How many near misses an error shows, and how alike a line must be to count (Dice coefficient of bigrams). */
const HINT_COUNT = 3;
const HINT_MIN_SIMILARITY = 0.5;
/** Looking for near misses compares at most this many characters of a line, and stops after this long: a hint is
 *  a courtesy, and the agent must stay responsive (an 8 MiB file of short lines took hours before). */
const HINT_COMPARE_CHARS = 200;
const HINT_BUDGET_MS = 250;

type Edit = OpArgs<"edit_file">["edits"][number];

export async function editFile(args: OpArgs<"edit_file">, scope: FileScope): Promise<OpResult<"edit_file">> {
  const file = readWholeText(args.path, scope, EDIT_MAX_BYTES);
  const crlf = usesCrlf(file.text);
  const { text, replacements } = applyEdits(file.text, args.edits, crlf);
  const dryRun = args.dry_run === true;
  // The answer is built before the file is written: nothing may fail once it is, or a retry would edit it twice.
  const diff = fitToBudget(unifiedDiff(file.text, text, file.real), DIFF_BUDGET_CHARS).text;
  if (!dryRun && text !== file.text) replaceFile(args.path, file, Buffer.from(text, "utf8"), scope);
  return { path: file.real, replacements, line_endings: crlf ? "crlf" : "lf", dry_run: dryRun, diff, size: Buffer.byteLength(text) };
}

/** True when most of the file's line breaks are CRLF. */
export function usesCrlf(text: string): boolean {
  const breaks = text.split("\n").length - 1;
  const crlf = text.split("\r\n").length - 1;
  return crlf > 0 && crlf * 2 >= breaks;
}

/** Applies the edits in order to `text`; throws a Failure naming the edit that does not apply, leaving nothing
 *  half done. Line breaks in old_text and new_text are converted to the file's own, so LF from the model matches
 *  a CRLF file and the file stays CRLF. */
export function applyEdits(text: string, edits: readonly Edit[], crlf: boolean): { text: string; replacements: number } {
  const eol = (s: string) => (crlf ? s.replace(/\r?\n/g, "\r\n") : s.replace(/\r\n/g, "\n"));
  let result = text;
  let replacements = 0;
  edits.forEach((edit, index) => {
    const oldText = eol(edit.old_text);
    const newText = eol(edit.new_text);
    const count = occurrences(result, oldText);
    const which = edits.length > 1 ? `edit ${index + 1}: ` : "";
    const grownTo = result.length + (edit.replace_all ? count : Math.min(count, 1)) * (newText.length - oldText.length);
    if (grownTo > EDIT_MAX_BYTES) {
      fail("too_large", `${which}the file would grow to ${grownTo} characters; edit_file keeps files within ${EDIT_MAX_BYTES} bytes. Nothing was changed.`);
    }
    if (count === 0) {
      const { hint, quote } = closestCandidates(result, oldText);
      fail("not_found", `${which}old_text was not found; nothing was changed.${hint ? ` ${hint}` : ""}`, quote);
    }
    if (count > 1 && !edit.replace_all) {
      fail("invalid_arguments", `${which}old_text occurs ${count} times (lines ${matchLines(result, oldText).join(", ")}); include more surrounding text to pick one, or set replace_all. Nothing was changed.`);
    }
    result = edit.replace_all ? result.split(oldText).join(newText) : replaceFirst(result, oldText, newText);
    replacements += edit.replace_all ? count : 1;
  });
  return { text: result, replacements };
}

function occurrences(text: string, part: string): number {
  let count = 0;
  for (let at = text.indexOf(part); at !== -1; at = text.indexOf(part, at + part.length)) count++;
  return count;
}

/** The 1-based line numbers where `part` starts, at most ten. */
function matchLines(text: string, part: string): number[] {
  const lines: number[] = [];
  for (let at = text.indexOf(part); at !== -1 && lines.length < 10; at = text.indexOf(part, at + part.length)) {
    lines.push(text.slice(0, at).split("\n").length);
  }
  return lines;
}

const replaceFirst = (text: string, oldText: string, newText: string) => {
  const at = text.indexOf(oldText);
  return text.slice(0, at) + newText + text.slice(at + oldText.length);
};

// --- hints for a miss ---

/** Says where old_text nearly matches: ignoring whitespace, or lines like its first line. */
/** Helps the model find what it meant: a `hint` in the relay's words, or a `quote` of the closest lines. */
function closestCandidates(text: string, oldText: string): { hint?: string; quote?: string } {
  const wanted = oldText.replace(/\s+/g, " ").trim();
  const loose = wanted ? lineOfLooseMatch(text, wanted) : null;
  if (loose !== null) {
    return { hint: `It matches at line ${loose} if whitespace is ignored: copy the exact text (indentation, tabs, line breaks) from there.` };
  }
  const first = (oldText.split("\n").find((l) => l.trim() !== "")?.trim() ?? "").slice(0, HINT_COMPARE_CHARS);
  const scored = nearMisses(text.split("\n"), first)
    .sort((a, b) => b.score - a.score)
    .slice(0, HINT_COUNT);
  if (scored.length === 0) return { hint: "No line looks like its first line; read_file the part you mean to change." };
  // The lines themselves are the file's content: they travel as the quote, which is never audited or logged.
  return {
    quote: `Closest lines to its first line: ${scored.map((c) => `line ${c.line}: ${JSON.stringify(c.text.slice(0, 200))}`).join("; ")}.`,
  };
}

/** Lines alike enough to `first`, within the time budget. A line far shorter than `first` cannot reach the minimum
 *  similarity, so it is skipped without comparing. */
function nearMisses(lines: string[], first: string): { line: number; text: string; score: number }[] {
  const found: { line: number; text: string; score: number }[] = [];
  const deadline = Date.now() + HINT_BUDGET_MS;
  for (let i = 0; i < lines.length; i++) {
    if (i % 1_000 === 0 && Date.now() > deadline) break;
    const text = lines[i]!.trim();
    const compared = text.slice(0, HINT_COMPARE_CHARS);
    if (compared.length * 3 < first.length) continue;
    const score = similarity(first, compared);
    if (score >= HINT_MIN_SIMILARITY) found.push({ line: i + 1, text, score });
  }
  return found;
}

/** The line where `wanted` (whitespace already squashed) occurs in `text` with its whitespace squashed too, or
 *  null. One pass: the squashed text is built while noting where each line starts in it. */
function lineOfLooseMatch(text: string, wanted: string): number | null {
  const lineStarts = [0];
  let squashed = "";
  let inSpace = false;
  for (const ch of text) {
    if (ch === "\n") lineStarts.push(squashed.length + (inSpace ? 0 : 1));
    if (/\s/.test(ch)) {
      if (!inSpace) squashed += " ";
      inSpace = true;
    } else {
      squashed += ch;
      inSpace = false;
    }
  }
  const at = squashed.indexOf(wanted);
  if (at === -1) return null;
  let line = 0;
  while (line + 1 < lineStarts.length && lineStarts[line + 1]! <= at) line++;
  return line + 1;
}

/** Dice coefficient over character bigrams: 1 for equal strings, 0 for nothing in common. */
function similarity(a: string, b: string): number {
  if (a === b) return 1;
  if (a.length < 2 || b.length < 2) return 0;
  const bigrams = new Map<string, number>();
  for (let i = 0; i < a.length - 1; i++) bigrams.set(a.slice(i, i + 2), (bigrams.get(a.slice(i, i + 2)) ?? 0) + 1);
  let shared = 0;
  for (let i = 0; i < b.length - 1; i++) {
    const pair = b.slice(i, i + 2);
    const left = bigrams.get(pair) ?? 0;
    if (left > 0) {
      shared++;
      bigrams.set(pair, left - 1);
    }
  }
  return (2 * shared) / (a.length + b.length - 2);
}

// --- unified diff ---

type Op = { kind: " " | "-" | "+"; line: string };

/** A unified diff (as `diff -u`) between two texts, with DIFF_CONTEXT_LINES of context. Empty when equal. */
export function unifiedDiff(before: string, after: string, name: string): string {
  if (before === after) return "";
  const a = linesOf(before);
  const b = linesOf(after);
  const ops = lineOps(a, b);
  const hunks = groupHunks(ops);
  return [`--- ${name}`, `+++ ${name}`, ...hunks].join("\n") + "\n";
}

/** Lines without their "\n"; a final newline ends the last line rather than starting an empty one. */
const linesOf = (text: string) => (text.endsWith("\n") ? text.slice(0, -1) : text).split("\n");

/** The edit script from a to b: common prefix and suffix kept as context, the middle matched line by line
 *  (longest common subsequence) when small enough, else shown as removed then added. */
function lineOps(a: string[], b: string[]): Op[] {
  let prefix = 0;
  while (prefix < a.length && prefix < b.length && a[prefix] === b[prefix]) prefix++;
  let suffix = 0;
  while (suffix < a.length - prefix && suffix < b.length - prefix && a[a.length - 1 - suffix] === b[b.length - 1 - suffix]) suffix++;
  const midA = a.slice(prefix, a.length - suffix);
  const midB = b.slice(prefix, b.length - suffix);
  const middle =
    midA.length * midB.length <= DIFF_MAX_CELLS
      ? lcsOps(midA, midB)
      : [...midA.map((line): Op => ({ kind: "-", line })), ...midB.map((line): Op => ({ kind: "+", line }))];
  const same = (line: string): Op => ({ kind: " ", line });
  return [...a.slice(0, prefix).map(same), ...middle, ...a.slice(a.length - suffix).map(same)];
}

function lcsOps(a: string[], b: string[]): Op[] {
  // lengths[i][j] = LCS of a[i..] and b[j..], in one flat array
  const width = b.length + 1;
  const lengths = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      lengths[i * width + j] = a[i] === b[j] ? lengths[(i + 1) * width + j + 1]! + 1 : Math.max(lengths[(i + 1) * width + j]!, lengths[i * width + j + 1]!);
    }
  }
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      ops.push({ kind: " ", line: a[i++]! });
      j++;
    } else if (i < a.length && (j === b.length || lengths[(i + 1) * width + j]! >= lengths[i * width + j + 1]!)) {
      ops.push({ kind: "-", line: a[i++]! }); // removals first, as diff -u shows them
    } else {
      ops.push({ kind: "+", line: b[j++]! });
    }
  }
  return ops;
}

/** Groups the edit script into hunks with context, each headed `@@ -start,count +start,count @@`. */
function groupHunks(ops: Op[]): string[] {
  const changed = ops.flatMap((op, index) => (op.kind === " " ? [] : [index]));
  const hunks: string[] = [];
  let index = 0;
  while (index < changed.length) {
    const from = Math.max(0, changed[index]! - DIFF_CONTEXT_LINES);
    let to = changed[index]!;
    while (index < changed.length && changed[index]! - to <= 2 * DIFF_CONTEXT_LINES) to = changed[index++]!;
    to = Math.min(ops.length - 1, to + DIFF_CONTEXT_LINES);
    const before = ops.slice(0, from);
    const startA = before.filter((op) => op.kind !== "+").length + 1;
    const startB = before.filter((op) => op.kind !== "-").length + 1;
    const body = ops.slice(from, to + 1);
    const countA = body.filter((op) => op.kind !== "+").length;
    const countB = body.filter((op) => op.kind !== "-").length;
    hunks.push(`@@ -${startA},${countA} +${startB},${countB} @@`);
    for (const op of body) hunks.push(op.kind + op.line); // not push(...lines): hundreds of thousands overflow the stack
  }
  return hunks;
}
