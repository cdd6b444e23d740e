import '../contracts/process';
/**
 * A new supervisor for a VM whose supervisor died: started by a surviving component
 * (recovery/orphan.ts) as `node adopt-main.js NAME`, detached from the terminal. It adopts the
 * running components (recovery/adopt.ts) and supervises them until the VM ends. Its log lines go
 * where the components' stderr goes (the terminal or file `tsvmm run` wrote to); a closed one is
 * ignored.
 */
import { adopt } from './adopt';
import { quietStdio } from './quiet-stdio';

const log = quietStdio();
const name = process.argv[2];
if (!name) {
  log('this process is started by a component whose supervisor died, not by hand');
  process.exit(2);
}
adopt(name, log).then((r) => {
  log(r.code === 0 ? r.reason : `error: ${r.reason}`);
  process.exit(r.code);
}, (e: Error) => {
  log(`error: adopting VM ${name} failed: ${e.message}`);
  process.exit(1);
});
