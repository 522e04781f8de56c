// The layout tells the architecture (DESIGN.md §1, "Two wings"): the top level holds the two entry points, the
// contract and one shared helper; the relay's parts live in relay/ and the agent's in agent/, each with a README;
// neither wing imports the other, and no module imports itself back through others. Read from the files on disk,
// type-only imports included, since they are what a reader follows too.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { ROOT } from "../helpers/processes.ts";

const TOP_LEVEL_MODULES = ["agent.ts", "log.ts", "protocol.ts", "server.ts"];
const WINGS = { relay: "server.ts", agent: "agent.ts" } as const;

/** Every non-test TypeScript file of the product and its tooling, relative to the repository root. */
function sourceFiles(): string[] {
  const inFolder = (folder: string) =>
    fs
      .readdirSync(path.join(ROOT, folder), { recursive: true, encoding: "utf8" })
      .filter((f) => f.endsWith(".ts"))
      .map((f) => path.join(folder, f));
  return [...fs.readdirSync(ROOT).filter((f) => f.endsWith(".ts")), ...inFolder("relay"), ...inFolder("agent"), ...inFolder("scripts")];
}

/** The relative modules a file imports (static, dynamic and type-only), as paths from the repository root. */
function importsOf(file: string): string[] {
  const text = fs.readFileSync(path.join(ROOT, file), "utf8");
  const specifiers = [...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(?\s*)"(\.{1,2}\/[^"]+)"/g)].map((m) => m[1]!);
  return specifiers.map((s) => path.normalize(path.join(path.dirname(file), s)));
}

const graph = new Map(sourceFiles().map((file) => [file, importsOf(file)]));
const wingOf = (file: string) => (file.startsWith("relay/") || file === WINGS.relay ? "relay" : file.startsWith("agent/") || file === WINGS.agent ? "agent" : undefined);

describe("the layout", () => {
  test("the top level holds only the entry points, the contract and the logger", () => {
    expect(fs.readdirSync(ROOT).filter((f) => f.endsWith(".ts")).sort()).toEqual(TOP_LEVEL_MODULES);
    expect(fs.existsSync(path.join(ROOT, "bunfig.toml"))).toBe(true);
  });

  test.each(Object.keys(WINGS))("%s/ has a README of ten to thirty lines that names each of its files", (wing) => {
    const readme = fs.readFileSync(path.join(ROOT, wing, "README.md"), "utf8");
    const lines = readme.trimEnd().split("\n").length;
    expect(lines).toBeGreaterThanOrEqual(10);
    expect(lines).toBeLessThanOrEqual(30);
    for (const file of fs.readdirSync(path.join(ROOT, wing)).filter((f) => f.endsWith(".ts"))) expect(readme).toContain(file);
  });

  test("every relative import names a file that exists", () => {
    const missing = [...graph].flatMap(([file, imports]) => imports.filter((i) => !fs.existsSync(path.join(ROOT, i))).map((i) => `${file} -> ${i}`));
    expect(missing).toEqual([]);
  });

  test("neither wing imports the other, and the shared modules import neither", () => {
    const crossings = [...graph].flatMap(([file, imports]) =>
      imports.filter((target) => wingOf(target) !== undefined && wingOf(target) !== wingOf(file)).map((target) => `${file} -> ${target}`),
    );
    expect(crossings).toEqual([]);
  });

  test("no module imports itself back through others", () => {
    const cycles: string[] = [];
    const done = new Set<string>();
    const visit = (file: string, trail: string[]) => {
      if (trail.includes(file)) return void cycles.push([...trail.slice(trail.indexOf(file)), file].join(" -> "));
      if (done.has(file)) return;
      for (const next of graph.get(file) ?? []) visit(next, [...trail, file]);
      done.add(file);
    };
    for (const file of graph.keys()) visit(file, []);
    expect(cycles).toEqual([]);
  });
});
