// Builds the agent into one self-contained executable per OS and architecture: `bun run build` writes
// dist/code-remote-agent-<os>-<arch> for the four supported targets, plus dist/SHA256SUMS. Each binary carries
// the Bun runtime for its target (fetched once from the npm registry and cached by Bun), so the machine that
// runs it needs nothing installed. The same source, lockfile and Bun version give the same bytes.
//
//   bun run build                        all four targets into dist/
//   bun run build linux-x64 darwin-arm64 only these
//   bun run build --out /tmp/x native    the target this machine runs (what the Dockerfile does)

import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { VERSION } from "../protocol.ts";

export const ROOT = path.resolve(import.meta.dir, "..");

/** What `bun run build` builds with no arguments. */
export const AGENT_TARGETS = ["linux-x64", "linux-arm64", "darwin-x64", "darwin-arm64"] as const;
/** Also accepted by name: x64 builds for CPUs without AVX2 (before ~2013), which the default x64 runtime needs. */
const EXTRA_TARGETS = ["linux-x64-baseline", "darwin-x64-baseline"] as const;
export type AgentTarget = (typeof AGENT_TARGETS)[number] | (typeof EXTRA_TARGETS)[number];

/** The flags every agent build gets, and why:
 *  --minify --sourcemap: a smaller binary whose stack traces still point at agent.ts (the map is embedded);
 *  --no-compile-autoload-*: the agent's configuration comes from its environment and flags only, never from a
 *  .env or bunfig.toml that happens to lie in the directory it was started from. */
