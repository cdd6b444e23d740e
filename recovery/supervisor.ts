/**
 * The supervisor: the `tsvmm run` process itself. It creates and holds the
 * long-lived resources (guest RAM memfd, the shared state memfd, the serial
 * output fd), spawns the components with those fds, and turns their
 * reports into tsvmm's exit status.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';
import { native } from '../native/kvm';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { FD, STATE_MEMFD_SIZE } from '../vmm/fds';
import { PlatformPage } from '../vmm/platform-page';

export interface RunResult {
  code: number;
  reason: string;
}

export interface SupervisorOptions {
  /** Called with one line for the user (status, recoveries). */
  log?: (line: string) => void;
}

const DIST = path.resolve(__dirname, '..');

export class Supervisor {
  readonly ramFd: number;
  readonly stateFd: number;
  readonly serialFd: number;
  private vmm?: ChildProcess;
  private result?: RunResult;
  private resolveDone!: (r: RunResult) => void;
  readonly done: Promise<RunResult>;

  constructor(readonly cfg: VmConfig, private readonly opts: SupervisorOptions = {}) {
    this.ramFd = native.memfdCreate(`tsvmm-ram-${cfg.name}`, cfg.memBytes);
    this.stateFd = native.memfdCreate(`tsvmm-state-${cfg.name}`, STATE_MEMFD_SIZE);
    new PlatformPage(native.mmap(this.stateFd, STATE_MEMFD_SIZE, 0, true)).init();
    this.serialFd = cfg.serialPath ? fs.openSync(cfg.serialPath, 'a') : 1;
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start(): void {
    this.vmm = this.spawnComponent('vmm', path.join(DIST, 'vmm', 'main.js'));
  }

  /** pid of the running vmm (for users and tests that kill it). */
  get vmmPid(): number | undefined { return this.vmm?.pid; }

  private spawnComponent(name: string, script: string): ChildProcess {
    const child = spawn(process.execPath, [script], {
      stdio: ['inherit', 'inherit', 'inherit', 'ipc', this.ramFd, this.stateFd, this.serialFd],
      env: { ...process.env, TSVMM_CONFIG: Buffer.from(VmConfigCodec.encode(this.cfg)).toString('base64') },
    });
    child.on('message', (m: { pb?: string }) => {
      if (typeof m?.pb !== 'string') return;
      this.onMessage(name, ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')));
    });
    child.on('exit', (code, signal) => {
      if (this.result) return;
      this.finish({ code: 1, reason: `${name} exited unexpectedly (${signal ? `signal ${signal}` : `code ${code}`})` });
    });
    return child;
  }

  private onMessage(name: string, m: ComponentMessage): void {
    if ('ready' in m && m.ready) this.opts.log?.(`${name} ready (pid ${m.ready.pid})`);
    else if ('guestExit' in m && m.guestExit) this.finish({ code: m.guestExit.code, reason: m.guestExit.reason });
    else if ('fatal' in m && m.fatal) this.finish({ code: 1, reason: m.fatal.message });
  }

  private finish(r: RunResult): void {
    if (this.result) return;
    this.result = r;
    this.vmm?.kill('SIGKILL');
    this.resolveDone(r);
  }

  stop(reason: string): void {
    this.finish({ code: 130, reason });
  }
}
