/**
 * Runs INSIDE the emulated hardware-KVM host (emulated-host/host.ts), driven by
 * test/linux-emulated.test.ts: Debian's kernel (the image of `tsvmm image
 * linux`, in /opt/linux) under tsvmm, used through its serial console as a
 * person would, and recovered under load. Prints one line per check:
 *
 *   @check NAME ok|fail {json details}
 *
 * VM A: 1 vCPU, --standby, disk + NIC: nproc/cpuinfo, a standby takeover of the
 *   vmm and the driver-domain under the disk + network workload, guest `poweroff -f`.
 * VM B: 2 vCPUs, disk + NIC: nproc/cpuinfo, kvm-clock, ACPI, console input,
 *   ping and UDP (TFTP) through the TAP, the verifying disk loop, >= 10 vmm and
 *   >= 10 driver-domain SIGKILLs and a priv-domain SIGKILL under the workload,
 *   the kernel log after all that, then `tsvmm stop`.
 * Each VM's kernel log is judged by emulated-host/kernel-log.ts.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as dgram from 'dgram';
import * as fs from 'fs';
import * as path from 'path';
import { judgeKernelLog, TROUBLE_GREP } from '../../emulated-host/kernel-log';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = path.join(ROOT, 'bin', 'tsvmm.js');
const IMAGE = process.env.TSVMM_LINUX_IMAGE ?? '/opt/linux';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOST_IP = '10.0.2.1';
const GUEST_IP = '10.0.2.15';
/** One TAP name for both VMs (they run one after the other). */
const TAP = 'le0';
const KILLS = Number(process.env.LINUX_CHECK_KILLS ?? 10);
/** Generous: everything runs under TCG, tens of times slower than hardware, and slower again on a busy machine. */
const BOOT_MS = 900_000;
const STEP_MS = 300_000;
/**
 * The components' heartbeat deadline (--hang-timeout, 250 ms by default): under TCG on a shared
 * machine a healthy component can miss 250 ms, and a false hang kill would be a fault this test
 * did not inject. Real hangs are another test's (test/recovery-failures.test.ts).
 */
const HANG_TIMEOUT_MS = 20_000;
/**
 * The guest's command line. TCG on a shared machine runs the guest hundreds of times slower than
 * hardware while its kvm-clock follows the wall clock, so a boot step that takes milliseconds on
 * hardware can hold a CPU for tens of seconds: the soft-lockup and RCU-stall detectors get their
 * longest thresholds (120 s and 300 s). A vCPU that really stops still trips them within the run.
 */
const GUEST_CMDLINE = 'console=ttyS0 root=/dev/vda rw panic=-1 quiet watchdog_thresh=60 rcupdate.rcu_cpu_stall_timeout=300';

function report(name: string, ok: boolean, details: Record<string, unknown> = {}): void {
  process.stdout.write(`@check ${name} ${ok ? 'ok' : 'fail'} ${JSON.stringify(details)}\n`);
}

/** The TFTP file the guest fetches over UDP, and its md5 (the guest compares). */
const BLOB = Buffer.from(Array.from({ length: 48 * 1024 + 100 }, (_, i) => (i * 131 + (i >> 9)) & 0xff));
const BLOB_MD5 = crypto.createHash('md5').update(BLOB).digest('hex');

/**
 * A minimal read-only TFTP server (RFC 1350, octet mode, one file): busybox in
 * the guest has a TFTP client and no UDP echo, so this is its UDP round trip:
 * every 512-byte DATA block is acknowledged by the guest, and the file is verified there.
 */
