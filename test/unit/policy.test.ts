// The owner's policy (agent/policy.ts): presets, the order in which rules and tool settings decide, command rules
// (allow only for simple commands; deny, best effort, anywhere in a compound one), path rules on a real temp tree
// with symlinks, errors that name the key, reloading when the file changes and failing closed when it breaks,
// and the summary check_agent_status shows.

import { afterAll, afterEach, beforeEach, describe, expect, spyOn, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ConfigError, loadConfig } from "../../agent/config.ts";
import { ownFiles } from "../../agent/own-files.ts";
import { parsePolicy, PolicyError, PolicySource, simpleCommandWords, type Judgement } from "../../agent/policy.ts";
import type { AgentOp } from "../../protocol.ts";

const base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "policy-test-")));
afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

const HOME = "/home/owner";
const FILE = "/etc/code-remote/policy.toml";
const policy = (text: string, home = HOME) => parsePolicy(text, FILE, home);
const verdict = (judgement: Judgement) => judgement.verdict;

const EVERY_TOOL: AgentOp[] = [
  "read_file",
  "list_directory",
  "search_files",
  "file_info",
  "get_command_output",
  "list_commands",
  "write_file",
  "edit_file",
  "run_shell_command",
  "send_command_input",
  "kill_command",
];

/** Arguments that pass for each tool: what the judge looks at. */
const ARGS: Partial<Record<AgentOp, Record<string, unknown>>> = {
  run_shell_command: { command: "make" },
  send_command_input: { command_id: "3f9c0a1b2c3d@box", input: "y\n" },
};
const argsOf = (op: AgentOp) => ARGS[op] ?? { path: `${HOME}/notes.txt` };
const settings = (text: string) => Object.fromEntries(EVERY_TOOL.map((op) => [op, verdict(policy(text).judge(op, argsOf(op), `${HOME}/notes.txt`))]));

describe("presets", () => {
  test("open: every tool runs", () => {
    expect(Object.values(settings('preset = "open"'))).toEqual(EVERY_TOOL.map(() => "allow"));
    expect(policy('preset = "open"').judge("write_file", argsOf("write_file"))).toEqual({ verdict: "allow", rule: 'tools.write_file = "allow" (preset open)' });
  });

  test("ask-to-change: reads run, changes and commands ask, stopping a command runs", () => {
    expect(settings('preset = "ask-to-change"')).toEqual({
      read_file: "allow",
      list_directory: "allow",
      search_files: "allow",
      file_info: "allow",
      get_command_output: "allow",
      list_commands: "allow",
      write_file: "ask",
      edit_file: "ask",
      run_shell_command: "ask",
      send_command_input: "ask",
      kill_command: "allow",
    });
  });

  test("read-only: changes and commands are refused, naming the preset", () => {
    const readOnly = settings('preset = "read-only"');
    expect([readOnly.read_file, readOnly.write_file, readOnly.edit_file, readOnly.run_shell_command, readOnly.send_command_input, readOnly.kill_command]).toEqual(["allow", "deny", "deny", "deny", "deny", "allow"]);
    expect(policy('preset = "read-only"').judge("run_shell_command", { command: "ls" }).rule).toBe('tools.run_shell_command = "deny" (preset read-only)');
  });

  test("[tools] overrides the preset per tool", () => {
    const p = policy('preset = "read-only"\n[tools]\nwrite_file = "ask"\nread_file = "deny"');
    expect(p.judge("write_file", argsOf("write_file"))).toEqual({ verdict: "ask", rule: 'tools.write_file = "ask"' });
    expect(p.judge("read_file", argsOf("read_file"))).toEqual({ verdict: "deny", rule: 'tools.read_file = "deny"' });
    expect(verdict(p.judge("edit_file", argsOf("edit_file")))).toBe("deny");
  });

  test("status is always allowed, whatever the file says", () => {
    expect(policy('preset = "read-only"').judge("status", {})).toEqual({ verdict: "allow", rule: "status (check_agent_status) is always allowed" });
    expect(() => policy('[tools]\nstatus = "deny"')).toThrow(/unknown key tools\.status/);
  });

  test("edit_file with dry_run is judged as a read", () => {
    const p = policy('preset = "read-only"');
    expect(verdict(p.judge("edit_file", { path: "~/a", edits: [], dry_run: true }, `${HOME}/a`))).toBe("allow");
    expect(verdict(p.judge("edit_file", { path: "~/a", edits: [], dry_run: false }, `${HOME}/a`))).toBe("deny");
    const noReads = policy('preset = "open"\n[tools]\nread_file = "deny"\nedit_file = "allow"');
    expect(noReads.judge("edit_file", { path: "~/a", dry_run: true }, `${HOME}/a`).rule).toBe('edit_file with dry_run is judged as a read: tools.read_file = "deny"');
  });

  test("approval_timeout is in seconds, 600 unless set", () => {
    expect(policy('preset = "open"').approvalTimeoutMs).toBe(600_000);
    expect(policy('preset = "open"\napproval_timeout = 30').approvalTimeoutMs).toBe(30_000);
  });
});

