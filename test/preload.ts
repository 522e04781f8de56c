// Loaded by `bun test` before any suite (bunfig.toml's preload). Bun resets the default per-test timeout for each
// file, and setDefaultTimeout applies only to the file that calls it, so this plugin puts that one call at the
// start of every test file as Bun loads it, on the file's first line, so line numbers in failures stay true.

import { plugin } from "bun";

/** What a test may take by default: suites start real relay and agent processes on a shared, busy machine. */
const DEFAULT_TEST_TIMEOUT_MS = 30_000;

plugin({
  name: "code-remote default test timeout",
  setup(build) {
    build.onLoad({ filter: /\.test\.ts$/ }, async ({ path }) => ({
      contents: `import { setDefaultTimeout as __setDefaultTimeout } from "bun:test"; __setDefaultTimeout(${DEFAULT_TEST_TIMEOUT_MS}); ${await Bun.file(path).text()}`,
      loader: "ts",
    }));
  },
});
