// One line per event for both processes: time, component, level, message, then key=value fields with JSON-quoted
// values (so a value can never forge another field). Callers never pass secrets: no token, no query string, no
// request body, no command text. Lines go to stderr, or, for an agent run as a service, to a file that is rotated
// by size while the process runs (a long-lived agent never restarts to rotate it, so rotating only at start, as
// the original's run.sh did, lets the file grow without bound).

import * as fs from "node:fs";
import * as path from "node:path";

export type Log = (level: "info" | "warn" | "error", message: string, fields?: Record<string, unknown>) => void;

/** Where lines go: stderr until logToFile() is called. One sink per process, shared by every logger. */
let sink: (line: string) => void = (line) => console.error(line);

export function logger(component: "server" | "agent"): Log {
  return (level, message, fields = {}) => {
    const parts = Object.entries(fields).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    sink([new Date().toISOString(), component, level, message, ...parts].join(" "));
  };
}

export interface RotationOptions {
  /** A file is rotated before a line would take it past this size, so no file ever exceeds it. */
  maxBytes: number;
  /** Files kept in all: FILE plus FILE.1 (the newest old one) … FILE.<files-1>. */
  files: number;
}

/** The smallest maxBytes accepted: room for a few lines, so rotation does not churn on every write. */
export const MIN_LOG_BYTES = 1024;

/** Sends every later line to `file` (created with mode 0600: lines name paths and machines), rotating by size.
 *  Throws when the file cannot be opened, so the caller can say so before the process goes quiet on stderr. */
export function logToFile(file: string, options: RotationOptions): void {
  const log = new RotatingFile(file, options);
  sink = (line) => log.write(line);
}

class RotatingFile {
  #fd: number;
  /** Bytes in the current file, counted as they are written rather than asked of the disk for every line. */
  #size: number;
  #reported = false;

  constructor(
    readonly file: string,
    readonly options: RotationOptions,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.#fd = this.#open();
    this.#size = fs.fstatSync(this.#fd).size;
  }

  write(line: string): void {
    let bytes = Buffer.from(line + "\n");
    // A single line longer than a whole file is cut, so the size limit holds without exception.
    if (bytes.length > this.options.maxBytes) bytes = Buffer.concat([bytes.subarray(0, this.options.maxBytes - 1), Buffer.from("\n")]);
    if (this.#size > 0 && this.#size + bytes.length > this.options.maxBytes) this.#rotate();
    try {
      fs.writeSync(this.#fd, bytes);
      this.#size += bytes.length;
    } catch (e) {
      this.#report(e);
    }
  }

  /** FILE.<n-2> → FILE.<n-1>, …, FILE → FILE.1 (the oldest falls off), then a fresh FILE. Synchronous, so lines
   *  written around a rotation keep their order. If a rename fails, writing goes on in the file that is there. */
  #rotate(): void {
    const { files } = this.options;
    try {
      fs.closeSync(this.#fd);
      fs.rmSync(`${this.file}.${files - 1}`, { force: true });
      for (let n = files - 2; n >= 1; n--) {
        if (fs.existsSync(`${this.file}.${n}`)) fs.renameSync(`${this.file}.${n}`, `${this.file}.${n + 1}`);
      }
      if (files > 1) fs.renameSync(this.file, `${this.file}.1`);
      else fs.rmSync(this.file, { force: true });
    } catch (e) {
      this.#report(e);
    }
    try {
      this.#fd = this.#open();
      this.#size = fs.fstatSync(this.#fd).size;
    } catch (e) {
      this.#report(e);
    }
  }

  /** The log must never take the agent down (a full disk, a removed directory): say so once on stderr, where a
   *  service manager keeps it, and keep going. */
  #report(e: unknown): void {
    if (this.#reported) return;
    this.#reported = true;
    console.error(`log: cannot write ${this.file}: ${(e as Error).message}`);
  }

  #open(): number {
    return fs.openSync(this.file, "a", 0o600);
  }
}
