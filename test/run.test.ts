/**
 * `tsvmm run` boots the real test guest under KVM through the PVH loader
 * and reports its result lines; every workload, on 1 and several vCPUs.
 */
import { strict as assert } from 'assert';
import { guestLines, requireKvm, tsvmm, GUEST } from './helpers/tsvmm';

describe('tsvmm run (boots the test guest)', function () {
  this.timeout(120_000);
  before(requireKvm);

  for (const cpus of [1, 2, 3]) {
    it(`counter on ${cpus} vCPU(s): every CPU counts, hash chains agree, guest powers off 0`, () => {
      const n = 200_000_000;
      const r = tsvmm(['run', '--kernel', GUEST, '--cpus', String(cpus), '--cmdline', `workload=counter n=${n} report=50000000`]);
      assert.equal(r.status, 0, r.stderr);
      const lines = guestLines(r.stdout);
      assert.equal(lines.find((l) => l.word === 'boot')?.fields.cpus, String(cpus));
      assert.ok(!lines.some((l) => l.word === 'error'), r.stdout);
      const finals = lines.filter((l) => l.word === 'counter' && l.fields.n === String(n));
      assert.deepEqual(finals.map((l) => l.fields.cpu).sort(), Array.from({ length: cpus }, (_, i) => String(i)));
      // The hash chain depends only on the count, so every CPU must agree.
      assert.equal(new Set(finals.map((l) => l.fields.hash)).size, 1);
      if (cpus > 1) assert.equal(lines.find((l) => l.word === 'smp')?.fields.cpus_up, String(cpus));
      assert.ok(lines.some((l) => l.word === 'done'));
    });
  }

  it('the guest finds exactly the configured vCPUs (ACPI MADT) and memory (PVH memmap / e820)', () => {
    for (const [mem, cpus, mb] of [['64M', 1, 63], ['512M', 3, 511], ['4G', 2, 4095]] as const) {
      const r = tsvmm(['run', '--kernel', GUEST, '--mem', mem, '--cpus', String(cpus), '--cmdline', 'workload=counter n=1000 report=1000']);
      assert.equal(r.status, 0, r.stderr);
      const boot = guestLines(r.stdout).find((l) => l.word === 'boot');
      // No cpus= on the command line: the guest counted the MADT's local APICs.
      assert.doesNotMatch(boot?.fields.cmdline ?? '', /cpus=/);
      assert.equal(boot?.fields.cpus, String(cpus));
      // RAM below 1 MiB loses the legacy hole (0x9fc00-0x100000); above 3 GiB it continues at 4 GiB.
      assert.equal(boot?.fields.mem_mb, String(mb));
    }
  });

  it('exits: times N port-I/O exits, N MMIO exits and N bytes of serial output, every byte out', () => {
    const r = tsvmm(['run', '--kernel', GUEST, '--cmdline', 'workload=exits n=2000']);
    assert.equal(r.status, 0, r.stderr);
    const ex = guestLines(r.stdout).filter((l) => l.word === 'exits' && l.fields.kind);
    assert.deepEqual(ex.map((l) => l.fields.kind), ['pio', 'mmio', 'serial']);
    for (const l of ex) {
      assert.equal(l.fields.n, '2000');
      assert.ok(Number(l.fields[l.fields.kind === 'serial' ? 'cycles_per_byte' : 'cycles_per_exit']) > 0);
    }
    // The serial loop's bytes (through the coalesced THR where KVM has it): 31 lines of 63 dots, then 16.
    const dots = r.stdout.split('\n').filter((l) => /^\.+$/.test(l));
    assert.deepEqual(dots.map((l) => l.length), [...Array(31).fill(63), 16]);
  });

  it('irq: LAPIC timer interrupts reach the guest and round-trip', () => {
    const r = tsvmm(['run', '--kernel', GUEST, '--cmdline', 'workload=irq n=500']);
    assert.equal(r.status, 0, r.stderr);
    const irq = guestLines(r.stdout).find((l) => l.word === 'irq');
    assert.equal(irq?.fields.n, '500');
    assert.ok(Number(irq?.fields.cycles_per_irq) > 0);
  });

  it('a guest that fails makes tsvmm exit 3, distinct from its own failures (1) and usage errors (2)', () => {
    const r = tsvmm(['run', '--kernel', GUEST, '--cmdline', 'workload=nonsense']);
    assert.equal(r.status, 3, r.stdout + r.stderr);
    assert.ok(guestLines(r.stdout).some((l) => l.word === 'error' && l.fields.what === 'cmdline'));
    assert.match(r.stderr, /guest powered off with status 1/);
  });

  it('a guest CPU exception is reported by the guest, not a VMM crash', () => {
    const r = tsvmm(['run', '--kernel', GUEST, '--cmdline', 'workload=fault']);
    assert.equal(r.status, 3, r.stdout + r.stderr);
    assert.match(r.stderr, /guest powered off with status 2/);
    assert.ok(guestLines(r.stdout).some((l) => l.word === 'error' && l.fields.what === 'exception'));
  });

  it('without --kernel it boots the built-in test guest', () => {
    const r = tsvmm(['run', '--cmdline', 'workload=counter n=100000000 report=50000000']);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(guestLines(r.stdout).some((l) => l.word === 'counter'));
  });

  it('--serial FILE sends guest output to the file', () => {
    const file = `/tmp/tsvmm-serial-${process.pid}.log`;
    const r = tsvmm(['run', '--kernel', GUEST, '--serial', file, '--cmdline', 'workload=counter n=1000 report=1000']);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!r.stdout.includes('@boot'));
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const text = require('fs').readFileSync(file, 'utf8') as string;
    require('fs').unlinkSync(file);
    assert.match(text, /@boot cpus=1/);
    assert.match(text, /@done ok/);
  });
});