describe("precedence: deny rule, tool deny, ask rule, allow rule, tool setting", () => {
  const write = (p: ReturnType<typeof policy>, rel: string) => p.judge("write_file", { path: `~/${rel}`, content: "" }, `${HOME}/${rel}`);

  test("a deny rule beats every other rule and setting", () => {
    const p = policy('preset = "open"\n[paths.change]\nallow = ["~/src/**"]\nask = ["~/src/**"]\ndeny = ["~/src/secret/**"]');
    expect(write(p, "src/secret/key")).toEqual({ verdict: "deny", rule: 'paths.change.deny "~/src/secret/**"' });
  });

  test("a tool set to deny beats ask and allow rules", () => {
    const p = policy('preset = "ask-to-change"\n[tools]\nwrite_file = "deny"\n[paths.change]\nallow = ["~/src/**"]\nask = ["~/docs/**"]');
    expect(write(p, "src/a.ts")).toEqual({ verdict: "deny", rule: 'tools.write_file = "deny"' });
    expect(write(p, "docs/a.md")).toEqual({ verdict: "deny", rule: 'tools.write_file = "deny"' });
    expect(p.judge("edit_file", { path: "~/src/a.ts" }, `${HOME}/src/a.ts`)).toEqual({ verdict: "allow", rule: 'paths.change.allow "~/src/**"' });
  });

  test("an ask rule beats an allow rule, which beats the tool's setting", () => {
    const p = policy('preset = "ask-to-change"\n[paths.change]\nallow = ["~/src/**"]\nask = ["~/src/release/**"]');
    expect(write(p, "src/release/v1")).toEqual({ verdict: "ask", rule: 'paths.change.ask "~/src/release/**"' });
    expect(write(p, "src/a.ts")).toEqual({ verdict: "allow", rule: 'paths.change.allow "~/src/**"' });
    expect(write(p, "elsewhere")).toEqual({ verdict: "ask", rule: 'tools.write_file = "ask" (preset ask-to-change)' });
  });

  test("an ask rule turns an allowed tool into a question", () => {
    const p = policy('preset = "open"\n[commands]\nask = ["npm publish *"]');
    expect(p.judge("run_shell_command", { command: "npm test && npm publish --tag next" })).toEqual({ verdict: "ask", rule: 'commands.ask "npm publish *"' });
    expect(verdict(p.judge("run_shell_command", { command: "npm test" }))).toBe("allow");
  });

  test("for commands too: deny over allow, allow over the tool's setting", () => {
    const p = policy('preset = "ask-to-change"\n[commands]\nallow = ["rm *"]\ndeny = ["rm -rf *"]');
    expect(p.judge("run_shell_command", { command: "rm -rf build" })).toEqual({ verdict: "deny", rule: 'commands.deny "rm -rf *"' });
    expect(p.judge("run_shell_command", { command: "rm build/a.o" })).toEqual({ verdict: "allow", rule: 'commands.allow "rm *"' });
    expect(p.judge("run_shell_command", { command: "make" })).toEqual({ verdict: "ask", rule: 'tools.run_shell_command = "ask" (preset ask-to-change)' });
  });
});

