/**
 * A UDP echo client: sends `count` numbered datagrams (paced) to HOST:PORT,
 * and counts replies that are lost, duplicated or corrupted. Prints one JSON
 * line. Run inside the test's network namespace:
 *   node udp-client.js HOST PORT COUNT [intervalMs]
 */
import * as dgram from 'dgram';
import * as crypto from 'crypto';

function payload(seq: number): Buffer {
  const len = 16 + (seq % 200);
  const b = Buffer.alloc(len);
  b.writeUInt32LE(seq, 0);
  b.writeUInt32LE(len, 4);
  crypto.createHash('sha256').update(`tsvmm-${seq}`).digest().copy(b, 8, 0, Math.min(32, len - 8));
  for (let i = 40; i < len; i++) b[i] = (seq * 31 + i) & 0xff;
  return b;
}

async function main(): Promise<void> {
  const [host, portText, countText, intervalText] = process.argv.slice(2);
  const port = Number(portText);
  const count = Number(countText);
  const interval = Number(intervalText ?? 2);
  const sock = dgram.createSocket('udp4');
  const seen = new Map<number, number>();
  let corrupt = 0;
  sock.on('message', (msg) => {
    const seq = msg.length >= 8 ? msg.readUInt32LE(0) : -1;
    if (seq < 0 || seq >= count || !msg.equals(payload(seq))) { corrupt++; return; }
    seen.set(seq, (seen.get(seq) ?? 0) + 1);
  });
  await new Promise<void>((r) => sock.bind(0, r));
  for (let seq = 0; seq < count; seq++) {
    sock.send(payload(seq), port, host);
    if (interval > 0) await new Promise((r) => setTimeout(r, interval));
  }
  await new Promise((r) => setTimeout(r, 1000));
  sock.close();
  let dup = 0;
  for (const n of seen.values()) if (n > 1) dup += n - 1;
  process.stdout.write(JSON.stringify({ sent: count, received: seen.size, lost: count - seen.size, dup, corrupt }) + '\n');
}

void main();
