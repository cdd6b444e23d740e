/**
 * Least privilege (issue 20): what each component may do, and the code that applies it. The table
 * in docs/architecture.md ("Confinement") says the same in prose.
 *
 *   - The supervisor (root, when TAP networking needs it) opens every privileged thing itself —
 *     /dev/kvm, the kernel and initrd, disk images, TAPs, the API socket — and passes fds.
 *   - It starts the vmm, the driver-domain and the priv-domain as an unprivileged uid/gid
 *     (`tsvmm run --user`, default 65534:65534, nobody/nogroup): libuv drops the supplementary
 *     groups, then the gid, then the uid before it execs Node, so each starts with no
 *     capabilities (CapEff 0) and can open only what that uid may.
 *   - Each component, once started up and before it handles anything the guest or a client
 *     controls, calls confineSelf(): not dumpable (no ptrace and no /proc access from another
 *     process of the same uid), no_new_privs, and a seccomp allowlist on every thread (TSYNC)
 *     with SECCOMP_RET_KILL_PROCESS for anything else: the process dies with SIGSYS and is
 *     recovered like any crash.
 *   - The keeper (native/kvm/keeper.c) installs its own, tighter filter, from a fixed list in C.
 *
 * It is on by default; `tsvmm run --no-confine` (development) or TSVMM_CONFINE=0 (the benchmarks'
 * baseline) turns it off. Nothing a confined component does needs privileges: a supervisor that
 * dies is replaced by the VM's guardian (supervisor/guardian-main.ts), not by a component, and
 * tsvmm update's standbys are started by the supervisor. TSVMM_SECCOMP=log
 * logs calls outside a list (kernel log, audit type 1326) instead of killing (development);
 * TSVMM_SECCOMP=record installs an allow-everything filter, the marker
 * scripts/record-syscalls.sh looks for in strace output to regenerate the lists.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { abi, native } from '../native/kvm';
import { RECORDED } from './seccomp-allowlists';
import type { Privileges } from '../proto';

export type ConfinedComponent = 'vmm' | 'driver-domain' | 'priv-domain';
export type SeccompMode = 'kill' | 'log' | 'record' | 'off';

export interface Confinement {
  /** uid/gid the components run as; undefined: the supervisor's own (it is not root, or confinement is off). */
  uid?: number;
  gid?: number;
  seccomp: SeccompMode;
  /**
   * The VM's network namespace (empty: loopback only, down), once a jailed component made it: the
   * vmm and the driver-domain join it (tsvmm-jail --netns), so a restart does not pay for a new one.
   * Kept by the supervisor for the VM's life (an fd on /proc/PID/ns/net).
   */
  netnsFd?: number;
}

/** The default unprivileged identity: nobody/nogroup on Debian. */
export const DEFAULT_USER = { uid: 65534, gid: 65534 };

/**
 * Calls every component may make besides what the recording saw: the process's way out (a
 * component killed while the recording ran never exits), the kernel's restart of an interrupted
 * call, what a signal handler returns through; and what Node's runtime does on its own schedule,
 * which a recording may or may not catch: start a thread (libuv's pool grows on demand, V8 starts
 * helpers: clone3, set_robust_list, rseq, sigaltstack), manage memory (mmap, mprotect, munmap,
 * madvise, brk), wait and wake (futex, sched_yield), signal itself (getpid, gettid, tgkill,
 * rt_sigprocmask), and a late thread's start (below).
 */
const ALWAYS = [
  'exit', 'exit_group', 'rt_sigreturn', 'restart_syscall',
  'set_robust_list', 'rseq', 'sigaltstack', 'mmap', 'mprotect', 'munmap', 'madvise', 'brk',
  'futex', 'sched_yield', 'getpid', 'gettid', 'rt_sigprocmask',
  // A thread's own event loop and module loading, when a worker thread (a vmm's vCPU) finishes
  // starting only after confinement, as it may on a loaded host (seen: epoll_create1, lseek).
  'epoll_create1', 'eventfd2', 'pipe2', 'lseek', 'newfstatat', 'fstat', 'statx', 'openat', 'read', 'close',
];

/**
 * Calls allowed only on this process: signals (kill, tgkill), which would otherwise reach every
 * process of the same uid — the other components, and other VMs' when they share it.
 */
const SELF_ONLY = ['kill', 'tgkill'];

/**
 * Per component, what the recording (scripts/record-syscalls.sh over the test suites) may miss and
 * why. Kept short: each entry is a call the component makes on a path the tests do not reach.
 */