describe("commands: an allow rule matches only a simple command", () => {
  const p = policy('preset = "ask-to-change"\n[commands]\nallow = ["git status", "ls *", "npm test"]');
  const run = (args: Record<string, unknown>) => p.judge("run_shell_command", args);

  test.each([
    "git status; rm -rf x",
    "git status && rm -rf x",
    "git status || rm -rf x",
    "git status | sh",
    "git status & rm -rf x",
    "git status > ~/.bashrc",
    "git status < /etc/passwd",
    "git status\nrm -rf x",
    "git status\r",
    "ls $(rm -rf x)",
    "ls `rm -rf x`",
    "ls $HOME",
    "ls ${HOME}",
    'ls "$(rm -rf x)"',
    'ls "`rm -rf x`"',
    'ls "$HOME"',
    'ls "a\\"; rm -rf x; echo \\""',
    "ls 'a\\' ';rm -rf ~;'",
    "ls \\; rm -rf x",
    "ls *",
    "ls ?",
    "ls [ab]",
    "ls {a,b}",
    "ls ~",
    "ls ~/src",
    "ls # comment",
    "ls !x",
    "ls 'unclosed",
    'ls "unclosed',
    "(ls)",
    "{ ls; }",
    "ls =ls",
    "GIT_DIR=/tmp/evil git status",
    "LD_PRELOAD=/tmp/x.so ls",
    "ls ünïcode",
    "",
    "   ",
  ])("refused as shell syntax: %j", (command) => {
    expect(run({ command }).rule).toBe('tools.run_shell_command = "ask" (preset ask-to-change)');
  });

  test("plain words, quoted words and tabs are simple", () => {
    expect(run({ command: "git status" })).toEqual({ verdict: "allow", rule: 'commands.allow "git status"' });
    expect(run({ command: "  git\tstatus  " }).verdict).toBe("allow");
    expect(run({ command: "ls" }).rule).toBe('commands.allow "ls *"');
    expect(run({ command: "ls -la src" }).rule).toBe('commands.allow "ls *"');
    expect(run({ command: `ls 'my notes' "two words" --color=auto a,b:c@d%e+f` }).verdict).toBe("allow");
    expect(run({ command: "git status --short" }).verdict).toBe("ask"); // no "*": exactly these words
    expect(run({ command: "git  'status'" }).verdict).toBe("allow");
  });

  test("never with env set (BASH_ENV, LD_PRELOAD, GIT_*) or another shell", () => {
    expect(run({ command: "git status", env: { GIT_DIR: "/tmp/evil" } }).verdict).toBe("ask");
    expect(run({ command: "git status", env: { BASH_ENV: "/tmp/x" } }).verdict).toBe("ask");
    expect(run({ argv: ["git", "status"], env: { LD_PRELOAD: "/tmp/x.so" } }).verdict).toBe("ask");
    expect(run({ command: "git status", shell: "/usr/bin/python3" }).verdict).toBe("ask");
    expect(run({ command: "git status", env: {} }).verdict).toBe("allow");
  });

  test("argv is a simple command: its words are argv, taken literally", () => {
    expect(run({ argv: ["git", "status"] }).verdict).toBe("allow");
    expect(run({ argv: ["ls", "$(rm -rf x)", "a; b"] }).verdict).toBe("allow"); // no shell reads them
    expect(run({ argv: ["git", "status;", "rm"] }).verdict).toBe("ask");
    expect(run({ argv: ["/usr/bin/git", "status"] }).verdict).toBe("ask");
  });

  test("a rule's * inside a word matches characters of that word, ? one", () => {
    const q = policy('preset = "ask-to-change"\n[commands]\nallow = ["npm run test:*", "git log -?"]');
    const judge = (command: string) => verdict(q.judge("run_shell_command", { command }));
    expect([judge("npm run test:unit"), judge("npm run test:"), judge("npm run test:unit x"), judge("npm run build")]).toEqual(["allow", "allow", "ask", "ask"]);
    expect([judge("git log -p"), judge("git log -pp")]).toEqual(["allow", "ask"]);
  });
});

describe("simpleCommandWords", () => {
  test.each([
    ["git status", ["git", "status"]],
    ["ls -la  src/", ["ls", "-la", "src/"]],
    [`echo 'a b' "c d" ''`, ["echo", "a b", "c d", ""]],
    [`say "it's" 'say "hi"'`, ["say", "it's", 'say "hi"']],
    ["a'b'\"c\"d", ["abcd"]],
    ["make CC=clang", ["make", "CC=clang"]],
  ])("%j is %j", (text, words) => {
    expect(simpleCommandWords(text)).toEqual(words);
  });

  test.each([..."; & | < > ( ) $ ` \\ # * ? [ ] { } ~ ! ^".split(" "), "\n", "\r", "\0", "é"])("refuses %j outside quotes", (char) => {
    expect(simpleCommandWords(`echo a${char}b`)).toBeUndefined();
  });

  test.each(["$", "`", "\\", "!", "\n"])("refuses %j inside double quotes", (char) => {
    expect(simpleCommandWords(`echo "a${char}b"`)).toBeUndefined();
  });

  test("single quotes hold anything but backslashes and control characters", () => {
    expect(simpleCommandWords("echo '$(x) `y` ; | * ~ #'")).toEqual(["echo", "$(x) `y` ; | * ~ #"]);
    expect(simpleCommandWords("echo 'a\\'")).toBeUndefined();
    expect(simpleCommandWords("echo 'a\nb'")).toBeUndefined();
  });
});