class Tftp {
  readonly sock = dgram.createSocket('udp4');
  transfers = 0;
  retransmits = 0;
  abandoned = 0;
  constructor() {
    this.sock.on('message', (msg, peer) => {
      if (msg.readUInt16BE(0) !== 1) return; // RRQ only
      this.transfers++;
      const s = dgram.createSocket('udp4');
      let block = 1;
      let tries = 0;
      let timer: NodeJS.Timeout | undefined;
      const send = (): void => {
        const data = BLOB.subarray((block - 1) * 512, block * 512);
        const pkt = Buffer.alloc(4 + data.length);
        pkt.writeUInt16BE(3, 0);
        pkt.writeUInt16BE(block & 0xffff, 2);
        data.copy(pkt, 4);
        s.send(pkt, peer.port, peer.address);
        clearTimeout(timer);
        // Resend a block the guest did not acknowledge; a transfer the client gave up on ends.
        timer = setTimeout(() => { if (++tries > 10) { this.abandoned++; s.close(); return; } this.retransmits++; send(); }, 3000);
      };
      s.on('message', (ack) => {
        if (ack.readUInt16BE(0) !== 4 || ack.readUInt16BE(2) !== (block & 0xffff)) return;
        if ((block - 1) * 512 + 512 > BLOB.length) { clearTimeout(timer); s.close(); return; }
        block++;
        tries = 0;
        send();
      });
      s.bind(0, '0.0.0.0', send);
    });
  }
  listen(): Promise<void> { return new Promise((r) => this.sock.bind(69, '0.0.0.0', () => r())); }
  close(): void { this.sock.close(); }
}

const READY = /tsvmm: (vmm|driver-domain|priv-domain)( standby)? ready \(pid (\d+)\)/;
const RECOVERED = /recovered (vmm|driver-domain|priv-domain) \(cause: ([^)]*)\) in ([\d.]+) ms/;

/** `tsvmm run` with its console on a pipe: we type into it as a person would. */
class Vm {
  readonly child: ChildProcess;
  out = '';
  err = '';
  readonly pid: Record<string, number> = {};
  readonly standby: Record<string, number> = {};
  readonly recoveries: { component: string; cause: string; ms: number; at: number }[] = [];
  exit?: { code: number | null; signal: string | null };
  private seq = 0;
  readonly started = Date.now();

  constructor(readonly name: string, args: string[]) {
    this.child = spawn(process.execPath, [BIN, 'run', '--linux', '--image-dir', IMAGE, '--name', name, '--metrics-addr', 'none', '--hang-timeout', String(HANG_TIMEOUT_MS), ...args], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env },
    });
    let ob = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      const t = d.toString('latin1');
      this.out += t;
      ob += t;
      let i;
      while ((i = ob.indexOf('\n')) >= 0) { process.stdout.write(`${name}| ${ob.slice(0, i).replace(/\r$/, '')}\n`); ob = ob.slice(i + 1); }
    });
    let eb = '';
    this.child.stderr!.on('data', (d: Buffer) => {
      const t = d.toString('latin1');
      this.err += t;
      eb += t;
      let i;
      while ((i = eb.indexOf('\n')) >= 0) {
        const line = eb.slice(0, i);
        eb = eb.slice(i + 1);
        process.stdout.write(`${name}! ${line}\n`);
        const r = READY.exec(line);
        if (r) (r[2] ? this.standby : this.pid)[r[1]] = Number(r[3]);
        const m = RECOVERED.exec(line);
        if (m) this.recoveries.push({ component: m[1], cause: m[2], ms: Number(m[3]), at: Date.now() });
      }
    });
    this.child.on('exit', (code, signal) => { this.exit = { code, signal }; });
  }

  async waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (this.exit) throw new Error(`tsvmm exited (${JSON.stringify(this.exit)}) while waiting for ${what}: ${this.err.trim().split('\n').slice(-3).join(' / ')}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}`);
      await sleep(20);
    }
  }

  /** Types `cmd` into the guest's shell; returns its output (between markers) and status. */
  async sh(cmd: string, ms = STEP_MS): Promise<{ out: string; status: number }> {
    const n = ++this.seq;
    const from = this.out.length;
    // The markers are computed by the shell ($((...))), so the echo of the typed line never matches them.
    const sep = /&\s*$/.test(cmd) ? ' ' : '; ';
    this.child.stdin!.write(`echo "@b$((${n}))"; ${cmd}${sep}echo "@e$((${n})) $?"\n`);
    const end = new RegExp(`^@e${n} (\\d+)\\r?$`, 'm');
    await this.waitFor(() => end.test(this.out.slice(from)), ms, `the guest's answer to "${cmd.slice(0, 60)}"`);
    const text = this.out.slice(from);
    const b = new RegExp(`^@b${n}\\r?$`, 'm').exec(text)!;
    const e = end.exec(text)!;
    return { out: text.slice(b.index + b[0].length, e.index).replace(/\r/g, '').trim(), status: Number(e[1]) };
  }

  async booted(): Promise<number> {
    await this.waitFor(() => /a busybox shell on the console follows/.test(this.out), BOOT_MS, 'the guest\'s shell banner');
    return Date.now() - this.started;
  }

  kernelLog(): Promise<{ out: string; status: number }> {
    return this.sh(`dmesg | grep -E '${TROUBLE_GREP}'; echo "taint=$(cat /proc/sys/kernel/tainted)"`);
  }

  async stopped(ms: number): Promise<{ code: number | null; signal: string | null }> {
    const deadline = Date.now() + ms;
    while (!this.exit && Date.now() < deadline) await sleep(50);
    if (!this.exit) { this.child.kill('SIGKILL'); throw new Error(`tsvmm did not exit within ${ms / 1000} s`); }
    return this.exit;
  }

  kill(): void { if (!this.exit) this.child.kill('SIGKILL'); }

  /** Component processes (vmm, driver-domain, priv-domain, standbys) still alive after tsvmm exited. */
  leftovers(): number[] {
    return [...Object.values(this.pid), ...Object.values(this.standby)].filter((p) => {
      try { process.kill(p, 0); return true; } catch { return false; }
    });
  }
}

