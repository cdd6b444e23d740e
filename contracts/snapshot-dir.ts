/**
 * A VM snapshot on disk (`tsvmm snapshot --out DIR`, `tsvmm run --restore DIR`):
 *
 *   DIR/vm.state       the keeper's snapshot memfd (native/kvm/keeper.h layout), state SAVED: every
 *                      vCPU's and the VM's KVM state, saved by the keeper's own code while the vCPUs
 *                      were parked (keeper.snapshotSaveLive), and the vCPUs' exit journals
 *   DIR/pages.state    the state memfd: platform page (UART), device state page (virtio registers,
 *                      queue progress with the requests in flight), control page
 *   DIR/ram            guest RAM's populated extents back to back (SEEK_DATA/SEEK_HOLE on the RAM
 *                      memfd: pages the guest never touched are not written)
 *   DIR/manifest.json  SnapshotManifest (proto/tsvmm.proto): format version, the keeper layout
 *                      version, the VM's configuration, RAM's extents, each file's size and CRC-32C.
 *                      Written last: a directory without it is not a snapshot.
 *
 * Restoring is a cold vmm restore (vmm/main.ts, mode `restore`) from memfds filled from DIR: the same
 * claim, the same native restore (checksum, vCPU and VM state, irqfds), the same replay; the
 * driver-domain attaches to the restored device page as after a crash and resubmits what was in flight.
 */
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../native/kvm';
import { SnapshotFile, SnapshotManifest, SnapshotManifestJson, VmConfig } from '../proto';
import { SNAP, SnapshotError, SnapshotView, snapshotSize } from './snapshot';
import { STATE_MEMFD_SIZE } from './fds';

export const SNAPSHOT_FORMAT = 'tsvmm-snapshot';
/** The directory layout and manifest; a build refuses a snapshot of another version in one line. */
export const SNAPSHOT_FORMAT_VERSION = 1;
export const SNAPSHOT_FILES = { manifest: 'manifest.json', vm: 'vm.state', pages: 'pages.state', ram: 'ram' } as const;

/** Writes in chunks this big (a single write() stops at 2 GiB). */
const CHUNK = 64 << 20;

/** The populated extents of an fd (a memfd, a sparse file), as [offset, length] pairs. */
export function dataExtents(fd: number, size: number): number[] {
  const out: number[] = [];
  for (let off = 0; off < size;) {
    const data = native.seekData(fd, off, false);
    if (data < 0 || data >= size) break;
    const hole = Math.min(native.seekData(fd, data, true), size);
    out.push(data, hole - data);
    off = hole;
  }
  return out;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.byteLength;) at += fs.writeSync(fd, bytes, at, Math.min(CHUNK, bytes.byteLength - at));
}