describe("commands: deny rules find commands anywhere in the text, best effort", () => {
  const p = policy('preset = "open"\n[commands]\ndeny = ["rm -rf *", "sudo *"]');
  const run = (args: Record<string, unknown>) => p.judge("run_shell_command", args);

  test.each([
    "rm -rf ~",
    "rm -rf /",
    "rm -rf",
    "echo hi; rm -rf x",
    "true && rm -rf x",
    "false || rm -rf x",
    "ls | rm -rf x",
    "sleep 1 & rm -rf x",
    "echo\nrm -rf x",
    "(rm -rf x)",
    "{ rm -rf x; }",
    "if rm -rf x; then :; fi",
    "while true; do rm -rf x; done",
    "! rm -rf x",
    "echo $(rm -rf x)",
    'echo "$(rm -rf x)"',
    'echo "$(echo "$(rm -rf x)")"',
    "echo `rm -rf x`",
    'echo "`rm -rf x`"',
    "cat <(rm -rf x)",
    "r''m -r\"f\" x",
    "rm -rf\\\n x",
    "/bin/rm -rf x",
    "X=1 rm -rf x",
    "env X=1 rm -rf x",
    "sudo -u root rm -rf x",
    "nohup rm -rf x &",
    "find . -print0 | xargs -0 rm -rf",
    "bash -c 'rm -rf x'",
    'sh -lc "ls; rm -rf x"',
    "eval rm -rf x",
    "sudo ls",
    "rm -rf x > /dev/null 2>&1",
  ])("denied: %j", (command) => {
    expect(verdict(run({ command }))).toBe("deny");
  });

  test.each(["echo rm -rf x", "git commit -m 'rm -rf x'", "rm -r x", "rmdir -rf x", "grep -r sudo ."])("not denied: %j", (command) => {
    expect(verdict(run({ command }))).toBe("allow");
  });

  test("argv, env and another shell do not hide a command from deny rules", () => {
    expect(verdict(run({ argv: ["rm", "-rf", "/"] }))).toBe("deny");
    expect(verdict(run({ argv: ["sh", "-c", "rm -rf /"] }))).toBe("deny");
    expect(verdict(run({ command: "rm -rf x", env: { A: "1" }, shell: "/bin/zsh" }))).toBe("deny");
  });

  test("a shell's script on stdin is looked into; other programs' input is data", () => {
    expect(verdict(run({ command: "bash", stdin: "cd /\nrm -rf x\n" }))).toBe("deny");
    expect(verdict(run({ argv: ["/bin/sh", "-s"], stdin: "sudo reboot" }))).toBe("deny");
    expect(verdict(run({ command: "cat > notes.txt", stdin: "rm -rf x" }))).toBe("allow");
  });

  test("no command rule applies to input for a running command", () => {
    expect(verdict(p.judge("send_command_input", { command_id: "3f9c0a1b2c3d@box", input: "rm -rf /\n" }))).toBe("allow");
  });

  test("deeply nested or long commands are judged quickly", () => {
    const nested = "$(".repeat(20_000) + ")".repeat(20_000);
    const wrappers = "sudo ".repeat(10_000) + "ls";
    const started = performance.now();
    expect(verdict(run({ command: nested }))).toBe("allow");
    expect(verdict(run({ command: wrappers }))).toBe("deny");
    expect(verdict(run({ command: "ls; ".repeat(20_000) + "rm -rf x" }))).toBe("deny");
    expect(verdict(run({ command: "A=1 ".repeat(20_000) + "rm -rf x" }))).toBe("deny");
    expect(verdict(run({ command: "time -p rm -rf x" }))).toBe("deny");
    expect(performance.now() - started).toBeLessThan(500);
  });
});

