import '../contracts/process';
/**
 * A new supervisor for a VM whose supervisor died: started by the VM's guardian
 * (supervisor/guardian-main.ts) as `node adopt-main.js NAME`. It adopts the running components
 * (supervisor/adopt.ts) and supervises them until the VM ends. Its log lines go
 * where the components' stderr goes (the terminal or file `tsvmm run` wrote to); a closed one is
 * ignored.
 */
import { adopt } from './adopt';
import { quietStdio } from './quiet-stdio';
import { Logger, logSettings } from '../contracts/log';

// The level and format `tsvmm run` chose come with the environment the component passed on.
const logger = quietStdio(new Logger({ component: 'supervisor', ...logSettings() }));
const log = (line: string) => logger.info(line);
const name = process.argv[2];
if (!name) {
  log('this process is started by the guardian of a VM whose supervisor died, not by hand');
  process.exit(2);
}
adopt(name, logger).then((r) => {
  if (r.code === 0) logger.info(r.reason, { event: 'exit', code: r.code });
  else logger.error(`error: ${r.reason}`, { event: 'exit', code: r.code });
  process.exit(r.code);
}, (e: Error) => {
  logger.error(`error: adopting VM ${name} failed: ${e.message}`);
  process.exit(1);
});