function judge(log: string): { problems: string[]; exempted: number } {
  const lines = log.split('\n');
  const taint = Number(/taint=(\d+)/.exec(log)?.[1] ?? NaN);
  return judgeKernelLog(lines.filter((l) => !l.startsWith('taint=')), Number.isNaN(taint) ? -1 : taint, true);
}

function freshDisk(tag: string): string {
  const f = `/tmp/${tag}-rootfs.img`;
  fs.copyFileSync(path.join(IMAGE, 'rootfs.img'), f);
  return f;
}

function setupTap(tap: string): void {
  for (const args of [['addr', 'add', `${HOST_IP}/24`, 'dev', tap], ['link', 'set', tap, 'up']]) {
    const r = spawnSync('ip', args, { encoding: 'utf8' });
    if (r.status !== 0 && !/File exists/.test(r.stderr)) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
  }
}

/** The verifying workload, typed as one line: disk (write, sync, drop caches, compare) and UDP (TFTP fetch, md5) in a loop. */
function workload(): string {
  return '(i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/tmp/w bs=64k count=8 2>/dev/null; cp /tmp/w /mnt/w; sync; echo 3 >/proc/sys/vm/drop_caches; '
    + 'if cmp -s /tmp/w /mnt/w; then d=ok; else d=MISMATCH; fi; '
    + `if tftp -g -r blob -l /tmp/t ${HOST_IP} 2>/dev/null && [ "$(md5sum </tmp/t)" = "${BLOB_MD5}  -" ]; then u=ok; else u=FAIL; fi; `
    + 'echo "@work n=$i disk=$d udp=$u"; done) >/dev/console 2>&1 &';
}

const WORK = /^@work n=(\d+) disk=(\w+) udp=(\w+)/gm;
function workLines(out: string): { n: number; disk: string; udp: string }[] {
  return [...out.matchAll(WORK)].map((m) => ({ n: Number(m[1]), disk: m[2], udp: m[3] }));
}

async function progressAfter(vm: Vm, from: number, ms: number, what: string): Promise<void> {
  await vm.waitFor(() => workLines(vm.out.slice(from)).length >= 1, ms, `workload progress after ${what}`);
}