export const COMPILE_FLAGS = ["--minify", "--sourcemap", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig"];

export const binaryName = (target: AgentTarget) => `code-remote-agent-${target}`;

/** The target for the machine (or container) running this build: what `native` means. */
export function nativeTarget(): AgentTarget {
  const os = process.platform === "darwin" ? "darwin" : process.platform === "linux" ? "linux" : undefined;
  const arch = process.arch === "x64" ? "x64" : process.arch === "arm64" ? "arm64" : undefined;
  if (!os || !arch) throw new BuildError(`no agent build for ${process.platform}-${process.arch}; supported: ${AGENT_TARGETS.join(", ")}`);
  return `${os}-${arch}`;
}

export function parseTarget(name: string): AgentTarget {
  if (name === "native") return nativeTarget();
  const known: readonly string[] = [...AGENT_TARGETS, ...EXTRA_TARGETS];
  if (!known.includes(name)) throw new BuildError(`unknown target '${name}'; choose from: native, ${known.join(", ")}`);
  return name as AgentTarget;
}

export class BuildError extends Error {}

export interface BuiltBinary {
  target: AgentTarget;
  path: string;
  bytes: number;
  sha256: string;
  ms: number;
}

/** Builds agent.ts for one target into `outDir` and returns where it went and its checksum. Throws BuildError
 *  with bun's own message (and a hint when the target's runtime could not be downloaded). */
export async function buildAgent(target: AgentTarget, outDir: string): Promise<BuiltBinary> {
  fs.mkdirSync(outDir, { recursive: true });
  const name = binaryName(target);
  // Build into a scratch folder inside outDir under the final file name: the name is recorded in the embedded
  // source map (so it must not vary), and a rename within one file system is atomic, so a failed or interrupted
  // build never leaves a half-written binary where a finished one is expected.
  const scratch = fs.mkdtempSync(path.join(outDir, ".build-"));
  const started = performance.now();
  try {
    const proc = Bun.spawn(
      [process.execPath, "build", "agent.ts", "--compile", `--target=bun-${target}`, ...COMPILE_FLAGS, "--outfile", path.join(scratch, name)],
      // From the repository root: the source map names files relative to it, so a clone anywhere builds the same bytes.
      { cwd: ROOT, stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new BuildError(explainFailure(target, `${stdout}\n${stderr}`));
    const final = path.join(outDir, name);
    fs.renameSync(path.join(scratch, name), final);
    return { target, path: final, bytes: fs.statSync(final).size, sha256: await sha256File(final), ms: Math.round(performance.now() - started) };
  } finally {
    // The separate .map bun writes beside the binary is a copy of the embedded one: it is dropped with the folder.
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

function explainFailure(target: AgentTarget, output: string): string {
  // Bun's timing lines ("[26ms] bundle 97 modules") say nothing about the failure.
  const detail = output.split("\n").map((l) => l.trim()).filter((l) => l && !/^\[[\d.]+m?s\]/.test(l)).slice(-6).join("\n    ");
  const hint = /download|ConnectionRefused|ECONNREFUSED|ENOTFOUND|Timeout|fetch/i.test(output)
    ? `\n  Bun could not download its ${target} runtime (Bun ${Bun.version}) from the npm registry. Check the ` +
      "network or proxy (HTTPS_PROXY), or build only the native target: bun run build native"
    : "";
  return `building ${target} failed:\n    ${detail}${hint}`;
}

/** SHA-256 of a file, read in chunks (a binary is ~100 MB). */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Writes SHA256SUMS in the format `sha256sum -c` and `shasum -a 256 -c` check. */
export function writeChecksums(outDir: string, built: readonly BuiltBinary[]): string {
  const file = path.join(outDir, "SHA256SUMS");
  const lines = [...built].sort((a, b) => a.target.localeCompare(b.target)).map((b) => `${b.sha256}  ${path.basename(b.path)}\n`);
  fs.writeFileSync(file, lines.join(""));
  return file;
}

/** A path as the user would type it: relative when under the current directory, else absolute. */
function displayPath(p: string): string {
  const relative = path.relative(process.cwd(), p);
  return relative === "" ? "." : relative.startsWith("..") ? p : relative;
}

const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;

interface Options {
  outDir: string;
  targets: AgentTarget[];
}

function parseArgs(argv: string[]): Options | "help" {
  let outDir = path.join(ROOT, "dist");
  const names: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") return "help";
    if (arg === "--out") {
      const value = argv[++i];
      if (!value) throw new BuildError("--out needs a directory");
      outDir = path.resolve(value);
    } else if (arg.startsWith("-")) {
      throw new BuildError(`unknown option '${arg}'; see --help`);
    } else {
      names.push(arg);
    }
  }
  const targets = [...new Set((names.length ? names : [...AGENT_TARGETS]).map(parseTarget))];
  return { outDir, targets };
}

const USAGE = `Usage: bun run build [--out DIR] [TARGET...]

Compiles agent.ts into self-contained executables, DIR/code-remote-agent-TARGET (default DIR: dist/),
and writes DIR/SHA256SUMS. TARGET: ${AGENT_TARGETS.join(", ")} (the default: all four),
${EXTRA_TARGETS.join(", ")} (for x64 CPUs without AVX2), or native (this machine).`;

async function main(argv: string[]): Promise<number> {
  let options: Options | "help";
  try {
    options = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof BuildError)) throw e;
    console.error(`build: ${e.message}`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  const { outDir, targets } = options;
  const shown = displayPath(outDir);
  console.log(`build: agent ${VERSION} with bun ${Bun.version}, ${targets.length} target(s) into ${shown}/`);
  // A checksum file from an earlier run must not outlive a build that fails half-way and vouch for stale files.
  fs.rmSync(path.join(outDir, "SHA256SUMS"), { force: true });
  const built: BuiltBinary[] = [];
  for (const target of targets) {
    process.stdout.write(`build: ${target.padEnd(20)} `);
    try {
      const b = await buildAgent(target, outDir);
      built.push(b);
      console.log(`${mb(b.bytes).padStart(9)}  ${(b.ms / 1000).toFixed(1)} s  sha256 ${b.sha256.slice(0, 16)}…`);
    } catch (e) {
      if (!(e instanceof BuildError)) throw e;
      console.log("FAILED");
      console.error(`build: ${e.message}`);
      return 1;
    }
  }
  const sums = writeChecksums(outDir, built);
  console.log(`build: wrote ${displayPath(sums)} (check with: cd ${shown} && sha256sum -c SHA256SUMS)`);
  return 0;
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
