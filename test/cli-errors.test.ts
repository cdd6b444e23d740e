/**
 * Every bad input to `tsvmm run` gets one clear line on stderr and a
 * non-zero exit, never a stack trace or a hang.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { GUEST, ROOT, kvmUnavailable, skipBecause, tsvmm } from './helpers/tsvmm';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-cli-'));

/** A structurally valid ELF64 x86-64 executable with one PT_LOAD and no notes. */
function elfWithoutPvhNote(): Buffer {
  const b = Buffer.alloc(0x1000);
  b.write('\x7fELF', 0, 'latin1');
  b[4] = 2; b[5] = 1; b[6] = 1;
  b.writeUInt16LE(2, 16); b.writeUInt16LE(62, 18); b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(0x100000n, 24); b.writeBigUInt64LE(64n, 32);
  b.writeUInt16LE(64, 52); b.writeUInt16LE(56, 54); b.writeUInt16LE(1, 56);
  b.writeUInt32LE(1, 64); b.writeUInt32LE(5, 68);
  b.writeBigUInt64LE(0n, 72); b.writeBigUInt64LE(0x100000n, 80); b.writeBigUInt64LE(0x100000n, 88);
  b.writeBigUInt64LE(0x1000n, 96); b.writeBigUInt64LE(0x1000n, 104); b.writeBigUInt64LE(0x1000n, 112);
  return b;
}

function expectError(args: string[], pattern: RegExp, opts: { env?: NodeJS.ProcessEnv } = {}): void {
  const r = tsvmm(['run', ...args], { timeoutMs: 30_000, env: opts.env });
  assert.equal(r.error, undefined, 'tsvmm hung or failed to start');
  assert.notEqual(r.status, 0, `expected failure, got 0; stdout: ${r.stdout}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected exactly one line, got:\n${r.stderr}`);
  assert.match(lines[0], /^tsvmm: error: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'stack trace printed');
}