describe("commands: deny rules see through other shells, wrappers, keywords and expansions", () => {
  const p = policy('preset = "open"\n[commands]\ndeny = ["rm *"]');
  const run = (args: Record<string, unknown>) => p.judge("run_shell_command", args);
  const allowing = policy('preset = "ask-to-change"\n[commands]\nallow = ["rm *"]');

  const FORMS = [
    "bash -c -- 'rm -rf ~'",
    "bash -c -o pipefail 'rm -rf ~'",
    "su -c 'rm -rf ~' root",
    "bash <<< 'rm -rf ~'",
    "sudo bash <<<'rm -rf ~'",
    "env -S 'rm -rf ~'",
    "env -i -S'rm -rf' ~",
    "env --split-string='rm -rf ~'",
    "{rm,-rf,~}",
    "r{m,} x",
    "$'rm' -rf ~",
    "$'\\x72\\155' -rf ~",
    '$"rm" -rf ~',
    "function f { rm -rf x; }; f",
    "coproc rm -rf x",
    "coproc NAME { rm -rf x; }",
    "script -qc 'rm -rf ~'",
    "script --command 'rm -rf ~' /dev/null",
    "flock /tmp/l rm -rf ~",
    "flock /tmp/l -c 'rm -rf ~'",
    "ionice rm -rf ~",
    "ionice -c 3 rm -rf ~",
    "chrt 1 rm -rf ~",
    "taskset 1 rm -rf ~",
    "unshare rm -rf ~",
    "runuser -u u -- rm -rf ~",
    "pkexec rm -rf ~",
    "watch rm -rf ~",
    "watch -n 5 'ls; rm -rf ~'",
    "find . -exec rm -rf {} +",
    "find . -name '*.o' -execdir rm {} \\; -print",
    "find . -ok rm {} ';'",
    "sudo -u root sh -c 'rm -rf x'",
    "timeout 5 bash -c 'rm -rf x'",
    "nice -n 5 /bin/rm -rf x",
    "env A=1 B=2 sudo rm -rf x",
  ];

  test.each(FORMS)("denied: %j", (command) => {
    expect(run({ command })).toEqual({ verdict: "deny", rule: 'commands.deny "rm *"' });
  });

  test.each(FORMS)("never allowed by a rule: %j", (command) => {
    expect(verdict(allowing.judge("run_shell_command", { command }))).toBe("ask");
  });

  test("argv is looked into the same way, but its words are literal: no shell expands them", () => {
    expect(verdict(run({ argv: ["bash", "-c", "--", "rm -rf ~"] }))).toBe("deny");
    expect(verdict(run({ argv: ["find", ".", "-exec", "rm", "{}", "+"] }))).toBe("deny");
    expect(verdict(run({ argv: ["{rm,-rf,~}"] }))).toBe("allow");
    expect(verdict(run({ argv: ["$'rm'", "-rf", "~"] }))).toBe("allow");
  });

  test("RM is rm where files are named case-insensitively (macOS, Windows), and only there", () => {
    expect(verdict(run({ command: "RM -rf ~" }))).toBe(process.platform === "darwin" || process.platform === "win32" ? "deny" : "allow");
    expect(verdict(allowing.judge("run_shell_command", { command: "RM -rf ~" }))).toBe("ask");
  });

  test.each(["darwin", "win32", "linux"])("on %s: deny and ask rules ignore case where files do, allow rules never", (platform) => {
    const script = path.join(base, `case-${platform}.ts`);
    fs.writeFileSync(
      script,
      `Object.defineProperty(process, "platform", { value: ${JSON.stringify(platform)} });
      const { parsePolicy } = await import(${JSON.stringify(path.join(import.meta.dir, "../../agent/policy.ts"))});
      const p = parsePolicy('preset = "ask-to-change"\\n[commands]\\ndeny = ["rm *"]\\nask = ["git push *"]\\nallow = ["git status", "ls -l"]', "/x/policy.toml", "/home/owner");
      const judge = (command) => p.judge("run_shell_command", { command }).verdict;
      console.log(JSON.stringify(["RM -rf ~", "SUDO /BIN/RM -rf ~", "Git Push origin", "GIT status", "LS -L", "git status", "rmdir x"].map(judge)));`,
    );
    const child = Bun.spawnSync([process.execPath, script], { stderr: "pipe" });
    expect(child.stderr.toString()).toBe("");
    const insensitive = platform !== "linux";
    expect(JSON.parse(child.stdout.toString())).toEqual([insensitive ? "deny" : "ask", insensitive ? "deny" : "ask", "ask", "ask", "ask", "allow", "ask"]);
  });

  test.each([
    "echo '{rm,-rf}'",
    'echo "{rm,-rf,~}"',
    "echo \\{rm,-rf,~\\}",
    "ls {a,b}",
    "echo ${HOME}",
    "git commit -m 'function f'",
    "echo function rm",
    "grep -r coproc .",
    "echo $'rm -rf ~'",
    "cat <<< 'rm -rf x'",
    "bash -c -- 'echo rm'",
    "env -S 'ls -l'",
    "env ls -S",
    "watch -n 1 ls",
    "ionice -c 3 make",
    "find . -name rm",
    "find . -exec ls {} + -name rm",
    "script -q log.txt",
  ])("not denied: %j", (command) => {
    expect(verdict(run({ command }))).toBe("allow");
  });

  test("stays bounded: long chains, many braces and deep nesting are judged quickly", () => {
    const group = (depth: number): string => (depth === 0 ? "a" : `{${group(depth - 1)},${group(depth - 1)}}`);
    const started = performance.now();
    expect(verdict(run({ command: "echo " + "{a,b}".repeat(19_000) }))).toBe("allow");
    expect(verdict(run({ command: "echo " + "{a,b} ".repeat(16_000) }))).toBe("allow");
    expect(verdict(run({ command: "echo " + group(15) }))).toBe("allow");
    expect(verdict(run({ command: "{".repeat(90_000) + "a,b}" }))).toBe("allow");
    expect(verdict(run({ command: "{rm,-rf," + "x,".repeat(40_000) + "~}" }))).toBe("deny");
    expect(verdict(run({ command: "watch ".repeat(16_000) + "ls" }))).toBe("allow");
    expect(verdict(run({ command: "env ".repeat(16_000) + "-S 'ls'" }))).toBe("allow");
    expect(verdict(run({ command: "flock ".repeat(16_000) + "-c 'ls'" }))).toBe("allow");
    expect(verdict(run({ command: "find -exec ".repeat(9_000) }))).toBe("allow");
    expect(verdict(run({ command: "find . -exec ls \\; ".repeat(5_000) + "-exec rm {} +" }))).toBe("deny");
    expect(verdict(run({ command: "timeout 5 ".repeat(9_000) + "ls" }))).toBe("allow");
    expect(verdict(run({ command: "bash <<< ".repeat(10_000) }))).toBe("allow");
    expect(verdict(run({ command: "$'" + "\\U0010ffff\\x41\\101".repeat(6_000) + "'" }))).toBe("allow");
    expect(performance.now() - started).toBeLessThan(1500);
  });
});