function create(dir: string, name: string): number {
  return fs.openSync(path.join(dir, name), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
}

/** A snapshot captured in memory (captureSnapshot), to be written (writeSnapshotFiles). */
export interface CapturedSnapshot {
  image: Uint8Array; pages: Uint8Array; ram: Uint8Array[]; extents: number[]; ramBytes: number;
  /** `ram` is a private copy: the guest may run on before it is written. */
  copied: boolean;
}

/**
 * Above this much populated guest RAM a snapshot is written straight from guest memory while the
 * vCPUs stay parked, instead of copied first (the copy doubles that much memory for a moment).
 */
export const CAPTURE_COPY_MAX = 1 << 30;

/**
 * Memory for a snapshot's copy of guest RAM, made ready while the guest still runs
 * (prepareCapture): the guest's pause is then a plain memcpy, without the page faults that cost
 * most of it (one per 4 KiB page on both sides, ~16k each for 64 MiB, and far dearer on a nested
 * host than the copy itself).
 */
export interface PreparedCapture {
  /** Guest RAM, mapped read-only, its populated pages already mapped (MADV_POPULATE_READ). */
  ram: ArrayBuffer;
  /** Private memory for the copy, faulted in (MADV_POPULATE_WRITE): RAM populated now plus some room. */
  copy: ArrayBuffer;
}

/** Room in the prepared copy for RAM the guest populates between the preparation and the pause. */
const CAPTURE_SLACK = (bytes: number) => Math.ceil((bytes / 8 + (4 << 20)) / 4096) * 4096;

/**
 * The vmm, before it parks the vCPUs for a snapshot that resumes the VM: maps guest RAM with its
 * populated pages (SEEK_DATA/SEEK_HOLE) faulted in, and allocates and faults in the memory the copy
 * goes into. Undefined when the copy would not be made (more than CAPTURE_COPY_MAX populated).
 */
export function prepareCapture(ramFd: number, memBytes: number): PreparedCapture | undefined {
  const extents = dataExtents(ramFd, memBytes);
  let total = 0;
  for (let i = 1; i < extents.length; i += 2) total += extents[i];
  if (total > CAPTURE_COPY_MAX) return undefined;
  const ram = native.mmap(ramFd, memBytes, 0, false);
  // Advice: where the kernel lacks MADV_POPULATE_* (before 5.14) the copy faults as before.
  for (let i = 0; i < extents.length; i += 2) native.madvisePopulate(new Uint8Array(ram, extents[i], extents[i + 1]), false);
  const copy = native.mmapAnon(total + CAPTURE_SLACK(total));
  native.madvisePopulate(new Uint8Array(copy), true);
  return { ram, copy };
}

/**
 * The vmm, with its vCPUs parked and the driver-domain stopped: copies the state pages and guest
 * RAM's populated extents (SEEK_DATA/SEEK_HOLE on the RAM memfd) into private memory, so the
 * guest runs again before anything is written to disk (a memcpy, not a write, is the pause): into
 * `prepared` memory when it has room (no page faults), else into memory allocated now. With
 * `copy` false (a large guest, or a VM that stops anyway) `ram` views guest memory itself and must
 * be written before the vCPUs run again.
 */
export function captureSnapshot(image: ArrayBuffer, stateFd: number, ramFd: number, memBytes: number, copy: boolean, prepared?: PreparedCapture): CapturedSnapshot {
  const pages = new Uint8Array(STATE_MEMFD_SIZE);
  fs.readSync(stateFd, pages, 0, pages.byteLength, 0);
  const extents = dataExtents(ramFd, memBytes);
  const mapped = prepared?.ram ?? native.mmap(ramFd, memBytes, 0, false);
  let total = 0;
  for (let i = 1; i < extents.length; i += 2) total += extents[i];
  const views = [];
  for (let i = 0; i < extents.length; i += 2) views.push(new Uint8Array(mapped, extents[i], extents[i + 1]));
  if (!copy || total > CAPTURE_COPY_MAX) return { image: new Uint8Array(image), pages, ram: views, extents, ramBytes: total, copied: false };
  // Every byte is copied over: no zero-fill first.
  const buf = prepared && prepared.copy.byteLength >= total ? new Uint8Array(prepared.copy, 0, total) : Buffer.allocUnsafeSlow(total);
  let at = 0;
  for (const v of views) { buf.set(v, at); at += v.byteLength; }
  return { image: new Uint8Array(image), pages, ram: [buf], extents, ramBytes: total, copied: true };
}

/** Writes a captured snapshot's vm.state, pages.state and ram into `dir` (which the supervisor created). */
export function writeSnapshotFiles(dir: string, c: CapturedSnapshot): void {
  const write = (name: string, parts: Uint8Array[]) => {
    const fd = create(dir, name);
    try { for (const p of parts) writeAll(fd, p); } finally { fs.closeSync(fd); }
  };
  write(SNAPSHOT_FILES.vm, [c.image]);
  write(SNAPSHOT_FILES.pages, [c.pages]);
  write(SNAPSHOT_FILES.ram, c.ram);
}

/** CRC-32C and size of a file, read in chunks. */
function fileCrc(file: string): { size: number; crc: number } {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    let crc = 0;
    let size = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, CHUNK, null);
      if (n <= 0) break;
      crc = native.crc32c(buf.subarray(0, n), crc);
      size += n;
    }
    return { size, crc };
  } finally { fs.closeSync(fd); }
}

/**
 * The supervisor, once the guest runs again: checksums the files (read back, so a short write is
 * caught now) and writes manifest.json last, atomically.
 */