describe('tsvmm run: bad input is one clear line and a non-zero exit', function () {
  this.timeout(60_000);
  const noKvm = kvmUnavailable();

  it('missing kernel', () => expectError(['--kernel', path.join(tmp, 'nope')], /kernel .*nope does not exist/));
  it('kernel that is a directory', () => expectError(['--kernel', tmp], /is not a regular file/));
  it('non-ELF kernel', () => {
    const f = path.join(tmp, 'text');
    fs.writeFileSync(f, 'just some text, not a kernel\n'.repeat(10));
    expectError(['--kernel', f], /not an ELF/i);
  });
  it('truncated ELF kernel', () => {
    const f = path.join(tmp, 'trunc');
    fs.writeFileSync(f, fs.readFileSync(GUEST).subarray(0, 100));
    expectError(['--kernel', f], /truncated|outside/i);
  });
  it('ELF kernel without a PVH note', () => {
    const f = path.join(tmp, 'nopvh');
    fs.writeFileSync(f, elfWithoutPvhNote());
    expectError(['--kernel', f], /PVH/);
  });
  it('empty kernel file', () => {
    const f = path.join(tmp, 'empty');
    fs.writeFileSync(f, '');
    expectError(['--kernel', f], /ELF/);
  });
  it('unreadable kernel (as an unprivileged user)', function () {
    const f = path.join(tmp, 'secret');
    fs.copyFileSync(GUEST, f);
    fs.chmodSync(f, 0o000);
    if (process.getuid?.() === 0) {
      // root reads any file: run the CLI as 'nobody' instead.
      fs.chmodSync(tmp, 0o755);
      const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, path.join(ROOT, 'bin', 'tsvmm.js'), 'run', '--kernel', f], { encoding: 'utf8', timeout: 30_000 });
      if (r.error) skipBecause(this, `runuser unavailable (${r.error.message}): root reads any file, so the check needs an unprivileged user`);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr.trim(), /^tsvmm: error: kernel .* is not readable \(permission denied\)$/);
    } else {
      expectError(['--kernel', f], /not readable/);
    }
  });
  for (const [mem, why] of [['0', /too small/], ['abc', /invalid memory size/], ['10T', /too large|more than this host/], ['100000G', /too large/], ['100000001', /multiple of 4K/]] as const) {
    it(`absurd --mem ${mem}`, () => expectError(['--mem', mem], why));
  }
  it('0 vCPUs', () => expectError(['--cpus', '0'], /at least 1/));
  it('non-numeric vCPUs', () => expectError(['--cpus', 'two'], /whole number/));
  it('too many vCPUs', function () {
    if (noKvm) skipBecause(this, `the vCPU limit comes from KVM_CAP_MAX_VCPUS: ${noKvm}`);
    expectError(['--cpus', '100000'], /too many/);
  });
  it('unknown option', () => expectError(['--bogus'], /Unknown option/i));
  it('--user that does not exist', function () {
    if (process.getuid?.() !== 0) skipBecause(this, '--user is for a supervisor started as root (elsewhere it is refused for that reason)');
    expectError(['--user', 'no-such-user-tsvmm'], /invalid --user "no-such-user-tsvmm": no such user/);
  });

  it('--user with --no-confine', () => {
    expectError(['--user', '65534', '--no-confine'], /--user and --no-confine \(or TSVMM_CONFINE=0\) contradict each other/);
  });
  it('/dev/kvm missing', () => expectError([], /does not exist: this host has no KVM/, { env: { TSVMM_KVM_DEVICE: path.join(tmp, 'no-kvm') } }));
  it('/dev/kvm not permitted (as an unprivileged user)', function () {
    if (noKvm) skipBecause(this, noKvm);
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root to run the CLI as the unprivileged user nobody');
    const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, path.join(ROOT, 'bin', 'tsvmm.js'), 'run'], { encoding: 'utf8', timeout: 30_000 });
    if (r.error) skipBecause(this, `runuser unavailable (${r.error.message})`);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), /^tsvmm: error: no permission to open \/dev\/kvm/);
  });
  it('missing --disk image', () => expectError(['--disk', path.join(tmp, 'no.img')], /disk image .*no\.img does not exist/));
  it('--disk that is not a multiple of 512 bytes', () => {
    const f = path.join(tmp, 'odd.img');
    fs.writeFileSync(f, Buffer.alloc(1000));
    expectError(['--disk', f], /multiple of 512/);
  });
  it('--disk with an unknown option', () => {
    const f = path.join(tmp, 'ok.img');
    fs.writeFileSync(f, Buffer.alloc(4096));
    expectError(['--disk', `${f},rw`], /invalid --disk option "rw".*expected FILE\[,ro\]\[,cache=writeback\|none\]/);
  });
  it('--disk with a bad cache=, io=, iops= or bw=', () => {
    const f = path.join(tmp, 'ok.img');
    fs.writeFileSync(f, Buffer.alloc(4096));
    expectError(['--disk', `${f},cache=sometimes`], /cache=writeback or cache=none/);
    expectError(['--disk', `${f},io=aio`], /io=uring or io=threads/);
    expectError(['--disk', `${f},iops=0`], /invalid iops=0/);
    expectError(['--disk', `${f},bw=fast`], /invalid bw=fast/);
  });
  it('--disk ...,cache=none on a file system that refuses O_DIRECT (ramfs)', function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'mounting a ramfs needs root');
    const mnt = fs.mkdtempSync(path.join(tmp, 'ramfs-'));
    const m = spawnSync('mount', ['-t', 'ramfs', '-o', 'mode=700', 'none', mnt], { encoding: 'utf8' });
    if (m.status !== 0) skipBecause(this, `cannot mount a ramfs here: ${m.stderr.trim()}`);
    try {
      const f = path.join(mnt, 'd.img');
      fs.writeFileSync(f, Buffer.alloc(4096));
      expectError(['--disk', `${f},cache=none`], /cache=none needs O_DIRECT, which its file system refuses/);
      // The same image is fine through the page cache: only cache=none is refused.
      const r = tsvmm(['run', '--name', 'devopts-ramfs', '--metrics-addr', 'none', '--disk', f, '--cmdline', 'workload=blk blk_n=4'], { timeoutMs: 30_000 });
      if (!noKvm) assert.equal(r.status, 0, r.stderr);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
  it('--net with a bad bw=', () => expectError(['--net', 'tap=tsvmmx0,bw=0'], /invalid bw=0/));
  it('--net without tap=', () => expectError(['--net', 'foo'], /expected tap=NAME/));
  it('--net with a bad MAC', () => expectError(['--net', 'tap=tsvmmx0,mac=zz:00:00:00:00:00'], /invalid MAC/));
  it('--net with a multicast MAC', () => expectError(['--net', 'tap=tsvmmx0,mac=01:00:00:00:00:01'], /multicast/));
  it('--net with a too-long TAP name', () => expectError(['--net', 'tap=averyveryverylongname'], /1-15 character/));
  it('--net naming an interface that is not a TAP', function () {
    if (noKvm) skipBecause(this, noKvm);
    if (process.getuid?.() !== 0) skipBecause(this, 'TUNSETIFF on an existing interface needs CAP_NET_ADMIN (root)');
    // 'lo' exists and is not a TAP: TUNSETIFF fails and tsvmm must say so in one line.
    const r = tsvmm(['run', '--net', 'tap=lo'], { timeoutMs: 30_000 });
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('tsvmm: error'));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /TAP "lo"|not a TAP/);
  });
  it('too many devices', () => {
    const f = path.join(tmp, 'many.img');
    fs.writeFileSync(f, Buffer.alloc(4096));
    expectError(Array.from({ length: 9 }, () => ['--disk', `${f},ro`]).flat(), /at most 8/);
  });
  it('unknown command', () => {
    const r = tsvmm(['frobnicate']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^tsvmm: error: unknown command "frobnicate"/);
  });
});
