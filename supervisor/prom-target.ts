/**
 * <runtime>/prometheus/<name>.json: the VM's metrics endpoint as a Prometheus file_sd target, so
 * one scrape job (file_sd_configs: files: [<runtime>/prometheus/*.json]) finds every VM on the
 * host. The supervisor writes it, not the priv-domain: a confined priv-domain runs as another uid
 * in a read-only view of the file system (contracts/confinement.ts) and could not. Written
 * atomically (rename) each time a priv-domain is ready; removed when the VM stops
 * (supervisor/control.ts) or when the endpoint is off.
 */
import * as fs from 'fs';
import * as path from 'path';
import { mkdirPrivate } from '../contracts/paths';

/** Writes (addr is "host:port") or removes (addr '' or 'none') the target file; false with the reason when it cannot. */
export function writePromTarget(file: string, addr: string, name: string): string | undefined {
  try {
    if (!addr || addr === 'none') { fs.rmSync(file, { force: true }); return undefined; }
    mkdirPrivate(path.dirname(file));
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify([{ targets: [addr], labels: { tsvmm_vm: name } }], null, 1) + '\n', { mode: 0o644 });
    fs.renameSync(tmp, file);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  }
}

/** The address in a target file an earlier supervisor of this VM wrote (an adopted VM's), if any. */
export function readPromTarget(file: string): string | undefined {
  try {
    const t = (JSON.parse(fs.readFileSync(file, 'utf8')) as { targets: string[] }[])[0].targets[0];
    return typeof t === 'string' ? t : undefined;
  } catch {
    return undefined;
  }
}