describe("path rules on real paths", () => {
  // home is reached through a symlink (as /tmp is on macOS), and ~/.ssh is a symlink to a directory outside it.
  const realHome = path.join(base, "home-real");
  const home = path.join(base, "home");
  const keys = path.join(base, "keys");
  for (const dir of [realHome, keys, path.join(realHome, "src", "secret"), path.join(realHome, "projects", "a", "secrets")]) fs.mkdirSync(dir, { recursive: true });
  fs.symlinkSync(realHome, home);
  fs.symlinkSync(keys, path.join(realHome, ".ssh"));

  const p = policy(
    [
      'preset = "ask-to-change"',
      "[paths.read]",
      'deny = ["~/.ssh/**", "~/.aws/**", "~/projects/*/secrets/**", "~/**/.env"]',
      "[paths.change]",
      'allow = ["~/src/**"]',
      'deny = ["~/src/secret/**"]',
    ].join("\n"),
    home,
  );
  const judge = (op: AgentOp, real: string, args: Record<string, unknown> = {}) => p.judge(op, { path: real, ...args }, real);

  test("~ and a symlinked directory in a glob are resolved: the real path the caller passes matches", () => {
    expect(judge("read_file", path.join(keys, "id_ed25519"))).toEqual({ verdict: "deny", rule: 'paths.read.deny "~/.ssh/**"' });
    expect(judge("write_file", path.join(realHome, "src", "a.ts"))).toEqual({ verdict: "allow", rule: 'paths.change.allow "~/src/**"' });
  });

  test("a trailing /** matches the directory itself", () => {
    expect(verdict(judge("list_directory", keys))).toBe("deny");
    expect(verdict(judge("file_info", path.join(realHome, "src", "secret")))).toBe("allow"); // a read: only change rules name it
    expect(verdict(judge("write_file", path.join(realHome, "src", "secret")))).toBe("deny");
  });

  test("a directory that does not exist yet is matched where it would be", () => {
    expect(verdict(judge("read_file", path.join(realHome, ".aws", "credentials")))).toBe("deny");
  });

  test("* stays within one segment, ** goes any depth, and a sibling with the same prefix does not match", () => {
    expect(verdict(judge("read_file", path.join(realHome, "projects", "a", "secrets", "k")))).toBe("deny");
    expect(verdict(judge("read_file", path.join(realHome, "projects", "a", "b", "secrets", "k")))).toBe("allow");
    expect(verdict(judge("read_file", path.join(realHome, ".env")))).toBe("deny");
    expect(verdict(judge("read_file", path.join(realHome, "a", "b", ".env")))).toBe("deny");
    expect(verdict(judge("read_file", path.join(realHome, ".envrc")))).toBe("allow");
    expect(judge("write_file", path.join(realHome, "srcx", "a"))).toEqual({ verdict: "ask", rule: 'tools.write_file = "ask" (preset ask-to-change)' });
  });

  test("edit_file reads the file too: read denies bind it; write_file only the change rules", () => {
    expect(judge("edit_file", path.join(keys, "config"), { edits: [] })).toEqual({ verdict: "deny", rule: 'paths.read.deny "~/.ssh/**"' });
    expect(verdict(judge("write_file", path.join(keys, "config")))).toBe("ask");
  });

  test("without a real path from the caller, the path is resolved here", () => {
    expect(verdict(p.judge("read_file", { path: path.join(home, ".ssh", "id_ed25519") }))).toBe("deny");
  });

  test("a glob on / matches everything", () => {
    const everywhere = policy('preset = "open"\n[paths.read]\nask = ["/**"]');
    expect(verdict(everywhere.judge("read_file", { path: "/etc/hosts" }, "/etc/hosts"))).toBe("ask");
    expect(verdict(everywhere.judge("list_directory", { path: "/" }, "/"))).toBe("ask");
  });
});

