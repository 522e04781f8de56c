// The agent's own files: its settings (agent.env, which holds the token), the owner's policy (policy.toml), its
// state directory (command records and output logs, the lock, status.json, the identity key), its service definition
// and its logs. No file tool reaches them, whatever the allowed roots say: with the default roots (home, /tmp,
// /var/tmp) read_file would otherwise hand the token to the model, show other commands' output, and edit_file could
// widen the agent's own roots or loosen its policy. The shell is not bound by this (a command can `cat` them like any
// file of this user): the exclusion binds the file tools.

import * as path from "node:path";
import type { AgentConfig } from "./config.ts";
import { defaultStateDir } from "./config.ts";
import { configFilePath, type Env } from "./config-file.ts";
import { isInsideRoot, realLocation, type FileScope } from "./paths.ts";
import { serviceFilePath, serviceSpec } from "./service.ts";

/** The agent's own files and directories, as absolute paths (not resolved), for this platform. */
export function ownFiles(config: AgentConfig, env: Env, platform = process.platform): string[] {
  // The log the daemon writes (or the service's default), and launchd's file for the process's own output.
  const { logFile, outputFile } = serviceSpec(env, config.log.file ? { LOG_FILE: config.log.file } : {}, platform, []);
  const rotated = Array.from({ length: config.log.files - 1 }, (_, i) => `${logFile}.${i + 1}`);
  const configDir = path.dirname(configFilePath(env));
  return [
    configDir, // agent.env, and policy.toml unless POLICY_FILE puts it elsewhere
    // The owner's policy: an assistant that could edit it would grant itself what the owner asks about or refuses.
    // Compared where both really are, so a policy.toml that links to a file elsewhere protects that file.
    ...(isInsideRoot(realLocation(config.policyFile), realLocation(configDir)) ? [] : [config.policyFile]),
    config.stateDir,
    // Every machine name's default state, and on Linux the service's log, live under one code-remote directory.
    path.dirname(defaultStateDir(env, config.home, config.machine)),
    serviceFilePath(env, platform),
    logFile,
    ...rotated,
    ...(platform === "darwin" ? [outputFile] : []),
  ];
}

const scopes = new WeakMap<AgentConfig, FileScope>();

/** What the file tools may reach under `config`: its roots, minus its own files (real paths, resolved once, at the
 *  first request, when the state directory exists). */
export function fileScope(config: AgentConfig, env: Env = process.env): FileScope {
  let scope = scopes.get(config);
  if (!scope) {
    scope = { roots: config.roots, home: config.home, ownFiles: [...new Set(ownFiles(config, env).map(realLocation))] };
    scopes.set(config, scope);
  }
  return scope;
}
