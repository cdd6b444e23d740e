/**
 * Where a VM's control plane lives on the host, shared by the supervisor, the priv-domain and the
 * CLI verbs:
 *
 *   runtime dir (gone at reboot): $TSVMM_RUNTIME_DIR, else /run/tsvmm for root, else
 *     $XDG_RUNTIME_DIR/tsvmm, else /tmp/tsvmm-$UID. Mode 0700.
 *       <name>/api.sock         the priv-domain's HTTP+JSON API (mode 0600, directory 0700)
 *       <name>/supervisor.pid   the supervisor that owns the name: "PID STARTTICKS"
 *       <name>/run.pb           for adopting the VM when its supervisor dies (contracts/run-record.ts)
 *   state dir (survives reboots): $TSVMM_STATE_DIR, else /var/lib/tsvmm for root, else
 *     $XDG_STATE_HOME/tsvmm, else ~/.local/state/tsvmm. Mode 0700.
 *       vms/<name>/tsvmm.db     the durable store (contracts/store.ts)
 *       vms/<name>/console.log  every byte of guest serial output
 *       vms/<name>/tsvmm.log    the log of the supervisor and every component, JSON lines (contracts/log.ts)
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** Where a VM serves Prometheus metrics unless told otherwise (--metrics-addr): any free port, so VMs coexist. */
export const DEFAULT_METRICS_ADDR = '127.0.0.1:0';
/**
 * The metrics address ("host:port") the last priv-domain of this VM listened on, which the
 * supervisor passes to the next one so scrapers keep their target across priv-domain recoveries.
 */
export const METRICS_PREVIOUS_ENV = 'TSVMM_METRICS_PREVIOUS';

/** The port of a "host:port" address ("[::1]:9100" too), if it has a valid one. */
export function portOf(addr: string | undefined): number | undefined {
  if (!addr) return undefined;
  const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : undefined;
}

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Why `name` cannot name a VM, or undefined. */
export function badName(name: string): string | undefined {
  if (NAME_RE.test(name)) return undefined;
  return `invalid VM name "${name}": use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`;
}

export function runtimeRoot(): string {
  if (process.env.TSVMM_RUNTIME_DIR) return path.resolve(process.env.TSVMM_RUNTIME_DIR);
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/tsvmm';
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'tsvmm');
  return `/tmp/tsvmm-${uid}`;
}

export function stateRoot(): string {
  if (process.env.TSVMM_STATE_DIR) return path.resolve(process.env.TSVMM_STATE_DIR);
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/var/lib/tsvmm';
  if (process.env.XDG_STATE_HOME) return path.join(process.env.XDG_STATE_HOME, 'tsvmm');
  return path.join(os.homedir(), '.local', 'state', 'tsvmm');
}

export interface VmPaths {
  runDir: string;
  socket: string;
  pidFile: string;
  /** <runtime>/prometheus/<name>.json: the VM's metrics endpoint as a Prometheus file_sd target (one glob finds all VMs). */
  promTargets: string;
  stateDir: string;
  db: string;
  consoleLog: string;
  /** The supervisor's and the components' log (contracts/log.ts), rotated to tsvmm.log.1 .. .3. */
  log: string;
}

/**
 * <runtime>/<name>/run.pb: the run record (contracts/run-record.ts). Here, not there, so that the
 * guardian can look for it without loading the protobuf schemas (~2.4 MiB of its heap for the VM's
 * whole life: issue 19).
 */
export const runRecordPath = (p: VmPaths): string => path.join(p.runDir, 'run.pb');

export function vmPaths(name: string): VmPaths {
  const runDir = path.join(runtimeRoot(), name);
  const stateDir = path.join(stateRoot(), 'vms', name);
  return {
    runDir, socket: path.join(runDir, 'api.sock'), pidFile: path.join(runDir, 'supervisor.pid'), promTargets: path.join(runtimeRoot(), 'prometheus', `${name}.json`),
    stateDir, db: path.join(stateDir, 'tsvmm.db'), consoleLog: path.join(stateDir, 'console.log'),
    log: path.join(stateDir, 'tsvmm.log'),
  };
}

/** mkdir -p with mode 0700 for the directories we create (existing ones are left as they are). */
export function mkdirPrivate(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/** Names of the VMs with a runtime directory (live or stale). */
export function listRuntimeNames(): string[] {
  try {
    return fs.readdirSync(runtimeRoot(), { withFileTypes: true }).filter((d) => d.isDirectory() && NAME_RE.test(d.name)).map((d) => d.name).sort();
  } catch {
    return [];
  }
}

/** Names of the VMs the state directory has a record of (running or not). */
export function listStateNames(): string[] {
  try {
    return fs.readdirSync(path.join(stateRoot(), 'vms'), { withFileTypes: true })
      .filter((d) => d.isDirectory() && NAME_RE.test(d.name) && fs.existsSync(path.join(stateRoot(), 'vms', d.name, 'tsvmm.db'))).map((d) => d.name).sort();
  } catch {
    return [];
  }
}

/** Is process `pid` alive (and ours to signal)? */
export function pidAlive(pid: number): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** /proc/PID/stat starttime (clock ticks since boot): with the pid, names one process for good. */
export function startTicks(pid: number): number | undefined {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return undefined;
  }
}

/** Has `pid` exited, not reaped yet (a dead supervisor whose parent has not waited for it)? */
function zombie(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return st[st.lastIndexOf(')') + 2] === 'Z';
  } catch {
    return false;
  }
}

/** Writes <runtime>/<name>/supervisor.pid for this process: "PID STARTTICKS". */
export function writeSupervisorPid(p: VmPaths): void {
  fs.writeFileSync(p.pidFile, `${process.pid} ${startTicks(process.pid) ?? 0}\n`, { mode: 0o600 });
}

/**
 * The pid of VM `name`'s supervisor if it is alive: the pid in supervisor.pid, still running and
 * started when the file says (a pid recycled by an unrelated process does not count; a file
 * without a start time, from an older tsvmm, counts only for a process whose command line names
 * tsvmm). undefined for none; throws EACCES (someone else's VM).
 */
export function readSupervisorPid(name: string): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(vmPaths(name).pidFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EACCES') throw e;
    return undefined;
  }
  const [pidText, ticksText] = text.trim().split(/\s+/);
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0 || !pidAlive(pid) || zombie(pid)) return undefined;
  if (ticksText !== undefined) {
    const now = startTicks(pid);
    // Not readable (another user's process under hidepid): trust the file.
    return now === undefined || now === Number(ticksText) ? pid : undefined;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('tsvmm') ? pid : undefined;
  } catch {
    return pid;
  }
}