describe("an invalid file is an error that names the file and the key", () => {
  test.each([
    ["unknown key", 'preset = "open"\npresets = "open"', /^\/etc\/code-remote\/policy\.toml: unknown key presets \(the keys here are preset, approval_timeout, approvals, tools, paths, commands\)/],
    ["no preset", '[commands]\ndeny = ["sudo *"]', /: preset is missing: name one of "open", "ask-to-change", "read-only"/],
    ["empty file (half written)", "", /preset is missing/],
    ["unknown tool", '[tools]\nwrite_fle = "ask"', /unknown key tools\.write_fle \(the keys here are read_file, .*kill_command\)/],
    ["unknown rule list", '[commands]\nallowed = ["ls"]', /unknown key commands\.allowed \(the keys here are allow, ask, deny\)/],
    ["bad verdict", '[tools]\nwrite_file = "maybe"', /tools\.write_file must be "allow", "ask" or "deny"/],
    ["bad approvals", 'preset = "open"\napprovals = "phone"', /approvals must be one of "relay", "passkey"/],
    ["bad preset", 'preset = "paranoid"', /preset must be one of "open", "ask-to-change", "read-only"/],
    ["relative glob", '[paths.read]\ndeny = ["~/.ssh/**", ".aws/**"]', /paths\.read\.deny\[1\] "\.aws\/\*\*" is relative: start it with \/ or ~\//],
    ["~user glob", '[paths.change]\ndeny = ["~root/**"]', /paths\.change\.deny\[0\] "~root\/\*\*" is relative/],
    ["glob not a list", '[paths.read]\ndeny = "~/.ssh/**"', /paths\.read\.deny must be a list of globs, e\.g\. \["~\/\.ssh\/\*\*"\]/],
    ["glob not a string", '[paths.read]\ndeny = [1]', /paths\.read\.deny\[0\] must be a glob in quotes/],
    ["commands not a list", '[commands]\nallow = "ls"', /commands\.allow must be a list of commands/],
    ["empty command", '[commands]\ndeny = ["  "]', /commands\.deny\[0\] holds an empty command/],
    ["bad timeout", "approval_timeout = 1.5", /approval_timeout must be a whole number of seconds from 1 to 86400/],
    ["table as value", "paths = 3", /paths must be a table/],
    ["TOML syntax", 'preset = "open"\n\n[tools\nwrite_file = "ask"\n', /policy\.toml, line 3: not valid TOML \(Expected ']' to close a table header/],
    ["unquoted string", "preset = open", /line 1: not valid TOML \(Strings must be quoted/],
  ])("%s", (_name, text, message) => {
    expect(() => policy(text)).toThrow(PolicyError);
    expect(() => policy(text)).toThrow(message);
  });

  test("every problem is listed at once", () => {
    expect(() => policy('preset = "x"\n[tools]\nwrite_file = "y"')).toThrow(/preset must be one of .*; tools\.write_file must be/);
  });
});

describe("the policy file in force", () => {
  let dir: string;
  let file: string;
  let logged: ReturnType<typeof spyOn>;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(base, "source-"));
    file = path.join(dir, "policy.toml");
    logged = spyOn(console, "error").mockImplementation(() => {});
  });
  afterEach(() => logged.mockRestore());
  const policyLines = () => (logged.mock.calls as unknown[][]).map((call) => String(call[0])).filter((line) => line.includes("policy file"));

  test("no file at start: everything runs, as before policies", () => {
    const source = new PolicySource(file, HOME);
    expect(source.current().preset).toBe("open");
    expect(source.current().summary()).toEqual({ preset: "open", file: null, allows: "everything", asks: "nothing", denies: "nothing" });
  });

  test("an invalid file at start stops the agent with a ConfigError naming the key", () => {
    fs.writeFileSync(file, 'preset = "strict"');
    expect(() => new PolicySource(file, HOME)).toThrow(ConfigError);
    expect(() => new PolicySource(file, HOME)).toThrow(`The policy file is not valid: ${file}: preset must be one of`);
  });

  test("an edit takes effect at the next call, without a restart", () => {
    fs.writeFileSync(file, 'preset = "open"');
    const source = new PolicySource(file, HOME);
    expect(verdict(source.current().judge("write_file", argsOf("write_file")))).toBe("allow");
    fs.writeFileSync(file, 'preset = "read-only"');
    expect(source.current().judge("write_file", argsOf("write_file"))).toEqual({ verdict: "deny", rule: 'tools.write_file = "deny" (preset read-only)' });
    fs.writeFileSync(file, 'preset = "ask-to-change"\n');
    expect(source.current().preset).toBe("ask-to-change");
    expect(policyLines()).toHaveLength(2);
  });

  test("a rewrite of the same size is seen by its times", () => {
    fs.writeFileSync(file, 'preset = "open"');
    const source = new PolicySource(file, HOME);
    fs.writeFileSync(file, 'preset = "oops"');
    fs.utimesSync(file, new Date(), new Date(Date.now() + 5_000));
    expect(source.current().preset).toBe("fail-closed");
  });

  test("a file that breaks while running refuses every call but status, saying what is wrong, logged once", () => {
    fs.writeFileSync(file, 'preset = "open"');
    const source = new PolicySource(file, HOME);
    fs.writeFileSync(file, 'preset = "open"\n[tools]\nwrite_fle = "deny"\n');
    const broken = source.current();
    expect(broken.preset).toBe("fail-closed");
    const refusal = broken.judge("read_file", argsOf("read_file"));
    expect(refusal.verdict).toBe("deny");
    expect(refusal.rule).toContain(`the policy file is not valid: ${file}: unknown key tools.write_fle`);
    expect(refusal.rule).toContain("Until the owner fixes it, every call but check_agent_status is refused (the file is re-read when it changes)");
    expect(broken.judge("status", {}).verdict).toBe("allow");
    expect(broken.summary()).toMatchObject({ preset: "fail-closed", file, allows: "check_agent_status only", asks: "nothing" });
    expect(source.current()).toBe(broken);
    expect(source.current()).toBe(broken);
    expect(policyLines()).toHaveLength(1);
    expect(policyLines()[0]).toContain("policy file is not valid");

    fs.writeFileSync(file, 'preset = "read-only"');
    expect(source.current().preset).toBe("read-only");
  });

  test("a file removed while running refuses every call but status", () => {
    fs.writeFileSync(file, 'preset = "open"');
    const source = new PolicySource(file, HOME);
    fs.rmSync(file);
    const refusal = source.current().judge("run_shell_command", { command: "ls" });
    expect(refusal.verdict).toBe("deny");
    expect(refusal.rule).toContain(`the policy file ${file} was removed while the agent was running`);
    expect(refusal.rule).toContain("puts it back");
    expect(source.current().judge("status", {}).verdict).toBe("allow");
  });

  test("a file created while running is put in force", () => {
    const source = new PolicySource(file, HOME);
    fs.writeFileSync(file, 'preset = "read-only"');
    expect(source.current().summary()).toMatchObject({ preset: "read-only", file });
  });
});

