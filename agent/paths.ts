// The agent's path policy: the only boundary the file tools have. A pure core (isInsideRoot, expandPath) decides
// containment on normalized absolute paths; a thin I/O shell resolves where a path really lands (symlinks
// followed, also to missing targets, but never another user's link in a shared sticky directory) and opens what was
// checked, so the operation works on a descriptor rather than a name that could be swapped meanwhile. A place is
// reachable when it is inside an allowed root and not one of the agent's own files (own-files.ts). Commands
// (run_shell_command) are not confined by any of this.

import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../protocol.ts";

// --- path policy (pure) ---

/** True when `target` is `root` or lies under it. Both must be absolute and normalized. Pure: no disk access.
 *  Comparing with `root + sep` is what stops the sibling-prefix escape (/tmp vs /tmpx, /home/a vs /home/a2). */
export function isInsideRoot(target: string, root: string): boolean {
  if (target === root) return true;
  const prefix = root.endsWith(path.sep) ? root : root + path.sep;
  return target.startsWith(prefix);
}

export const isInsideRoots = (target: string, roots: readonly string[]) => roots.some((r) => isInsideRoot(target, r));

/** Where the file tools may act: the real allowed roots, the home directory for ~, and the real paths of the
 *  agent's own files and directories, which stay out of reach whatever the roots say. */
export interface FileScope {
  roots: readonly string[];
  home: string;
  ownFiles: readonly string[];
  /** Paths the machine's policy forbids reading (paths.read deny rules): left out of listings and searches. */
  hidden?: (real: string) => boolean;
}

/** True when `real` is, or lies in, one of the agent's own files or directories. Pure. */
export const isOwnFile = (real: string, scope: FileScope) => isInsideRoots(real, scope.ownFiles);

/** Whether a listing or search leaves `real` out: the agent's own files, and what the machine's policy hides. */
export const isOutOfSight = (real: string, scope: FileScope) => isOwnFile(real, scope) || scope.hidden?.(real) === true;

/** True when the file tools may touch the real path `real`. Pure. */
export const isReachable = (real: string, scope: FileScope) => isInsideRoots(real, scope.roots) && !isOwnFile(real, scope);

/** Turns what the model sent into an absolute, normalized path, or explains why it cannot. Pure. */
export function expandPath(input: string, home: string): string {
  if (input.length === 0) fail("invalid_arguments", "The path is empty.");
  if (input.includes("\0")) fail("invalid_arguments", "The path contains a NUL byte.");
  let expanded = input;
  if (input === "~" || input.startsWith("~/")) expanded = home + input.slice(1);
  else if (input.startsWith("~")) fail("invalid_arguments", `'${input}': only ~ (this user's home) is supported, not ~user.`);
  if (!path.isAbsolute(expanded)) fail("invalid_arguments", `'${input}' is relative: give an absolute path or start it with ~.`);
  return path.resolve(expanded);
}

// --- path policy (I/O) ---

/** Fails with the reason `real` (where `input` leads) is out of reach, if it is. */
function checkReach(real: string, input: string, scope: FileScope): void {
  if (!isInsideRoots(real, scope.roots)) fail("path_denied", `Access denied: '${input}' is outside the allowed roots (${scope.roots.join(", ")}).`);
  if (isOwnFile(real, scope)) {
    fail("path_denied", `Access denied: '${input}' is one of the agent's own files (its settings and token, command records and output, identity key, service definition or logs), which no file tool touches, whatever the allowed roots.`);
  }
}

export const errnoOf = (e: unknown) => (e as NodeJS.ErrnoException)?.code;

/** Where a path really leads, for an operation on something that must exist. The real path (all symlinks
 *  resolved) must be reachable; a path that is not gets "denied" whether or not it exists, so nothing out of
 *  reach can be probed. */
export function resolveExisting(input: string, scope: FileScope): string {
  const { target, exists } = landing(input, expandPath(input, scope.home));
  checkReach(target, input, scope);
  if (!exists) fail("not_found", `'${input}' does not exist.`);
  return target;
}

/** Where a write to `input` would land: the real path of an existing file (through a symlink inside the
 *  roots), or the real path of the nearest existing parent joined with the names still to be created. */
export function resolveForWrite(input: string, scope: FileScope): string {
  const { target, dangling } = landing(input, expandPath(input, scope.home));
  checkReach(target, input, scope);
  // Writing through a dangling symlink would create its target: refuse rather than follow, even inside.
  if (dangling) fail("path_denied", `'${input}' goes through a symlink to something that does not exist; refusing to follow it.`);
  return target;
}

interface Landing {
  /** The absolute path every symlink leads to; missing components are joined as they are. */
  target: string;
  exists: boolean;
  /** A symlink on the way points to something missing. */
  dangling: boolean;
}

/** Resolves `absolute` like realpath, but also when its end (or a symlink's target) does not exist, so the
 *  policy can judge where a missing path *would* be. Dangling symlinks are followed to their would-be target:
 *  the answer for a link pointing outside is "denied" whether its target exists or not. */
function landing(input: string, absolute: string): Landing {
  try {
    const real = fs.realpathSync(absolute);
    // The path is its own real path: no symlink on the way, so no link to judge (the common case costs one call).
    if (real === absolute) return { target: real, exists: true, dangling: false };
  } catch (e) {
    const code = errnoOf(e);
    if (code === "ELOOP") fail("path_denied", `'${input}' is a symlink loop.`);
    if (code !== "ENOENT" && code !== "ENOTDIR") fail("io_error", `Cannot resolve '${input}': ${code ?? e}.`);
  }
  return walkByHand(input, absolute);
}

