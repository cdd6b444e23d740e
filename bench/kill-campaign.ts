/**
 * bench/kill-campaign: issue 14's "done when": SIGKILL the VM's components by pid, round-robin
 * over the roles (supervisor, vmm, keeper, driver-domain, priv-domain), under the verifying
 * blk-loop workload on a disk, and require after every kill that the VM is whole again (every
 * component running, the killed one under a new pid, `tsvmm ps` and `tsvmm ls` answering, the
 * guest making progress); at the end `tsvmm stop` leaves no process and no runtime dir, the guest
 * reported 0 errors and the image checks clean.
 *
 *   npx tsc -p . && node scripts/bundle.js && node dist/bench/kill-campaign.js [--kills 200] [--roles supervisor,vmm,...] [--standby]
 */
import * as fs from 'fs';
import { parseArgs } from 'util';
import { guestLines } from '../test/helpers/tsvmm';
import { sleep, startVm } from '../test/helpers/control-plane';
import { checkImage } from '../test/helpers/blk-image';
import { killRole, KillResult, Role, ROLES, stopAndCheckClean } from '../test/helpers/role-kill';
import { percentile } from '../test/helpers/kill-harness';

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { kills: { type: 'string' }, roles: { type: 'string' }, standby: { type: 'boolean' } } });
  const kills = Number(values.kills ?? 200);
  const roles = (values.roles ? values.roles.split(',') : [...ROLES]) as Role[];
  for (const r of roles) if (!ROLES.includes(r)) { process.stderr.write(`unknown role ${r} (${ROLES.join(', ')})\n`); return 2; }
  const vm = await startVm({ name: `campaign${process.pid}`, extra: values.standby ? ['--standby'] : [] });
  const t0 = Date.now();
  const results: KillResult[] = [];
  let failure = '';
  try {
    while (vm.progress() < 2) await sleep(50);
    for (let k = 0; k < kills; k++) {
      const role = roles[k % roles.length];
      const r = await killRole(vm, role, ROLES.filter((x) => roles.includes(x) || x !== 'keeper'));
      results.push(r);
      process.stdout.write(`kill ${k + 1}/${kills}: ${role} pid ${r.pid} -> ${r.newPid}, whole again in ${r.ms.toFixed(0)} ms\n`);
      await sleep(50 + Math.random() * 250);
    }
  } catch (e) {
    failure = (e as Error).message;
  }
  const clean = await stopAndCheckClean(vm);
  const lines = guestLines(vm.out());
  const guestErrors = lines.filter((l) => l.word === 'error' || l.word === 'blk-error').length;
  const last = lines.filter((l) => l.word === 'blk-progress').pop();
  const image = checkImage(`${vm.dir}/${vm.name}.img`, { bs: 4096, count: 2000 });
  process.stdout.write(`\n${results.length} kills in ${((Date.now() - t0) / 1000).toFixed(0)} s${failure ? `; FAILED: ${failure}` : ''}\n`);
  process.stdout.write('| role | kills | kill -> whole again p50 (ms) | p99 | max |\n|---|---|---|---|---|\n');
  for (const role of roles) {
    const ms = results.filter((r) => r.role === role).map((r) => r.ms);
    process.stdout.write(`| ${role} | ${ms.length} | ${percentile(ms, 50).toFixed(0)} | ${percentile(ms, 99).toFixed(0)} | ${Math.max(...ms).toFixed(0)} |\n`);
  }
  process.stdout.write(`guest errors ${guestErrors}, last progress errors=${last?.fields.errors}, image errors ${image.errorCount} (${image.valid} valid blocks), ` +
    `stop exit ${clean.stop.status}, processes left ${clean.leftovers.length}, runtime dir left ${clean.runDirLeft}\n`);
  const ok = !failure && guestErrors === 0 && last?.fields.errors === '0' && image.errorCount === 0 && clean.stop.status === 0 && !clean.leftovers.length && !clean.runDirLeft;
  if (!ok) fs.writeFileSync(`/tmp/kill-campaign-${process.pid}.stderr`, vm.err());
  else fs.rmSync(vm.dir, { recursive: true, force: true });
  process.stdout.write(ok ? 'PASS\n' : `FAIL (VM stderr in /tmp/kill-campaign-${process.pid}.stderr)\n`);
  return ok ? 0 : 1;
}

main().then((c) => process.exit(c), (e: Error) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