const EXTRA: Record<ConfinedComponent, string[]> = {
  // A new keeper for one that died under a running vmm (keeperRestart, native/kvm/keeper.c): poll
  // its old pidfd, clone (allowed with exactly the keeper's flags, below), pidfd_open the new one.
  vmm: ['poll', 'pidfd_open',
    // Requests from the supervisor on the IPC channel (tsvmm snapshot, a new keeper), and writing a
    // snapshot into the directory the supervisor made for it (contracts/snapshot-dir.ts).
    'recvmsg', 'write', 'pread64', 'pwrite64', 'lseek', 'fsync', 'fdatasync',
    // tsvmm_snap_save_live (native/kvm/keeper.c) times the save with raw clock_gettime, as the keeper does.
    'clock_gettime',
    // A restore or takeover (native/kvm/restore.c) waits 50 us between KVM_IRQFD tries while the dead
    // VM still holds an eventfd (EBUSY): seen killing a confined vmm once confinement was the default.
    'nanosleep', 'clock_nanosleep'],
  // A standby's wait for its primary (pidfd_open + poll). A disk on the libuv thread pool (io=threads,
  // or no io_uring here): its threads, started before confinement (driver-domain/served-device.ts),
  // read, write and flush the image. fstat/statx: the disk watch (a disk image cut short under the
  // VM, driver-domain/served-device.ts), ten times a second. The IPC channel's end when the
  // supervisor dies (libuv reads an IPC pipe with recvmsg: the driver-domain is sent nothing else over it).
  'driver-domain': ['pidfd_open', 'poll', 'pread64', 'pwrite64', 'preadv', 'pwritev', 'fdatasync', 'fstat', 'statx', 'recvmsg'],
  // At the VM's end it records the exit in its store and closes it: SQLite deletes the WAL files.
  // And it rotates the console log (renames) when it grows past TSVMM_CONSOLE_LOG_MAX.
  // socketpair: seen in the API replay test (openapi.test.ts) on a path the recording predates.
  // mkdir: the Prometheus target directory (refused confined: a warning).
  'priv-domain': ['unlink', 'fdatasync', 'rename', 'renameat', 'renameat2', 'socketpair', 'mkdir'],
};

/**
 * What the test hooks (contracts/test-hooks.ts, TSVMM_TEST_HOOKS=1 only) call to read and remove
 * their inject file, which a component may not otherwise do: added to every list in a test run. The
 * attacks the hooks make (opening /etc/shadow, say) go through these same calls; in production they
 * would not even get to the permission check.
 */
const TEST_HOOKS = [
  'openat', 'read', 'close', 'unlink', 'newfstatat', 'fstat', 'statx', 'write', 'rt_sigaction',
  // os.tmpdir() reads TMPDIR through Node's "is this process privileged" check
  'getuid', 'geteuid', 'getgid', 'getegid', 'capget',
];

/** The allowlist of `component`, most frequent calls first (the filter compares in this order). */
export function allowlist(component: ConfinedComponent): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  const hooks = process.env.TSVMM_TEST_HOOKS === '1' ? TEST_HOOKS : [];
  for (const name of [...RECORDED[component], ...EXTRA[component], ...ALWAYS, ...hooks]) {
    if (!seen.has(name)) { seen.add(name); out.push(name); }
  }
  return out;
}

/** `--user NAME | UID[:GID]` -> uid/gid (a name is looked up in /etc/passwd; its primary group). */
export function parseUser(spec: string): { uid: number; gid: number } {
  const m = /^(\d+)(?::(\d+))?$/.exec(spec);
  if (m) {
    const uid = Number(m[1]);
    const gid = m[2] !== undefined ? Number(m[2]) : uid;
    if (uid > 0xfffffffe || gid > 0xfffffffe) throw new Error(`invalid --user "${spec}": uid and gid must be below 4294967295`);
    return { uid, gid };
  }
  let passwd = '';
  try { passwd = fs.readFileSync('/etc/passwd', 'utf8'); } catch { /* none: the name is unknown */ }
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === spec && f.length >= 4) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new Error(`invalid --user "${spec}": no such user (give a name from /etc/passwd, UID or UID:GID)`);
}

/** The supervisor's policy for this run. `user`: --user, if given; `confine`: false for --no-confine. */
export function confinementFor(user?: string, confine = true): Confinement {
  const env = process.env.TSVMM_CONFINE;
  if (env !== undefined && env !== '0' && env !== '1') throw new Error(`invalid TSVMM_CONFINE "${env}": expected 1 or 0`);
  if (!confine || env === '0') {
    if (user !== undefined) throw new Error('--user and --no-confine (or TSVMM_CONFINE=0) contradict each other: the components run as the user tsvmm runs as when unconfined');
    return { seccomp: 'off' };
  }
  const mode = process.env.TSVMM_SECCOMP;
  if (mode !== undefined && !['kill', 'log', 'record', 'off'].includes(mode)) {
    throw new Error(`invalid TSVMM_SECCOMP "${mode}": expected kill, log, record or off`);
  }
  const seccomp = (mode ?? 'kill') as SeccompMode;
  const root = process.getuid?.() === 0;
  if (!root) {
    if (user !== undefined) throw new Error('--user needs tsvmm run to be started as root (it is the uid the components drop to)');
    return { seccomp };
  }
  const id = user !== undefined ? parseUser(user) : DEFAULT_USER;
  if (id.uid === 0) return { seccomp }; // --user 0: stay root (still filtered)
  return { ...id, seccomp };
}

