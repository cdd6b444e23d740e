/**
 * A continuous UDP echo check for bench/campaign's net sessions: sends a numbered, self-checking
 * datagram to HOST:PORT every INTERVAL ms and prints, once a second, what came back:
 *   @echo sent=N got=M bad=K last=SEQ
 * (bad: a reply that is not a copy of a datagram we sent). Runs inside the session's network
 * namespace until killed: `node echo-probe.js HOST PORT [INTERVAL_MS]`.
 */
import * as dgram from 'dgram';

function payload(seq: number): Buffer {
  const b = Buffer.alloc(24 + (seq % 64));
  b.writeUInt32LE(seq, 0);
  b.writeUInt32LE(b.length, 4);
  for (let i = 8; i < b.length; i++) b[i] = (seq * 131 + i * 7) & 0xff;
  return b;
}

const [host, port, interval] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4] ?? 5)];
if (!host || !port) { process.stderr.write('usage: node echo-probe.js HOST PORT [INTERVAL_MS]\n'); process.exit(2); }
const sock = dgram.createSocket('udp4');
let sent = 0;
let got = 0;
let bad = 0;
let last = -1;
sock.on('message', (m) => {
  const seq = m.length >= 8 ? m.readUInt32LE(0) : -1;
  if (seq < 0 || seq >= sent || !m.equals(payload(seq))) { bad++; return; }
  got++;
  last = Math.max(last, seq);
});
sock.on('error', () => { /* no route while the TAP is gone: counted as not echoed */ });
sock.bind(0, () => {
  setInterval(() => { sock.send(payload(sent), port, host, () => undefined); sent++; }, interval);
  setInterval(() => process.stdout.write(`@echo sent=${sent} got=${got} bad=${bad} last=${last}\n`), 1000);
});
process.on('SIGTERM', () => process.exit(0));