export function sealSnapshot(dir: string, config: VmConfig, ramExtents: number[], pauseMs: number): SnapshotManifest {
  const files: SnapshotFile[] = [SNAPSHOT_FILES.vm, SNAPSHOT_FILES.pages, SNAPSHOT_FILES.ram].map((name) => {
    const { size, crc } = fileCrc(path.join(dir, name));
    return { name, size, crc32c: crc, dataBytes: size };
  });
  const m: SnapshotManifest = {
    format: SNAPSHOT_FORMAT, version: SNAPSHOT_FORMAT_VERSION, snapLayoutVersion: SNAP.VERSION, config, files,
    createdAt: Date.now() / 1000, pauseMs, ramExtents,
  };
  const tmp = path.join(dir, `.${SNAPSHOT_FILES.manifest}.tmp`);
  fs.writeFileSync(tmp, SnapshotManifestJson.stringify(m), { mode: 0o600 });
  fs.renameSync(tmp, path.join(dir, SNAPSHOT_FILES.manifest));
  return m;
}

/**
 * Reads DIR's manifest and checks everything that does not need the bulk of the data: format and
 * versions, the files' sizes, vm.state's header (magic, layout, vCPU count against the manifest's).
 * Every refusal is a SnapshotError with one line.
 */
export function readSnapshotManifest(dir: string): SnapshotManifest {
  const where = `snapshot ${dir}`;
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, SNAPSHOT_FILES.manifest), 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SnapshotError(code === 'ENOENT' ? `${where} has no ${SNAPSHOT_FILES.manifest}: not a tsvmm snapshot (or an unfinished one)` : `cannot read ${where}: ${code ?? (e as Error).message}`);
  }
  let m: SnapshotManifest;
  try { m = SnapshotManifestJson.parse(text); } catch (e) { throw new SnapshotError(`${where}: ${SNAPSHOT_FILES.manifest} is malformed (${(e as Error).message})`); }
  if (m.format !== SNAPSHOT_FORMAT) throw new SnapshotError(`${where} is not a tsvmm snapshot (format "${m.format}")`);
  if (m.version !== SNAPSHOT_FORMAT_VERSION) throw new SnapshotError(`${where} has format version ${m.version}; this tsvmm reads version ${SNAPSHOT_FORMAT_VERSION}`);
  if (m.snapLayoutVersion !== SNAP.VERSION) throw new SnapshotError(`${where} saved the VM state in layout version ${m.snapLayoutVersion}; this tsvmm reads version ${SNAP.VERSION}`);
  const cpus = m.config?.cpus ?? 0;
  if (cpus < 1 || cpus > SNAP.MAX_VCPUS) throw new SnapshotError(`${where}: its manifest has ${cpus} vCPUs`);
  const extents = m.ramExtents ?? [];
  let ramBytes = 0;
  for (let i = 0; i < extents.length; i += 2) {
    if (extents[i] % 4096 || extents[i] + extents[i + 1] > m.config.memBytes || (i && extents[i] < extents[i - 2] + extents[i - 1])) {
      throw new SnapshotError(`${where}: its RAM extents do not fit ${m.config.memBytes} bytes of guest RAM`);
    }
    ramBytes += extents[i + 1];
  }
  const want: Record<string, number> = { [SNAPSHOT_FILES.vm]: snapshotSize(cpus), [SNAPSHOT_FILES.pages]: STATE_MEMFD_SIZE, [SNAPSHOT_FILES.ram]: ramBytes };
  for (const [name, size] of Object.entries(want)) {
    const f = m.files.find((x) => x.name === name);
    if (!f) throw new SnapshotError(`${where}: its manifest does not list ${name}`);
    if (f.size !== size) throw new SnapshotError(`${where}: ${name} is listed as ${f.size} bytes; a ${cpus}-vCPU snapshot's is ${size}`);
    let st: fs.Stats;
    try { st = fs.statSync(path.join(dir, name)); } catch { throw new SnapshotError(`${where}: ${name} is missing`); }
    if (st.size !== f.size) throw new SnapshotError(`${where}: ${name} is ${st.size} bytes, its manifest says ${f.size} (truncated or replaced)`);
  }
  return m;
}

/** Reads `file` into `view` from `pos`, continuing `crc`. */
function readInto(fd: number, view: Uint8Array, pos: number, crc: number): number {
  for (let at = 0; at < view.byteLength;) {
    const n = fs.readSync(fd, view, at, Math.min(CHUNK, view.byteLength - at), pos + at);
    if (n <= 0) throw new SnapshotError('snapshot file ended early');
    at += n;
  }
  return native.crc32c(view, crc);
}

