/**
 * Block storage behind virtio-blk: an async, scatter-gather interface so
 * several requests can be in flight at once, and a file-descriptor
 * implementation that reads and writes straight into the guest-memory views
 * it is given (fs.readv / fs.writev: no bounce buffer) and flushes with
 * fdatasync.
 *
 * Node runs these on the libuv thread pool (UV_THREADPOOL_SIZE threads, 4 by
 * default): the driver-domain should raise it to the queue depth it wants to
 * overlap.
 */

import * as fs from 'fs';
import { iovLength, iovSlice } from './iov';

export interface BlockBackend {
  /** Size in bytes (the device exposes floor(size / 512) sectors). */
  readonly size: number;
  readonly readOnly: boolean;
  /** Serial number for VIRTIO_BLK_T_GET_ID (at most 20 bytes are used). */
  readonly id: string;
  /** Fill `buffers` from byte `offset`; resolves with the bytes read (all of them, or rejects). */
  read(buffers: Uint8Array[], offset: number): Promise<number>;
  /** Write `buffers` at byte `offset`; resolves with the bytes written (all of them, or rejects). */
  write(buffers: Uint8Array[], offset: number): Promise<number>;
  /** Make completed writes durable. */
  flush(): Promise<void>;
}

type VecOp = (fd: number, bufs: Uint8Array[], pos: number, cb: (err: NodeJS.ErrnoException | null, n: number) => void) => void;

/** A raw image file behind an open fd. The fd is not closed by this class unless `close()` is called. */
export class FileBlockBackend implements BlockBackend {
  constructor(readonly fd: number, readonly size: number, readonly readOnly: boolean, readonly id: string) {}

  /** Open `path` (O_RDWR, or O_RDONLY when `readOnly`) and take its size. */
  static open(path: string, opts: { readOnly?: boolean; id?: string } = {}): FileBlockBackend {
    const ro = opts.readOnly ?? false;
    const fd = fs.openSync(path, ro ? 'r' : 'r+');
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${path} is not a regular file or block device`);
      return new FileBlockBackend(fd, st.size, ro, opts.id ?? `tsvmm-${st.ino}`);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  read(buffers: Uint8Array[], offset: number): Promise<number> {
    return this.vec(fs.readv as unknown as VecOp, buffers, offset);
  }

  write(buffers: Uint8Array[], offset: number): Promise<number> {
    if (this.readOnly) return Promise.reject(new Error('read-only disk'));
    return this.vec(fs.writev as unknown as VecOp, buffers, offset);
  }

  flush(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Run a vectored op until every byte is transferred (short transfers continue; 0 bytes is EOF: an error). */
  private vec(op: VecOp, buffers: Uint8Array[], offset: number): Promise<number> {
    const total = iovLength(buffers);
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        if (done === total) return resolve(total);
        const rest = done === 0 ? buffers.filter((b) => b.length > 0) : iovSlice(buffers, done);
        op(this.fd, rest, offset + done, (err, n) => {
          if (err) return reject(err);
          if (n === 0) return reject(new Error(`unexpected end of disk at byte ${offset + done}`));
          done += n;
          step();
        });
      };
      step();
    });
  }
}
