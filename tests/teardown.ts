// Preloaded by bun test (bunfig.toml): after the last test of the run, the servers the tests
// started are stopped. A test process's "exit" event is not heard, so hooks there leaked a
// Postgres cluster (and Slurm daemons) per run.
import { afterAll } from "bun:test";
import { stopPostgres } from "./pg.ts";
import { stopSlurm } from "./slurm.ts";

afterAll(() => {
  stopPostgres();
  stopSlurm();
});
