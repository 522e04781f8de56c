// This machine's identity key: an Ed25519 key pair made at the agent's first start and kept in its state directory
// (identity.key, mode 600). The relay pins the public key to the machine name the first time it sees it, and on
// every later connection the agent signs the relay's fresh challenge with the private key: so only this machine can
// take its name over, whatever token another process holds. Losing the file (deleting the state directory, a
// reinstall) means the relay refuses this name until its owner runs `machine-key unpin NAME`.

import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { identityTranscript, PublicKey } from "../protocol.ts";
import { ConfigError } from "./config.ts";

/** The key file's name in the state directory. */
export const IDENTITY_FILE = "identity.key";

const ED25519 = { name: "Ed25519" } as const;

/** The key file's content: the key pair as a JSON Web Key (RFC 8037), `d` private and `x` public. */
interface KeyFile {
  kty: "OKP";
  crv: "Ed25519";
  d: string;
  x: string;
}

export interface Identity {
  /** The public key as the hello frame carries it (raw 32 bytes, base64url). */
  publicKey: string;
  /** Made by this call (the first start), rather than read from the file. */
  created: boolean;
  /** Signs the relay's challenge for this machine name; the answer goes in the proof frame. */
  prove(machine: string, nonce: string): Promise<string>;
}

/** The identity key in `stateDir`, made on first use. Throws ConfigError when the file is there but unusable: other
 *  users could read it, or it is not a key (a new key would not be the one the relay pinned, so none is made). */
export async function loadIdentity(stateDir: string): Promise<Identity> {
  const file = path.join(stateDir, IDENTITY_FILE);
  const existing = readKeyFile(file);
  const jwk = existing ?? (await createKeyFile(file));
  const privateKey = await crypto.subtle.importKey("jwk", jwk, ED25519, false, ["sign"]).catch(() => {
    throw notAKey(file);
  });
  const publicKey = jwk.x;
  return {
    publicKey,
    created: existing === undefined,
    async prove(machine, nonce) {
      const signature = await crypto.subtle.sign(ED25519, privateKey, identityTranscript(machine, publicKey, nonce));
      return Buffer.from(signature).toString("base64url");
    },
  };
}

const notAKey = (file: string) =>
  new ConfigError(
    `${file} is not an Ed25519 key. Move it away and start again: a new key is made, and the relay's owner must then ` +
      "unpin this machine's name once (bun run server.ts machine-key unpin NAME).",
  );

/** The key pair in `file`, or undefined when there is no file yet. */
function readKeyFile(file: string): KeyFile | undefined {
  let text: string;
  try {
    if (fs.statSync(file).mode & 0o077) throw new ConfigError(`${file} (this machine's identity key) can be read by other users: chmod 600 ${file}`);
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  let jwk: Partial<KeyFile>;
  try {
    jwk = JSON.parse(text) as Partial<KeyFile>;
  } catch {
    throw notAKey(file);
  }
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string" || !PublicKey.safeParse(jwk.x).success) throw notAKey(file);
  return jwk as KeyFile;
}

/** Makes a key pair and stores it atomically: written in full to a private temporary file, then linked into place
 *  only if no key is there yet (a link never replaces a file), so a second agent or `setup` starting at the same
 *  moment ends up with the one key that won, never a half-written file or two keys. */
async function createKeyFile(file: string): Promise<KeyFile> {
  const pair = (await crypto.subtle.generateKey(ED25519, true, ["sign", "verify"])) as CryptoKeyPair;
  const { kty, crv, d, x } = await crypto.subtle.exportKey("jwk", pair.privateKey);
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(temporary, JSON.stringify({ kty, crv, d, x }) + "\n", { mode: 0o600, flag: "wx" });
    try {
      fs.linkSync(temporary, file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e; // else another process made one first: use it
    }
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new ConfigError(`Cannot store this machine's identity key at ${file} (${why}): set AGENT_STATE_DIR to a directory on a local disk that this user owns.`);
  } finally {
    fs.rmSync(temporary, { force: true });
  }
  return readKeyFile(file)!;
}