/**
 * The namespaces each component gets from tsvmm-jail (native/jail/jail.c), when confined as root:
 *   net  a network namespace of its own, empty: it needs no network (the TAPs are fds, opened in the
 *        host's namespace, where they stay attached); the priv-domain stays in the host's, where its
 *        metrics TCP listener must be reachable;
 *   ro   a mount namespace where the whole tree is read-only but `rw`: it writes nothing by path
 *        (disks are fds). The vmm writes a snapshot into a directory chosen at run time, so it is not.
 */
const NAMESPACES: Record<ConfinedComponent, { net: boolean; ro: boolean }> = {
  vmm: { net: true, ro: false },
  'driver-domain': { net: true, ro: true },
  'priv-domain': { net: false, ro: true },
};

/** build/Release/tsvmm-jail beside the addon (as native/kvm/index.ts finds it), or undefined if not built. */
function jailPath(): string | undefined {
  for (let dir = __dirname, up = 0; up < 4; dir = path.dirname(dir), up++) {
    const f = path.join(dir, 'build', 'Release', 'tsvmm-jail');
    if (fs.existsSync(f)) return f;
  }
  return undefined;
}

export interface SpawnJail {
  /** What to exec: tsvmm-jail, or Node itself (not root, or unconfined). */
  file: string;
  /** The jail's arguments, ending with Node's path: the component's own arguments follow. */
  args: string[];
  /** For libuv, when there is no jail: the uid/gid it drops to before exec. */
  uid?: number;
  gid?: number;
  env: Record<string, string>;
  /** Put this fd at `netnsSlot` in the child's stdio. */
  netnsFd?: number;
}

/**
 * How to start `component` under `c` (`netnsSlot`: the first stdio slot after its fds, where the
 * VM's network namespace goes for the jail, which closes it): through tsvmm-jail when the components drop to another uid
 * (it enters the namespaces as root, then drops the uid and execs Node), else as before (libuv
 * drops the uid: a host without the jail built, or a supervisor that is not root).
 */
export function spawnConfinement(c: Confinement, component: ConfinedComponent, cwd: string | undefined, netnsSlot: number): SpawnJail {
  const env = { TSVMM_SECCOMP: c.seccomp };
  const jail = c.uid !== undefined && c.gid !== undefined ? jailPath() : undefined;
  if (!jail) return { file: process.execPath, args: [], ...(c.uid !== undefined ? { uid: c.uid, gid: c.gid } : {}), env };
  const ns = NAMESPACES[component];
  const args: string[] = [];
  if (ns.net) args.push(...(c.netnsFd !== undefined ? ['--netns', String(netnsSlot)] : ['--new-netns']));
  if (ns.ro) {
    const rw = [...(cwd ? [cwd] : []), ...(process.env.TSVMM_TEST_HOOKS === '1' ? [os.tmpdir()] : [])];
    args.push('--ro', ...rw.flatMap((d) => ['--rw', d]));
  }
  args.push('--uid', String(c.uid), '--gid', String(c.gid), '--', process.execPath);
  return { file: jail, args, env, ...(ns.net && c.netnsFd !== undefined ? { netnsFd: c.netnsFd } : {}) };
}

/**
 * After a jailed component in a network namespace of its own started (it sent something: the jail
 * is done), keep that namespace for the next ones (Confinement.netnsFd).
 */
export function keepNetns(c: Confinement, component: ConfinedComponent, pid: number | undefined): void {
  if (c.netnsFd !== undefined || !pid || !NAMESPACES[component].net || c.uid === undefined) return;
  let fd: number;
  try { fd = fs.openSync(`/proc/${pid}/ns/net`, 'r'); } catch { return; }
  try {
    if (fs.fstatSync(fd).ino !== fs.statSync('/proc/self/ns/net').ino) { c.netnsFd = fd; return; }
  } catch { /* gone */ }
  fs.closeSync(fd);
}

let confined = false;
/** <linux/prctl.h>, <linux/seccomp.h>: the keeper's own filter installation (keeper.c). */
const PR_SET_NO_NEW_PRIVS = 38;
const SECCOMP_SET_MODE_FILTER = 1;

/** The mode this component was started with (TSVMM_SECCOMP, set by the supervisor). */
export function seccompMode(): SeccompMode {
  const m = process.env.TSVMM_SECCOMP;
  return m === 'kill' || m === 'log' || m === 'record' ? m : 'off';
}