/** SIGKILL `component` and wait for its recovery and for the workload to make progress after it. */
async function killAndRecover(vm: Vm, component: string, warm: boolean): Promise<number> {
  const pid = vm.pid[component];
  const nrec = vm.recoveries.length;
  if (warm) await vm.waitFor(() => vm.standby[component] > 0 && vm.standby[component] !== pid, STEP_MS, `a ${component} standby`);
  process.kill(pid, 'SIGKILL');
  await vm.waitFor(() => vm.recoveries.slice(nrec).some((r) => r.component === component), STEP_MS, `the recovery of the ${component} (pid ${pid})`);
  const rec = vm.recoveries.slice(nrec).find((r) => r.component === component)!;
  if (component !== 'priv-domain') await vm.waitFor(() => vm.pid[component] !== pid, STEP_MS, `a new ${component}`);
  const from = vm.out.length;
  await progressAfter(vm, from, STEP_MS, `the ${component} kill`);
  return rec.ms;
}

async function vmA(): Promise<void> {
  const tap = TAP;
  const vm = new Vm('le-a', ['--cpus', '1', '--mem', '256M', '--standby', '--disk', freshDisk('le-a'), '--net', `tap=${tap}`, '--cmdline', GUEST_CMDLINE]);
  try {
    const bootMs = await vm.booted();
    const n = await vm.sh('nproc; grep -c ^processor /proc/cpuinfo');
    report('boot-1cpu', n.out === '1\n1', { bootMs, out: n.out });
    setupTap(tap);
    await vm.sh(`ip addr add ${GUEST_IP}/24 dev eth0; ip link set eth0 up`);
    await vm.sh(workload());
    await progressAfter(vm, 0, STEP_MS, 'the start');
    const ms: Record<string, number> = {};
    for (const c of ['vmm', 'driver-domain']) ms[c] = await killAndRecover(vm, c, true);
    const from = vm.out.length;
    await vm.waitFor(() => workLines(vm.out.slice(from)).length >= 2, STEP_MS, 'two more workload rounds after the takeovers');
    const work = workLines(vm.out);
    const bad = work.filter((w) => w.disk !== 'ok' || w.udp !== 'ok');
    const warm = vm.recoveries.filter((r) => r.component !== 'priv-domain');
    report('standby-takeover', bad.length === 0 && warm.length === 2, { recoveries: vm.recoveries, rounds: work.length, bad, ms });
    const log = await vm.kernelLog();
    const j = judge(log.out);
    report('kernel-log-1cpu', j.problems.length === 0, { ...j });
    vm.child.stdin!.write('poweroff -f\n');
    const exit = await vm.stopped(STEP_MS);
    await sleep(2000);
    const left = vm.leftovers();
    report('poweroff', exit.code === 0 && left.length === 0, { exit, leftovers: left, stderrTail: vm.err.trim().split('\n').slice(-2) });
  } finally { vm.kill(); }
}