describe("summary", () => {
  test("the example file, in short", () => {
    const p = policy(`
preset = "ask-to-change"
[tools]
run_shell_command = "ask"
[paths.read]
deny = ["~/.ssh/**", "~/.aws/**"]
[paths.change]
allow = ["~/src/**"]
deny = ["~/.ssh/**"]
[commands]
allow = ["git status", "npm test"]
deny = ["rm -rf *", "sudo *"]
`);
    expect(p.summary()).toEqual({
      preset: "ask-to-change",
      file: FILE,
      allows: "other reads; file changes in ~/src/**; commands: git status, npm test; stopping commands",
      asks: "other file changes; other commands; input to running commands",
      denies: "reads in ~/.ssh/**, ~/.aws/**; file changes in ~/.ssh/**; commands: rm -rf *, sudo *",
    });
  });

  test("presets, and tools set one by one", () => {
    expect(policy('preset = "open"').summary()).toMatchObject({ allows: "everything", asks: "nothing", denies: "nothing" });
    expect(policy('preset = "read-only"').summary()).toMatchObject({ allows: "reads; stopping commands", asks: "nothing", denies: "file changes; commands; input to running commands" });
    expect(policy('preset = "ask-to-change"\n[tools]\nwrite_file = "deny"').summary()).toMatchObject({
      allows: "reads; stopping commands",
      asks: "edit_file; commands; input to running commands",
      denies: "write_file",
    });
  });

  test("rules that cannot change anything are left out", () => {
    const p = policy('preset = "read-only"\n[commands]\nallow = ["ls"]\nask = ["make"]\ndeny = ["rm -rf *"]');
    expect(p.summary()).toMatchObject({ allows: "reads; stopping commands", asks: "nothing", denies: "file changes; commands; input to running commands" });
  });

  test("long texts are cut to stay within the status frame", () => {
    const many = Array.from({ length: 300 }, (_, i) => `"tool-${i} *"`).join(", ");
    const { denies } = policy(`preset = "open"\n[commands]\ndeny = [${many}]`).summary();
    expect(denies.length).toBeLessThanOrEqual(1000);
    expect(denies.endsWith("…")).toBe(true);
  });
});

describe("where the policy lives", () => {
  const load = (env: Record<string, string>) => loadConfig({ RELAY_URL: "ws://127.0.0.1:8080/ws/agent", AGENT_TOKEN: "t".repeat(48), MACHINE_NAME: "box", ALLOWED_ROOTS: "/tmp", XDG_CONFIG_HOME: base, ...env });

  test("policy.toml beside agent.env, unless POLICY_FILE says otherwise", () => {
    expect(load({}).policyFile).toBe(path.join(base, "code-remote", "policy.toml"));
    expect(load({ POLICY_FILE: "~/rules/policy.toml" }).policyFile).toBe(path.join(os.homedir(), "rules", "policy.toml"));
  });

  test("a policy file outside the settings directory is one of the agent's own files", () => {
    const env = { XDG_CONFIG_HOME: base };
    const elsewhere = path.join(base, "elsewhere", "policy.toml");
    expect(ownFiles(load({}), env)).not.toContain(path.join(base, "code-remote", "policy.toml"));
    expect(ownFiles(load({ POLICY_FILE: elsewhere }), env)).toContain(elsewhere);
  });
});