/** The keeper's filter mode (keeperStart's `seccomp`): 1 kill, 2 log, 0 none. */
export function keeperSeccomp(): number {
  const m = seccompMode();
  return m === 'kill' ? 1 : m === 'log' ? 2 : 0;
}

/**
 * Component side: confine this process, once, with its allowlist. Call it after start-up (every fd
 * open, every worker thread started) and before anything the guest or a client controls is
 * handled. Throws if the filter cannot be installed: a component does not run unconfined when it
 * was asked to run confined.
 */
export function confineSelf(component: ConfinedComponent): void {
  const mode = seccompMode();
  if (confined || mode === 'off') return;
  native.setDumpable(false);
  const table = native.syscallTable();
  let names = allowlist(component).filter((n) => n !== 'clone' && n !== 'clone3' && !SELF_ONLY.includes(n));
  if (mode === 'record') names = Object.keys(table);
  const nrs = names.map((n) => {
    const nr = table[n];
    if (nr === undefined) throw new Error(`seccomp allowlist of the ${component}: unknown system call "${n}"`);
    return nr;
  });
  // Threads, not processes: clone3 takes its flags in memory a filter cannot read, so it fails
  // with ENOSYS and libc falls back to clone, allowed only with CLONE_THREAD. No fork, so no exec
  // either, whatever the list says. (The CLONE_THREAD rule is final; an equality rule falls
  // through when it does not match, so the vmm's keeper rule goes first.)
  const threads: number[][] = [];
  // The vmm also clones its keeper (a new one if the keeper dies): that clone, with exactly its flags.
  if (mode !== 'record' && component === 'vmm') {
    threads.push([table.clone, 3, 0, abi('keeper_clone_flags')]);
    // A keeper cloned after this (a new one for one that died, keeperRestart) starts under this
    // filter and installs its own, tighter one on top (native/kvm/keeper.c): no_new_privs (set
    // already) and seccomp(SECCOMP_SET_MODE_FILTER), which can only take calls away.
    threads.push([table.prctl, 3, 0, PR_SET_NO_NEW_PRIVS], [table.seccomp, 3, 0, SECCOMP_SET_MODE_FILTER]);
  }
  if (mode !== 'record') threads.push([table.clone3, 1, os.constants.errno.ENOSYS], [table.clone, 2, 0, native.CLONE_THREAD]);
  const self = mode === 'record' ? [] : SELF_ONLY.map((n) => [table[n], 3, 0, process.pid]);
  native.seccompInstall([...threads, ...self, ...nrs], mode === 'kill' ? 1 : 2);
  confined = true;
}

/**
 * Can `uid`/`gid` (no supplementary groups) reach `file` — search every directory above it — and
 * read it (`dir`: search it)? Undefined if so, else the first path that stops it.
 */
export function unreachableBy(file: string, uid: number, gid: number, dir = false): string | undefined {
  const parts = path.resolve(file).split('/').filter(Boolean);
  for (let i = 0; i <= parts.length; i++) {
    const p = '/' + parts.slice(0, i).join('/');
    let st: fs.Stats;
    try { st = fs.statSync(p); } catch { return p; }
    const last = i === parts.length;
    const need = last && !dir ? 4 : 1; // read the file, search the directories
    const bits = st.uid === uid ? (st.mode >> 6) & 7 : st.gid === gid ? (st.mode >> 3) & 7 : st.mode & 7;
    if ((bits & need) !== need) return p;
  }
  return undefined;
}

/** The supervisor's line for a component that died of SIGSYS. */
export function seccompKilled(component: string, pid: number | undefined): string {
  return `${component} (pid ${pid}) was killed by its seccomp filter: it made a system call outside its allowlist ` +
    '(contracts/confinement.ts; TSVMM_SECCOMP=log logs such calls instead)';
}

/** What /proc says about a process's privileges (`tsvmm ps`; the Privileges message in proto/tsvmm.proto). */
export type ProcessPrivileges = Privileges;

const SECCOMP_MODES = ['disabled', 'strict', 'filter'];

export function processPrivileges(pid: number): ProcessPrivileges | undefined {
  let s: string;
  try { s = fs.readFileSync(`/proc/${pid}/status`, 'latin1'); } catch { return undefined; }
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(s)?.[1] ?? '';
  return {
    uid: Number(field('Uid').split(/\s+/)[1] ?? -1),
    gid: Number(field('Gid').split(/\s+/)[1] ?? -1),
    capEff: field('CapEff'),
    seccomp: SECCOMP_MODES[Number(field('Seccomp'))] ?? 'unknown',
    noNewPrivs: field('NoNewPrivs') === '1',
  };
}
