// Which machines this relay serves, kept in its database for the relay after it. A relay restarted for a deploy, or
// started again after a crash, reads which machines were connected when its predecessor stopped: they are about to
// redial, so it waits for them for the reconnect grace (agents.ts: expectBack) instead of failing their calls in the
// seconds that takes. One row per machine: written when it registers, removed when its link ends while the relay
// runs (so a machine that left before the restart is not waited for); a relay stopping leaves the rows, and a relay
// starting takes them over, reading and clearing them (so a machine that never comes back is waited for once).

import type { Database } from "bun:sqlite";

export class Presence {
  readonly #add;
  readonly #remove;
  readonly #all;
  readonly #clear;

  constructor(readonly db: Database) {
    db.run("CREATE TABLE IF NOT EXISTS connected_machines (machine TEXT PRIMARY KEY)");
    this.#add = db.query("INSERT OR IGNORE INTO connected_machines (machine) VALUES (?)");
    this.#remove = db.query("DELETE FROM connected_machines WHERE machine = ?");
    this.#all = db.query("SELECT machine FROM connected_machines ORDER BY machine");
    this.#clear = db.query("DELETE FROM connected_machines");
  }

  connected(machine: string): void {
    this.#add.run(machine);
  }

  left(machine: string): void {
    this.#remove.run(machine);
  }

  /** The machines the previous relay on this database was serving when it stopped; only a relay that has just
   *  started may ask (none of its own agents has registered yet). They are forgotten as they are read. */
  takeOver(): string[] {
    return this.db.transaction(() => {
      const machines = (this.#all.all() as { machine: string }[]).map((row) => row.machine);
      this.#clear.run();
      return machines;
    })();
  }
}