const crcOf = (m: SnapshotManifest, name: string) => m.files.find((f) => f.name === name)!.crc32c;
function checkCrc(dir: string, m: SnapshotManifest, name: string, got: number): void {
  const want = crcOf(m, name);
  if (got !== want) throw new SnapshotError(`snapshot ${dir}: ${name} fails its CRC (manifest 0x${want.toString(16)}, file 0x${got.toString(16)}): refusing a corrupt snapshot`);
}

/**
 * The supervisor of `tsvmm run --restore`, first (before any component starts): reads and checks
 * vm.state (its CRC, layout, vCPU count, state SAVED) and fills the state memfd from pages.state
 * (its CRC). Returns the saved VM state, which publishSnapshot() hands the vmm once RAM is in.
 * Refuses (SnapshotError, one line) anything that does not check.
 */
export function loadSnapshotPages(dir: string, m: SnapshotManifest, stateFd: number): Uint8Array {
  const open = (name: string) => fs.openSync(path.join(dir, name), 'r');
  const cpus = m.config.cpus;
  let fd = open(SNAPSHOT_FILES.vm);
  const image = new Uint8Array(snapshotSize(cpus));
  try { checkCrc(dir, m, SNAPSHOT_FILES.vm, readInto(fd, image, 0, 0)); } finally { fs.closeSync(fd); }
  const view = new SnapshotView(image.buffer);
  try {
    view.checkLayout(cpus);
  } catch (e) {
    throw new SnapshotError(`snapshot ${dir}: ${(e as Error).message}`);
  }
  if (view.stateName !== 'saved') throw new SnapshotError(`snapshot ${dir}: vm.state is in state ${view.stateName}, not a saved snapshot`);

  fd = open(SNAPSHOT_FILES.pages);
  const pages = new Uint8Array(native.mmap(stateFd, STATE_MEMFD_SIZE, 0, true));
  try { checkCrc(dir, m, SNAPSHOT_FILES.pages, readInto(fd, pages, 0, 0)); } finally { fs.closeSync(fd); }
  return image;
}

/** The chunk guest RAM is read in through: small enough to stay in the CPU's cache between the read, the CRC and the write. */
const RAM_CHUNK = 1 << 20;

/**
 * Then, while the vmm starts (it waits for the snapshot memfd to say SAVED): fills the guest-RAM
 * memfd from ram, checking its CRC. Read, checksummed and written (pwrite) a cache-sized chunk at a
 * time: the memfd's pages are allocated by the write without being zeroed first, and nothing
 * faults them in one by one (as a read into a mapping of the memfd would).
 */
export function loadSnapshotRam(dir: string, m: SnapshotManifest, ramFd: number): void {
  const fd = fs.openSync(path.join(dir, SNAPSHOT_FILES.ram), 'r');
  try {
    const buf = Buffer.allocUnsafe(RAM_CHUNK);
    let crc = 0;
    for (let i = 0, pos = 0; i < m.ramExtents.length; i += 2) {
      for (let done = 0; done < m.ramExtents[i + 1];) {
        const n = Math.min(RAM_CHUNK, m.ramExtents[i + 1] - done);
        const chunk = buf.subarray(0, n);
        crc = readInto(fd, chunk, pos, crc);
        for (let at = 0; at < n;) at += fs.writeSync(ramFd, chunk, at, n - at, m.ramExtents[i] + done + at);
        done += n;
        pos += n;
      }
    }
    checkCrc(dir, m, SNAPSHOT_FILES.ram, crc);
  } finally { fs.closeSync(fd); }
}

/**
 * Last: the saved VM state into the snapshot memfd (marked loading, SnapshotView.markLoading),
 * written with state SAVING and then made SAVED at once, so the waiting vmm never claims a
 * half-written one.
 */
export function publishSnapshot(image: Uint8Array, snapFd: number, cpus: number): void {
  const copy = image.slice();
  const view = new SnapshotView(copy.buffer);
  view.markLoading();
  fs.writeSync(snapFd, copy, 0, copy.byteLength, 0);
  SnapshotView.map(snapFd, cpus).publishSaved();
}
