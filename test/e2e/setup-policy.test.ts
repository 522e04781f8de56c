// `code-remote-agent setup` and the owner's policy file, run as the real agent from source in a fresh home (a temp
// HOME and XDG_CONFIG_HOME, --no-check: no relay is needed): --policy writes policy.toml beside agent.env, private
// and readable by Bun's TOML parser; a wrong preset stops setup before it writes anything; a file the owner wrote
// rules into is kept unless --force says otherwise; and without --policy a script's setup writes no policy at all,
// so an agent set up that way stays open, as before policies. The terminal's question runs in a real pseudo-terminal.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { parsePolicy } from "../../agent/policy.ts";
import { NEUTRAL_CWD, ROOT, tempDir } from "../helpers/processes.ts";
import { openTerminal, SCRIPT } from "../helpers/terminal.ts";

const AGENT = path.join(ROOT, "agent.ts");
const TOKEN = "crm_setup-policy-test-token";

/** A fresh user's home, with the agent token in a file as a user would keep it for --token-file. */
function freshHome() {
  const home = tempDir("cr-policy-home-");
  fs.writeFileSync(path.join(home.path, "token"), `${TOKEN}\n`, { mode: 0o600 });
  const configDir = path.join(home.path, "config", "code-remote");
  return Object.assign(home, {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home.path, XDG_CONFIG_HOME: path.join(home.path, "config") },
    configDir,
    settings: path.join(configDir, "agent.env"),
    policy: path.join(configDir, "policy.toml"),
    /** The flags a script gives setup, without a relay to check against. */
    flags: ["--relay-url", "wss://relay.example.com/ws/agent", "--token-file", path.join(home.path, "token"), "--machine", "policy-box", "--no-check"],
  });
}

