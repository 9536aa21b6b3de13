// A real single-node Slurm for the tests: Debian's slurm-wlm and munge (installed with apt-get
// when missing), slurmctld and slurmd started on this host with a configuration of their own in
// a throwaway directory and free ports, stopped when the test process exits. sbatch, squeue and
// scontrol find it through SLURM_CONF.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";

function sh(cmd: string[], what: string): string {
  const p = spawnSync(cmd[0]!, cmd.slice(1), {
    encoding: "utf8",
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  if (p.status !== 0)
    throw new Error(`slurm for the tests: ${what} failed (${cmd.join(" ")}): ${p.stderr || p.stdout}`);
  return p.stdout;
}

const munged = () => spawnSync("bash", ["-c", "munge -n | unmunge"], { encoding: "utf8" }).status === 0;

let started: Promise<Record<string, string>> | undefined;
let running = "";

/** Stop the daemons this process started (a test's afterAll). */
export function stopSlurm(): void {
  if (running) {
    const pids = spawnSync("pgrep", ["-f", running], { encoding: "utf8" }).stdout.split("\n").filter(Boolean);
    for (const pid of pids.map(Number)) if (pid !== process.pid) spawnSync("kill", ["-9", String(pid)]);
  }
  running = "";
  started = undefined;
}

/** The environment (SLURM_CONF) under which sbatch reaches the test's Slurm. */
export function slurmEnv(): Promise<Record<string, string>> {
  started ??= (async () => {
    if (!existsSync("/usr/sbin/slurmctld") || !existsSync("/usr/sbin/munged")) {
      const install = spawnSync("apt-get", ["install", "-y", "-q", "slurm-wlm", "munge"], { encoding: "utf8" });
      if (install.status !== 0) {
        sh(["apt-get", "update", "-q"], "apt-get update");
        sh(["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], "apt-get install slurm-wlm munge");
      }
    }
    if (!munged()) {
      // munged runs as its own user, with its socket in /run/munge
      sh(["mkdir", "-p", "/run/munge"], "mkdir /run/munge");
      sh(["chown", "-R", "munge:munge", "/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"], "chown munge");
      if (!existsSync("/etc/munge/munge.key")) sh(["runuser", "-u", "munge", "--", "mungekey", "--create"], "mungekey");
      sh(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"], "munged");
      for (let i = 0; i < 50 && !munged(); i++) await Bun.sleep(100);
      if (!munged()) throw new Error("slurm for the tests: munged did not answer");
    }
    const dir = mkdtempSync(join(tmpdir(), "loralab-slurm-"));
    const port = 30000 + Math.floor(Math.random() * 20000);
    const host = hostname();
    const conf = join(dir, "slurm.conf");
    writeFileSync(
      conf,
      [
        "ClusterName=loralab",
        `SlurmctldHost=${host}`,
        "AuthType=auth/munge",
        "CredType=cred/munge",
        // no cgroups here: processes tracked by their parent, tasks unconfined
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        `SlurmctldPort=${port}`,
        `SlurmdPort=${port + 1}`,
        `StateSaveLocation=${dir}/state`,
        `SlurmdSpoolDir=${dir}/spool`,
        `SlurmctldPidFile=${dir}/slurmctld.pid`,
        `SlurmdPidFile=${dir}/slurmd.pid`,
        `SlurmctldLogFile=${dir}/slurmctld.log`,
        `SlurmdLogFile=${dir}/slurmd.log`,
        "SlurmUser=root",
        "SlurmdUser=root",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        `NodeName=${host} CPUs=2 RealMemory=2000 State=UNKNOWN`,
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
      ].join("\n"),
    );
    sh(["mkdir", "-p", `${dir}/state`, `${dir}/spool`], "mkdir");
    sh(["/usr/sbin/slurmctld", "-f", conf], "slurmctld");
    sh(["/usr/sbin/slurmd", "-f", conf], "slurmd");
    // by their command line, which names this run's config: the daemons fork away from their
    // pid files, and a test process's "exit" is not always heard (stopSlurm in afterAll is)
    running = conf;
    process.on("exit", stopSlurm);
    const env = { SLURM_CONF: conf };
    for (let i = 0; i < 100; i++) {
      const s = spawnSync("sinfo", ["-h", "-o", "%t"], { encoding: "utf8", env: { ...process.env, ...env } });
      if (s.stdout.trim() === "idle") return env;
      await Bun.sleep(200);
    }
    throw new Error(`slurm for the tests: the node did not come up (see ${dir}/slurmd.log and slurmctld.log)`);
  })();
  return started;
}