async function vmB(tftp: Tftp): Promise<void> {
  const tap = TAP;
  const vm = new Vm('le-b', ['--cpus', '2', '--mem', '384M', '--disk', freshDisk('le-b'), '--net', `tap=${tap}`, '--cmdline', GUEST_CMDLINE]);
  try {
    const bootMs = await vm.booted();
    const n = await vm.sh('nproc; grep -c ^processor /proc/cpuinfo');
    report('boot-2cpu', n.out === '2\n2', { bootMs, out: n.out });
    const input = await vm.sh('echo "typed $((6*7)) $(uname -r)"');
    report('console-input', /^typed 42 \d/.test(input.out), { out: input.out });
    const cs = await vm.sh('cat /sys/devices/system/clocksource/clocksource0/current_clocksource');
    report('kvm-clock', cs.out === 'kvm-clock', { out: cs.out });
    const acpi = await vm.sh(`ls /sys/bus/platform/devices | grep -c LNRO0005; dmesg | grep -ciE 'ACPI.*(error|exception|warning)'; ls /sys/firmware/acpi/tables`);
    const [lnro, errors] = acpi.out.split('\n');
    report('acpi', Number(lnro) === 2 && Number(errors) === 0 && /DSDT/.test(acpi.out) && /APIC/.test(acpi.out), { out: acpi.out });

    setupTap(tap);
    await vm.sh(`ip addr add ${GUEST_IP}/24 dev eth0; ip link set eth0 up`);
    const ping = spawnSync('ping', ['-c', '5', '-W', '10', GUEST_IP], { encoding: 'utf8', timeout: STEP_MS });
    report('ping', ping.status === 0 && / 0% packet loss/.test(ping.stdout), { out: ping.stdout.trim().split('\n').slice(-2) });
    const t = await vm.sh(`tftp -g -r blob -l /tmp/t ${HOST_IP} && md5sum </tmp/t`);
    report('udp', t.status === 0 && t.out.startsWith(BLOB_MD5), { out: t.out, transfers: tftp.transfers });
    const blk = await vm.sh('i=0; bad=0; while [ $i -lt 5 ]; do i=$((i+1)); dd if=/dev/urandom of=/tmp/v bs=64k count=16 2>/dev/null; cp /tmp/v /mnt/v; sync; echo 3 >/proc/sys/vm/drop_caches; cmp -s /tmp/v /mnt/v || bad=$((bad+1)); done; echo "rounds=$i bad=$bad"; mount | grep /dev/vda');
    report('virtio-blk-ext4', /rounds=5 bad=0/.test(blk.out) && /\/dev\/vda on \/mnt type ext4/.test(blk.out), { out: blk.out });

    // Recovery under the disk + UDP workload.
    await vm.sh(workload());
    await progressAfter(vm, 0, STEP_MS, 'the start');
    const retransmitsBefore = tftp.retransmits;
    const ms: Record<string, number[]> = { vmm: [], 'driver-domain': [], 'priv-domain': [] };
    for (let k = 0; k < KILLS; k++) {
      ms.vmm.push(await killAndRecover(vm, 'vmm', false));
      ms['driver-domain'].push(await killAndRecover(vm, 'driver-domain', false));
    }
    ms['priv-domain'].push(await killAndRecover(vm, 'priv-domain', false));
    const from = vm.out.length;
    await vm.waitFor(() => workLines(vm.out.slice(from)).length >= 2, STEP_MS, 'two more workload rounds after the kills');
    const work = workLines(vm.out);
    const bad = work.filter((w) => w.disk !== 'ok' || w.udp !== 'ok');
    report('recovery', bad.length === 0 && ms.vmm.length === KILLS && ms['driver-domain'].length === KILLS, {
      kills: { vmm: ms.vmm.length, 'driver-domain': ms['driver-domain'].length, 'priv-domain': ms['priv-domain'].length },
      rounds: work.length, bad, recoveryMs: ms, udpRetransmits: tftp.retransmits - retransmitsBefore, udpAbandoned: tftp.abandoned,
    });
    const log = await vm.kernelLog();
    const j = judge(log.out);
    report('kernel-log-2cpu', j.problems.length === 0, { ...j });

    const stop = spawnSync(process.execPath, [BIN, 'stop', '--name', vm.name], { encoding: 'utf8', timeout: STEP_MS });
    const exit = await vm.stopped(STEP_MS);
    await sleep(2000);
    const left = vm.leftovers();
    const last = vm.err.trim().split('\n').pop() ?? '';
    // As test/cli-verbs.test.ts has it: a requested stop ends `tsvmm run` with 0 and no "error:".
    report('tsvmm-stop', stop.status === 0 && exit.code === 0 && /stopped through the API/.test(last) && !/error:/.test(vm.err) && left.length === 0, { stop: stop.stdout.trim() || stop.stderr.trim(), exit, last, leftovers: left });
  } finally { vm.kill(); }
}

async function main(): Promise<void> {
  const tftp = new Tftp();
  await tftp.listen();
  const which = process.argv[2] ?? 'all';
  const wrap = async (name: string, f: () => Promise<void>): Promise<void> => {
    try { await f(); } catch (e) { report(name, false, { error: (e as Error).message }); }
  };
  if (which === 'all' || which === 'b') await wrap('vm-b', () => vmB(tftp));
  if (which === 'all' || which === 'a') await wrap('vm-a', () => vmA());
  tftp.close();
}

main().then(() => process.exit(0), (e) => { report('driver', false, { error: (e as Error).message }); process.exit(1); });