/** Runs `agent.ts setup args` to completion, with no terminal (so setup never asks). */
function setup(home: ReturnType<typeof freshHome>, args: string[]) {
  const result = Bun.spawnSync([process.execPath, "run", AGENT, "setup", ...args], { cwd: NEUTRAL_CWD, env: home.env, stdin: "ignore" });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

const mode = (file: string) => (fs.statSync(file).mode & 0o777).toString(8);

/** A policy the owner wrote by hand: a preset, and rules of their own. */
const HAND_WRITTEN = `preset = "ask-to-change"\n\n[commands]\nallow = ["git status", "npm test"]\n`;

describe("setup --policy", () => {
  test("--policy read-only writes policy.toml beside agent.env: mode 600, the preset, every section explained", () => {
    using home = freshHome();
    const r = setup(home, [...home.flags, "--policy", "read-only"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Saved ${home.policy} (mode 600): preset "read-only": reads run; commands and file changes are refused.`);
    expect(mode(home.policy)).toBe("600");
    const text = fs.readFileSync(home.policy, "utf8");
    expect(Bun.TOML.parse(text)).toEqual({ preset: "read-only" }); // everything else is a comment, for the owner to uncomment
    expect(parsePolicy(text, home.policy, home.path).preset).toBe("read-only"); // and the agent reads it as such
    for (const section of ["[tools]", "[paths.read]", "[paths.change]", "[commands]", "approval_timeout"]) expect(text).toContain(`# ${section}`);
    for (const preset of ['"open"', '"ask-to-change"', '"read-only"']) expect(text).toContain(preset);
    // Written through a temp file and a rename: nothing else is left beside the two files.
    expect(fs.readdirSync(home.configDir).sort()).toEqual(["agent.env", "policy.toml"]);
    expect(fs.readFileSync(home.settings, "utf8")).toContain(`AGENT_TOKEN=${TOKEN}\n`);
  });

  test("a preset setup does not know stops it with exit 2, naming the presets, before it writes anything", () => {
    using home = freshHome();
    const r = setup(home, [...home.flags, "--policy", "strict"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--policy 'strict' is not a preset: use open, ask-to-change or read-only.");
    expect(r.stderr).toContain("See: code-remote-agent setup --help");
    expect(fs.existsSync(home.configDir)).toBe(false);

    const missing = setup(home, [...home.flags, "--policy"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("--policy needs a value.");
    expect(fs.existsSync(home.configDir)).toBe(false);
  });

  test("a policy.toml with rules of the owner's is kept without --force, saying so, and replaced with it", () => {
    using home = freshHome();
    fs.mkdirSync(home.configDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(home.policy, HAND_WRITTEN, { mode: 0o600 });

    const kept = setup(home, [...home.flags, "--policy", "read-only"]);
    expect(kept.code).toBe(0);
    expect(kept.stdout).toContain(`Kept ${home.policy} as it is (preset "ask-to-change" with [commands]), so preset "read-only" was not applied`);
    expect(kept.stdout).toContain("pass --force with --policy to replace it");
    expect(fs.readFileSync(home.policy, "utf8")).toBe(HAND_WRITTEN);
    expect(fs.existsSync(home.settings)).toBe(true); // the settings themselves are saved

    // --force for the settings alone, without --policy, leaves the policy as it is.
    const renamed = setup(home, ["--force", "--no-check", "--machine", "renamed"]);
    expect(renamed.code).toBe(0);
    expect(renamed.stdout).toContain(`Kept ${home.policy} as it is (preset "ask-to-change" with [commands]).`);
    expect(fs.readFileSync(home.policy, "utf8")).toBe(HAND_WRITTEN);

    const replaced = setup(home, ["--force", "--no-check", "--policy", "read-only"]);
    expect(replaced.code).toBe(0);
    expect(replaced.stdout).toContain(`Replaced ${home.policy}, which held preset "ask-to-change" with [commands], with preset "read-only"`);
    expect(Bun.TOML.parse(fs.readFileSync(home.policy, "utf8"))).toEqual({ preset: "read-only" });
    expect(mode(home.policy)).toBe("600");
  });

  test("a file that is only a preset line (as setup writes it) is switched to another preset without --force", () => {
    using home = freshHome();
    expect(setup(home, [...home.flags, "--policy", "ask-to-change"]).code).toBe(0);
    expect(parsePolicy(fs.readFileSync(home.policy, "utf8"), home.policy, home.path).preset).toBe("ask-to-change");
    const same = setup(home, ["--force", "--no-check", "--policy", "ask-to-change"]);
    expect(same.stdout).toContain(`Kept ${home.policy}: preset "ask-to-change", unchanged.`);

    fs.writeFileSync(home.policy, `# mine\npreset = 'ask-to-change' # for now\n`); // a hand-written preset line is no more than that
    const open = setup(home, ["--force", "--no-check", "--policy", "open"]);
    expect(open.code).toBe(0);
    expect(open.stdout).toContain(`Saved ${home.policy} (mode 600): preset "open"`);
    expect(parsePolicy(fs.readFileSync(home.policy, "utf8"), home.policy, home.path).preset).toBe("open");
  });

  test("a policy.toml the agent would refuse is kept, and setup says what is wrong with it", () => {
    using home = freshHome();
    fs.mkdirSync(home.configDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(home.policy, `preset = "read-only\n`, { mode: 0o600 });
    const r = setup(home, [...home.flags, "--policy", "open"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Kept ${home.policy} as it is (text that is not valid TOML), so preset "open" was not applied`);
    expect(r.stdout).toContain(`It has a mistake: ${home.policy}, line 1: not valid TOML`);
    expect(r.stdout).toContain("Until it is fixed, the agent will not start, and a running one refuses every call.");
    expect(fs.readFileSync(home.policy, "utf8")).toBe(`preset = "read-only\n`);

    // Valid TOML with a value the agent does not accept: named, and kept too.
    const typo = `preset = "ask-to-change"\n[tools]\nwrite_file = "maybe"\n`;
    fs.writeFileSync(home.policy, typo);
    const again = setup(home, ["--force", "--no-check"]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`Kept ${home.policy} as it is (preset "ask-to-change" with [tools]). It has a mistake: ${home.policy}: `);
    expect(again.stdout).toContain('"allow", "ask" or "deny"');
    expect(fs.readFileSync(home.policy, "utf8")).toBe(typo);
  });

  test("writes the policy where POLICY_FILE in agent.env says, not beside agent.env", () => {
    using home = freshHome();
    expect(setup(home, home.flags).code).toBe(0);
    const elsewhere = path.join(home.path, "policies", "box.toml");
    fs.appendFileSync(home.settings, "POLICY_FILE=~/policies/box.toml\n");
    const r = setup(home, ["--force", "--no-check", "--policy", "read-only"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Saved ${elsewhere} (mode 600): preset "read-only"`);
    expect(Bun.TOML.parse(fs.readFileSync(elsewhere, "utf8"))).toEqual({ preset: "read-only" });
    expect(mode(elsewhere)).toBe("600");
    expect(fs.existsSync(home.policy)).toBe(false);
    expect(fs.readFileSync(home.settings, "utf8")).toContain("POLICY_FILE=~/policies/box.toml\n"); // kept, like any setting
  });

  test("without --policy, a new setup without a terminal writes no policy.toml, and says the agent is open", () => {
    using home = freshHome();
    const r = setup(home, home.flags);
    expect(r.code).toBe(0);
    expect(fs.existsSync(home.settings)).toBe(true);
    expect(fs.existsSync(home.policy)).toBe(false);
    expect(r.stdout).toContain(`No policy file (${home.policy}): the agent lets an assistant do anything this user can (preset "open"`);
    expect(r.stdout).toContain("--force --policy ask-to-change");
  });

  test("--help explains --policy, its presets, and what a setup without a terminal does without it", () => {
    using home = freshHome();
    const r = setup(home, ["--help"]);
    expect(r.code).toBe(0);
    for (const text of ["--policy PRESET", "open", "ask-to-change", "read-only", "a new setup without it writes\nnone"]) expect(r.stdout).toContain(text);
  });
});

describe("setup's policy question in a terminal", () => {
  /** Runs setup in a pseudo-terminal with everything but the policy given as flags, answers the policy question
   *  with `answer`, and returns the screen. */
  async function inTerminal(home: ReturnType<typeof freshHome>, answer: string) {
    const terminal = openTerminal([process.execPath, "run", AGENT, "setup", ...home.flags], home.env);
    await terminal.answer(/Policy \[[a-z-]+\]: /, answer);
    return terminal.finish((screen) => screen.includes("Next:") || screen.includes("restart it with"));
  }

  test.skipIf(process.platform !== "linux" || !SCRIPT)("asks what an assistant may do: Enter takes ask-to-change for a new setup, and the file's preset after", async () => {
    using home = freshHome();
    const first = await inTerminal(home, "");
    expect(first).toContain("What may an assistant do on this machine?");
    for (const line of ["1. open", "2. ask-to-change", "3. read-only"]) expect(first).toContain(line);
    expect(first).toContain("Policy [ask-to-change]: ");
    expect(first).not.toContain("Machine name"); // given as a flag, so not asked
    expect(Bun.TOML.parse(fs.readFileSync(home.policy, "utf8"))).toEqual({ preset: "ask-to-change" });

    // Run again: the current preset is the default, and another one (by its number) replaces it.
    const second = await inTerminal(home, "3");
    expect(second).toContain("Policy [ask-to-change]: ");
    expect(Bun.TOML.parse(fs.readFileSync(home.policy, "utf8"))).toEqual({ preset: "read-only" });
  });

  test.skipIf(process.platform !== "linux" || !SCRIPT)("offers to keep a file with rules of the owner's, and Enter keeps it", async () => {
    using home = freshHome();
    fs.mkdirSync(home.configDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(home.policy, HAND_WRITTEN, { mode: 0o600 });
    const screen = await inTerminal(home, "");
    expect(screen).toContain(`4. keep           leave ${home.policy} as it is (preset "ask-to-change" with [commands])`);
    expect(screen).toContain("Policy [keep]: ");
    expect(fs.readFileSync(home.policy, "utf8")).toBe(HAND_WRITTEN);
  });
});
