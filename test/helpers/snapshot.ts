// What "nothing changed" means for a directory tree: the tests that send refused or racing calls compare a snapshot
// taken before with one taken after.

import { expect } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import type { McpClient } from "./processes.ts";
import { call } from "./tools.ts";

/** Every name under `dir`, recursively and without following symlinks, with its mode and mtime, the contents of
 *  regular files and the target of symlinks. */
export function snapshot(dir: string): string {
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => {
      const full = path.join(dir, name);
      const stat = fs.lstatSync(full);
      const head = `${name}:${stat.mode.toString(8)}:${stat.mtimeMs}`;
      if (stat.isDirectory()) return `${head}/[${snapshot(full)}]`;
      if (stat.isSymbolicLink()) return `${head}->${fs.readlinkSync(full)}`;
      return stat.isFile() ? `${head}=${fs.readFileSync(full, "utf8")}` : head;
    })
    .join("|");
}

/** Calls `tool`, expects a tool error matching `message`, and that nothing under `tree` changed; returns the error
 *  text for further checks. */
export async function expectRefusedLeavingTreeUnchanged(client: McpClient, tree: string, tool: string, args: Record<string, unknown>, message: RegExp): Promise<string> {
  const before = snapshot(tree);
  const r = await call(client, tool, args);
  expect(r.isError).toBe(true);
  expect(r.text).toMatch(message);
  expect(snapshot(tree)).toBe(before);
  return r.text;
}
