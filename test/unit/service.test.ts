// The pure parts of installing the agent: the configuration file's format (parsed, never evaluated by a shell),
// and the service definitions install-service writes. The launchd plist is read back with a small XML plist
// parser written here from Apple's DTD, so the test checks what launchd would see, not the text we wrote.
// The subcommands themselves run for real in test/e2e/binary.test.ts and test/e2e/service.test.ts.

import { describe, expect, test } from "bun:test";
import { ConfigError } from "../../agent/config.ts";
import { formatSettings, parseSettings } from "../../agent/config-file.ts";
import { LAUNCHD_LABEL, launchdPlist, serviceSpec, systemdUnit, type ServiceSpec } from "../../agent/service.ts";

// --- a plist parser (the subset of Apple's PropertyList-1.0 DTD a launchd job uses) ---

type PlistValue = string | number | boolean | PlistValue[] | { [key: string]: PlistValue };

/** Parses an XML property list the way plutil would accept it: an XML declaration, an optional DOCTYPE and
 *  comments, then <plist version="1.0"> holding one value. Throws on anything else, so malformed output fails. */
function parsePlist(xml: string): PlistValue {
  let at = 0;
  const skipSpaceAndComments = () => {
    for (;;) {
      const rest = xml.slice(at);
      const m = /^(\s+|<!--[\s\S]*?-->)/.exec(rest);
      if (!m) return;
      at += m[0].length;
    }
  };
  const expect_ = (pattern: RegExp, what: string): RegExpExecArray => {
    skipSpaceAndComments();
    const m = new RegExp(`^(?:${pattern.source})`).exec(xml.slice(at));
    if (!m) throw new Error(`plist: expected ${what} at offset ${at}: ${JSON.stringify(xml.slice(at, at + 40))}`);
    at += m[0].length;
    return m;
  };
  const decode = (text: string) => {
    if (/&(?!(amp|lt|gt|quot|apos);)/.test(text) || /</.test(text)) throw new Error(`plist: bad character data ${JSON.stringify(text)}`);
    return text.replace(/&(amp|lt|gt|quot|apos);/g, (_, e: string) => ({ amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" })[e]!);
  };
  const value = (): PlistValue => {
    const open = expect_(/<(dict|array|string|key|integer|real|true|false|date|data)\s*(\/?)>/, "a value element");
    const [, tag, selfClosing] = open as unknown as [string, string, string];
    if (tag === "true" || tag === "false") {
      if (!selfClosing) expect_(new RegExp(`</${tag}>`), `</${tag}>`);
      return tag === "true";
    }
    if (selfClosing) return tag === "dict" ? {} : tag === "array" ? [] : "";
    if (tag === "dict") {
      const dict: Record<string, PlistValue> = {};
      for (;;) {
        skipSpaceAndComments();
        if (xml.startsWith("</dict>", at)) return (at += 7), dict;
        const key = decode(expect_(/<key>([^<]*)<\/key>/, "<key>")[1]!);
        if (key in dict) throw new Error(`plist: duplicate key ${key}`);
        dict[key] = value();
      }
    }
    if (tag === "array") {
      const array: PlistValue[] = [];
      for (;;) {
        skipSpaceAndComments();
        if (xml.startsWith("</array>", at)) return (at += 8), array;
        array.push(value());
      }
    }
    if (tag === "key") throw new Error("plist: <key> outside a <dict>");
    const text = decode(expect_(new RegExp(`([^<]*)</${tag}>`), `</${tag}>`)[1]!);
    if (tag === "integer") {
      if (!/^[+-]?\d+$/.test(text.trim())) throw new Error(`plist: bad integer ${text}`);
      return Number(text);
    }
    return text;
  };
  expect_(/<\?xml version="1\.0" encoding="UTF-8"\?>/, "the XML declaration");
  expect_(/<!DOCTYPE plist PUBLIC "-\/\/Apple\/\/DTD PLIST 1\.0\/\/EN" "http:\/\/www\.apple\.com\/DTDs\/PropertyList-1\.0\.dtd">/, "the plist DOCTYPE");
  expect_(/<plist version="1\.0">/, "<plist>");
  const root = value();
  expect_(/<\/plist>/, "</plist>");
  skipSpaceAndComments();
  if (at !== xml.length) throw new Error(`plist: text after </plist> at offset ${at}`);
  return root;
}

describe("the plist parser (a test of the test)", () => {
  test("reads a launchd job as Apple documents it", () => {
    const xml = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict><key>Label</key><string>a &amp; b</string><key>N</key><integer>5</integer>
<key>On</key><true/><key>L</key><array><string>x</string></array></dict></plist>`;
    expect(parsePlist(xml)).toEqual({ Label: "a & b", N: 5, On: true, L: ["x"] });
  });

  test.each([
    ["an unescaped ampersand", "<dict><key>a</key><string>x & y</string></dict>"],
    ["an unclosed string", "<dict><key>a</key><string>x</dict>"],
    ["a key without a value", "<dict><key>a</key></dict>"],
    ["a duplicate key", "<dict><key>a</key><true/><key>a</key><false/></dict>"],
  ])("rejects %s", (_, body) => {
    const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0">${body}</plist>`;
    expect(() => parsePlist(xml)).toThrow(/plist/);
  });
});

// --- service definitions ---

const darwinSpec: ServiceSpec = serviceSpec(
  { PATH: "/opt/homebrew/bin:/usr/bin:/bin" },
  {},
  "darwin",
  ["/Users/me/Apps & Tools/<code-remote-agent>"],
);

describe("the launchd plist", () => {
  const plist = parsePlist(launchdPlist(darwinSpec)) as Record<string, PlistValue>;

  test("is a valid XML plist with the job's label", () => {
    expect(plist.Label).toBe(LAUNCHD_LABEL);
  });

  test("runs the executable itself with a rotating log file, even when its path needs XML escaping", () => {
    const logFile = darwinSpec.logFile;
    expect(logFile).toEndWith("/Library/Logs/code-remote/agent.log");
    expect(plist.ProgramArguments).toEqual(["/Users/me/Apps & Tools/<code-remote-agent>", "--log-file", logFile]);
  });

  test("starts at load and is restarted whenever it exits", () => {
    expect(plist.RunAtLoad).toBe(true);
    expect(plist.KeepAlive).toBe(true);
  });

  test("sends the process's own output (crashes only) beside the log, and passes PATH on to commands", () => {
    expect(plist.StandardOutPath).toBe(darwinSpec.outputFile);
    expect(plist.StandardErrorPath).toBe(darwinSpec.outputFile);
    expect(darwinSpec.outputFile).toEndWith("/Library/Logs/code-remote/agent.out.log");
    expect(plist.EnvironmentVariables).toEqual({ PATH: "/opt/homebrew/bin:/usr/bin:/bin" });
  });

  test("holds no token: the agent reads its settings from its own private file", () => {
    expect(JSON.stringify(plist)).not.toMatch(/TOKEN/);
  });
});

describe("the systemd unit", () => {
  const spec = serviceSpec({ PATH: "/usr/bin:/bin", XDG_CONFIG_HOME: "/home/me/.cfg" }, { LOG_FILE: "/var/log/me/agent 100%.log" }, "linux", ["/opt/cr $HOME/agent"]);
  const unit = systemdUnit(spec);
  const line = (key: string) => unit.split("\n").filter((l) => l.startsWith(`${key}=`));

  test("quotes ExecStart for systemd: spaces kept, % and $ doubled so nothing is expanded", () => {
    expect(line("ExecStart")).toEqual([`ExecStart="/opt/cr $$HOME/agent" "--log-file" "/var/log/me/agent 100%%.log"`]);
  });

  test("restarts always, after a delay, and is wanted by the user's default target", () => {
    expect(line("Restart")).toEqual(["Restart=always"]);
    expect(line("RestartSec")).toEqual(["RestartSec=5"]);
    expect(line("WantedBy")).toEqual(["WantedBy=default.target"]);
  });

  test("passes PATH and the configuration directory on, and never a token", () => {
    expect(line("Environment")).toEqual([`Environment="PATH=/usr/bin:/bin"`, `Environment="XDG_CONFIG_HOME=/home/me/.cfg"`]);
    expect(unit).not.toMatch(/TOKEN=/);
    expect(unit).toContain("/home/me/.cfg/code-remote/agent.env");
  });
});

// --- the configuration file ---

describe("the configuration file's format", () => {
  test("reads KEY=value lines with comments, blank lines, quotes and export, expanding nothing", () => {
    const text = [
      "# a comment",
      "",
      "RELAY_URL=wss://relay.example.com/ws/agent",
      "export MACHINE_NAME = laptop   # trailing comment",
      `ALLOWED_ROOTS="/home/me/My Projects:/tmp"`,
      "AGENT_TOKEN='$(touch /tmp/pwned)#$HOME'",
      `SHELL="/bin/\\"odd\\""`,
    ].join("\n");
    expect(parseSettings(text, "agent.env")).toEqual({
      RELAY_URL: "wss://relay.example.com/ws/agent",
      MACHINE_NAME: "laptop",
      ALLOWED_ROOTS: "/home/me/My Projects:/tmp",
      AGENT_TOKEN: "$(touch /tmp/pwned)#$HOME",
      SHELL: '/bin/"odd"',
    });
  });

  test.each([
    ["a line without =", "RELAY_URL wss://x", /line 1: expected KEY=value/],
    ["an unknown setting (a typo would be ignored silently)", "MACHINE_NAM=x", /line 1: unknown setting 'MACHINE_NAM'/],
    ["an unclosed quote", `AGENT_TOKEN="s3cret-value`, /line 1: the value of AGENT_TOKEN has an unclosed quote/],
    ["text after a closing quote", `AGENT_TOKEN='s3cret-value'x`, /line 1: the value of AGENT_TOKEN/],
  ])("refuses %s, naming the line but never the value", (_, text, message) => {
    let error: unknown;
    try {
      parseSettings(text, "agent.env");
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain("s3cret");
  });

  test("writes what it reads back unchanged, quoting only values that need it", () => {
    const settings = {
      RELAY_URL: "wss://relay.example.com/ws/agent",
      AGENT_TOKEN: "0123abcd",
      MACHINE_NAME: "box",
      ALLOWED_ROOTS: `/home/me/a "b" #c:/tmp/$x\\y`,
    };
    const text = formatSettings(settings);
    expect(text).toContain("RELAY_URL=wss://relay.example.com/ws/agent\n");
    expect(text).toContain("AGENT_TOKEN=0123abcd\n");
    expect(parseSettings(text, "agent.env")).toEqual(settings);
  });

  test("refuses to write a value that spans lines (it would add a setting)", () => {
    expect(() => formatSettings({ MACHINE_NAME: "box\nAGENT_TOKEN=x" })).toThrow(ConfigError);
  });
});
