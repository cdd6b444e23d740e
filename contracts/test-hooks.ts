/**
 * Fault injection for tests (issue 4, "failure kinds"): only active when the
 * component was started with TSVMM_TEST_HOOKS=1 in its environment.
 *
 * Protocol: write the fault's name to `injectFile(pid)` and send the
 * component SIGUSR2. The component reads and removes the file, then:
 *   - `throw`: throws from its event loop (an uncaught exception: Node exits
 *     with status 1, nothing swallows it);
 *   - `loop`:  spins forever in its main thread (a hang: its heartbeat stops).
 * SIGKILL, SIGSEGV, SIGABRT and SIGSTOP need no hook: tests send the real
 * signal. The vmm has one more hook, TSVMM_TEST_DIE_MMIO (vmm/vcpu-thread.ts).
 *
 * Components load this module only when TSVMM_TEST_HOOKS=1 (testHooks() in contracts/process.ts).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/**
 * `attack:WHAT[:ARG]` (issue 20, proof by attack): the component tries what an attacker who took
 * it over would, and reports on stderr `tsvmm COMPONENT: test hook: attack WHAT: refused (WHY)` or
 * `... ALLOWED` — unless its seccomp filter kills it first (SIGSYS), which the supervisor reports
 * and recovers. WHAT:
 *   open-shadow       open /etc/shadow for reading
 *   open-kvm          open /dev/kvm
 *   socket            create a socket (a TCP listener)
 *   ptrace:PID        ptrace-attach access to PID (open /proc/PID/mem: the kernel's PTRACE_ATTACH check)
 *   write:PATH        open PATH for writing (creating it)
 *   exec              run /bin/sh
 */
export type InjectKind = 'throw' | 'loop' | `attack:${string}`;

export function injectFile(pid: number): string {
  return path.join(os.tmpdir(), `tsvmm-inject-${pid}`);
}

/** Test side: inject `kind` into the component `pid`. */
export function inject(pid: number, kind: InjectKind): void {
  const file = injectFile(pid);
  fs.writeFileSync(file, kind);
  // A component running as another uid (contracts/confinement.ts) must be able to remove it
  // (os.tmpdir() is sticky).
  const uid = /^Uid:\s+\d+\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
  const gid = /^Gid:\s+\d+\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
  if (uid && gid && Number(uid[1]) !== process.getuid?.()) fs.chownSync(file, Number(uid[1]), Number(gid[1]));
  process.kill(pid, 'SIGUSR2');
}

/** Component side: call once the component runs. */
export function installTestHooks(component: string): void {
  process.on('SIGUSR2', () => {
    const file = injectFile(process.pid);
    let kind = '';
    try { kind = fs.readFileSync(file, 'utf8').trim(); fs.unlinkSync(file); } catch { return; }
    fs.writeSync(2, `tsvmm ${component}: test hook: injecting ${kind}\n`);
    if (kind === 'throw') setImmediate(() => { throw new Error(`${component}: injected uncaught exception (test hook)`); });
    else if (kind === 'loop') { for (;;) { /* an injected hang: the heartbeat stops */ } }
    else if (kind.startsWith('attack:')) {
      const what = kind.slice('attack:'.length);
      const report = (r: string) => fs.writeSync(2, `tsvmm ${component}: test hook: attack ${what}: ${r}\n`);
      attack(what).then(report, (e: NodeJS.ErrnoException) => report(`refused (${e.code ?? e.message})`));
    }
  });
}

/** One attack (see InjectKind): resolves 'ALLOWED' if it worked, rejects with why not. */
async function attack(what: string): Promise<string> {
  const [verb, ...rest] = what.split(':');
  const arg = rest.join(':');
  switch (verb) {
    case 'open-shadow': fs.closeSync(fs.openSync('/etc/shadow', 'r')); return 'ALLOWED';
    case 'open-kvm': fs.closeSync(fs.openSync('/dev/kvm', 'r+')); return 'ALLOWED';
    case 'ptrace': fs.closeSync(fs.openSync(`/proc/${Number(arg)}/mem`, 'r')); return 'ALLOWED';
    case 'write': fs.closeSync(fs.openSync(arg, 'a')); return 'ALLOWED';
    case 'socket': {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const net = require('net') as typeof import('net');
      const server = net.createServer();
      await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()); });
      server.close();
      return 'ALLOWED';
    }
    case 'exec': {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      const cp = require('child_process') as typeof import('child_process');
      const r = cp.spawnSync('/bin/sh', ['-c', 'echo shell-ran'], { encoding: 'utf8' });
      if (r.error) throw r.error;
      if (r.stdout.includes('shell-ran')) return 'ALLOWED';
      throw Object.assign(new Error('exec'), { code: r.signal ? `the shell was killed by ${r.signal}` : `exit status ${r.status}` });
    }
    default: throw Object.assign(new Error(what), { code: `unknown attack "${what}"` });
  }
}