/** Max symlinks followed for one path, as the kernel's own limit (MAXSYMLINKS is 40 on Linux). */
const MAX_SYMLINK_HOPS = 40;

/** Walks `absolute` one component at a time with lstat, following symlinks by hand the way the kernel does: a
 *  link's target is spliced into the components still to walk, so its `..` climbs from where the walk really
 *  is, not from the text of the path. A component missing among those that came from a link makes it dangling. */
function walkByHand(input: string, absolute: string): Landing {
  const pending = absolute.split(path.sep).filter(Boolean);
  let current: string = path.sep;
  let hops = 0;
  let fromLink = 0; // how many of the leading pending components came from symlink targets
  while (pending.length > 0) {
    const part = pending.shift()!;
    const linked = fromLink > 0;
    if (linked) fromLink--;
    if (part === ".") continue;
    if (part === "..") {
      current = path.dirname(current);
      continue;
    }
    const next = path.join(current, part);
    let stat: fs.Stats;
    try {
      stat = fs.lstatSync(next);
    } catch (e) {
      const code = errnoOf(e);
      if (code !== "ENOENT" && code !== "ENOTDIR") fail("io_error", `Cannot resolve '${input}': ${code ?? e}.`);
      return { target: path.join(next, ...pending), exists: false, dangling: linked };
    }
    if (!stat.isSymbolicLink()) {
      current = next;
      continue;
    }
    if (++hops > MAX_SYMLINK_HOPS) fail("path_denied", `'${input}' is a symlink loop.`);
    refuseForeignLink(input, current, next, stat);
    const target = fs.readlinkSync(next);
    if (path.isAbsolute(target)) current = path.sep;
    const targetParts = target.split(path.sep).filter(Boolean);
    pending.unshift(...targetParts);
    fromLink += targetParts.length;
  }
  return { target: current, exists: true, dangling: false };
}

const STICKY = 0o1000;
const OTHERS_WRITE = 0o002;

/** The kernel's protected_symlinks rule, applied whatever the kernel does (it is off on macOS and on some Linux
 *  systems): a symlink in a sticky world-writable directory (/tmp, /var/tmp) is followed only when it belongs to
 *  this process's user or to the directory's owner. Anyone can plant a link there, and following another user's
 *  would let them send a write_file meant for /tmp into this user's own files. */
function refuseForeignLink(input: string, dir: string, link: string, linkStat: fs.Stats): void {
  if (linkStat.uid === process.geteuid!()) return;
  const dirStat = fs.statSync(dir);
  const shared = (dirStat.mode & STICKY) !== 0 && (dirStat.mode & OTHERS_WRITE) !== 0;
  if (shared && linkStat.uid !== dirStat.uid) {
    fail("path_denied", `Access denied: '${input}' goes through ${link}, a symlink another user (uid ${linkStat.uid}) owns in the shared directory ${dir}; such links are not followed.`);
  }
}

// --- descriptors: operate on what was checked, not on a name that can be swapped ---

export const { O_RDONLY, O_WRONLY, O_APPEND, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY } = fs.constants;
const HAS_PROC_FD = process.platform === "linux" && fs.existsSync("/proc/self/fd");

/** A path that names exactly the open descriptor `fd`. On Linux, /proc/self/fd/N is bound to the open file, so a
 *  symlink swapped into the path after the check cannot redirect us. Elsewhere it falls back to the checked path
 *  (a small race window remains; documented in docs/ARCHITECTURE.md). */
export const fdPath = (fd: number, checkedPath: string) => (HAS_PROC_FD ? `/proc/self/fd/${fd}` : checkedPath);

/** A path through a checked directory's descriptor (fdPath): it lands wherever that directory is. */
const throughDescriptor = (p: string) => HAS_PROC_FD && p.startsWith("/proc/self/fd/");

/** Opens `real` without following a final symlink and checks, on Linux, where the descriptor really is: still
 *  reachable, and (for a real path) exactly the place that was checked. A directory on the way swapped for a
 *  symlink since the check shows as a different place, even one inside the roots (another user's link in /tmp
 *  pointing into this user's home). Closes the fd on failure. */
export function openChecked(real: string, flags: number, scope: FileScope, input: string): number {
  let fd: number;
  try {
    fd = fs.openSync(real, flags | O_NOFOLLOW);
  } catch (e) {
    const code = errnoOf(e);
    if (code === "ELOOP") return fail("path_denied", `'${input}' changed into a symlink while being opened.`);
    if (code === "ENOTDIR") return fail("wrong_type", `'${input}' is not a directory.`);
    if (code === "ENOENT") return fail("not_found", `'${input}' does not exist.`);
    if (code === "EACCES" || code === "EPERM") return fail("io_error", `Permission denied: '${input}'.`);
    return fail("io_error", `Cannot open '${input}': ${code ?? e}.`);
  }
  if (HAS_PROC_FD) {
    const opened = fs.readlinkSync(`/proc/self/fd/${fd}`);
    try {
      checkReach(opened, input, scope);
      if (!throughDescriptor(real) && opened !== real) fail("path_denied", `'${input}' changed while being opened (a directory on its path was moved or replaced); nothing was done. Try again.`);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }
  return fd;
}

/** Where `absolute` really is (its real path, or its nearest existing parent's joined with the rest), for the
 *  agent's own files, resolved once like the roots. Unresolvable (a loop): as given. */
export function realLocation(absolute: string): string {
  try {
    return landing(absolute, path.resolve(absolute)).target;
  } catch {
    return path.resolve(absolute);
  }
}
