/**
 * Runs INSIDE the emulated hardware-KVM host (emulated-host/host.ts), driven by bench/linux-service.ts:
 * the seed's own measure, "applications continue to correctly provide services", on a Linux guest.
 *
 * The Debian guest of `tsvmm image linux` (2 vCPUs, --standby, its ext4 root disk and a TAP) serves:
 *   - HTTP (busybox httpd) from its virtio disk: 8 files of 64 KiB (GET, sha256 checked against the
 *     client's copy; the guest drops its page cache every 2 s, so reads go to the disk), and a CGI that
 *     stores a POSTed body on the disk and syncs it before it answers with the body's md5 (an
 *     acknowledged write), each read back later by GET and compared;
 *   - a TCP echo (busybox `nc -ll -e cat`): one long-lived connection, a numbered line every 250 ms,
 *     every byte checked, in order, exactly once;
 *   - a UDP echo (bench/linux-service/udpecho.c, fetched onto its disk): a numbered datagram every
 *     100 ms, each reply checked against what was sent under that number (loss is UDP's; a wrong or
 *     unknown reply is not).
 * The client here (in L1, outside the VM) checks every response while faults are injected into the
 * vmm, the driver-domain, the priv-domain and the keeper (cli/inject.ts). A run counts as recovered
 * only if the fault was detected, no response was ever wrong, and every service answered correctly
 * again within the window (and the API answered); silent: something was wrong and no detector fired.
 *
 *   node dist/bench/emulated/linux-service.js --seed S --first N --minutes M [--components a,b] [--kinds a,b] [--window-s W]
 *
 * Prints `@svc-run {json}` per injection (a bench/campaign RunRecord, workload "linux-service"),
 * `@svc-note text` and, at the end, `@svc-end {json}` (the guest's kernel log judged, counts).
 */
import * as crypto from 'crypto';
import * as dgram from 'dgram';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { parseArgs } from 'util';
import { alive, freshDisk, GUEST_CMDLINE, GUEST_IP, HOST_IP, judge, setupTap, STEP_MS, TAP, Vm } from '../../test/emulated/linux-checks';
import { inject, InjectComponent, InjectKind, pidsFrom, Rng } from '../../cli/inject';
import { request } from '../../cli/verbs';
import { vmPaths } from '../../contracts/paths';
import { BENIGN, classify, DETECTOR, RunRecord } from '../campaign';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** No run starts with less than this left before the deadline. */
const MIN_RUN_MS = 60_000;
/** How long a run waits at most for the VM to settle (every component and standby there, the services answering). */
const SETTLE_MAX_MS = 240_000;

/** The components and, per component, the kinds (fail-stop first: the baseline), visited round-robin. */
export const SERVICE_KINDS: Record<string, InjectKind[]> = {
  vmm: ['SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP', 'reg', 'mem'],
  'driver-domain': ['SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP', 'reg', 'mem'],
  'priv-domain': ['SIGKILL', 'SIGSEGV', 'SIGABRT', 'SIGSTOP', 'reg', 'mem'],
  keeper: ['SIGKILL', 'reg'],
};

/** Run `i`: the component round-robin, then that component's kinds round-robin (filtered). */
export function servicePlan(i: number, comps: string[], kinds?: InjectKind[]): { component: InjectComponent; kind: InjectKind } {
  const component = comps[i % comps.length] as InjectComponent;
  const ks = SERVICE_KINDS[component].filter((k) => !kinds || kinds.includes(k));
  return { component, kind: ks[Math.floor(i / comps.length) % ks.length] };
}

const HTTP_PORT = 80;
const ECHO_PORT = 7;
const SETUP_PORT = 8080;
const FILES = 8;
const FILE_BYTES = 64 * 1024;
const UPLOAD_BYTES = 16 * 1024;
/** A service counts as answering when it answered correctly within this long. */
const FRESH_MS = 4000;

/** The CGI that stores an upload on the guest's disk (synced) before it acknowledges it with its md5. */
const PUT_CGI = `#!/bin/sh
# bench/linux-service: stores the POSTed body as /mnt/www/u/N (?n=N) and syncs it before it answers.
n="\${QUERY_STRING#n=}"
case "$n" in ''|*[!0-9]*) printf 'Status: 400 Bad Request\\r\\nContent-Type: text/plain\\r\\n\\r\\nbad n\\n'; exit 0;; esac
f=/mnt/www/u/$n
head -c "\${CONTENT_LENGTH:-0}" >"$f.tmp" && sync && mv "$f.tmp" "$f" && sync || { printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nwrite failed\\n'; exit 0; }
printf 'Content-Type: text/plain\\r\\n\\r\\nok %s %s\\n' "$n" "$(md5sum <"$f" | cut -d' ' -f1)"
`;

type Svc = 'http' | 'tcp' | 'udp';
const SVCS: Svc[] = ['http', 'tcp', 'udp'];
const md5 = (b: Buffer) => crypto.createHash('md5').update(b).digest('hex');
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** The client: drives the three services and checks every answer. */
export class Client {
  readonly files: Buffer[];
  /** Correct answers, per service (times). */
  readonly ok: Record<Svc, number[]> = { http: [], tcp: [], udp: [] };
  /** Wrong answers (the guest said something false): each a symptom. */
  readonly wrong: { at: number; what: string }[] = [];
  /** A broken TCP echo connection (reset or closed by the guest): a symptom. */
  readonly broken: { at: number; what: string }[] = [];
  readonly counts = { httpGet: 0, httpPut: 0, httpReadBack: 0, httpFailed: 0, tcpLines: 0, udpSent: 0, udpGot: 0, udpDup: 0 };
  private readonly acked = new Map<number, Buffer>();
  private upSeq = 0;
  private stopped = false;
  private readonly rng: Rng;
  private tcp?: net.Socket;
  private tcpSeq = 0;
  private tcpExpect = '';
  private tcpBuf = '';
  private readonly udp = dgram.createSocket('udp4');
  private udpSeq = 0;
  private readonly udpSeen = new Set<number>();

  constructor(seed: number) {
    this.rng = new Rng(BigInt(seed) * 7919n + 17n);
    this.files = Array.from({ length: FILES }, (_, k) => this.bytes(FILE_BYTES, `file ${seed}/${k}`));
    this.udp.on('message', (m) => this.udpReply(m));
    this.udp.on('error', () => undefined);
  }

  /** Deterministic bytes (counter-mode sha256 of a label). */
  bytes(n: number, label: string): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i * 32 < n; i++) crypto.createHash('sha256').update(`${label}:${i}`).digest().copy(out, i * 32);
    return out;
  }

  private good(s: Svc): void { const a = this.ok[s]; a.push(Date.now()); if (a.length > 5000) a.splice(0, 2500); }
  private bad(what: string): void { this.wrong.push({ at: Date.now(), what }); process.stdout.write(`@svc-note WRONG ${what}\n`); }
  lastOk(s: Svc): number { const a = this.ok[s]; return a.length ? a[a.length - 1] : 0; }
  answering(since = 0): boolean { return SVCS.every((s) => this.lastOk(s) > Math.max(since, Date.now() - FRESH_MS)); }

  private httpReq(method: string, p: string, body?: Buffer): Promise<{ status: number; body: Buffer } | undefined> {
    return new Promise((resolve) => {
      const req = http.request({ host: GUEST_IP, port: HTTP_PORT, method, path: p, agent: false, timeout: 20_000, headers: body ? { 'content-length': String(body.length), 'content-type': 'application/octet-stream' } : {} }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
        res.on('error', () => resolve(undefined));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', () => resolve(undefined));
      req.end(body);
    });
  }

  /** One HTTP operation of the cycle: a file, an upload, a read-back of an acknowledged upload. */
  private async httpOp(i: number): Promise<void> {
    const op = i % 3 === 2 && this.acked.size === 0 ? 1 : i % 3;
    if (op === 0) {
      const k = this.rng.int(FILES);
      const r = await this.httpReq('GET', `/f/${k}`);
      if (!r) { this.counts.httpFailed++; return; }
      this.counts.httpGet++;
      if (r.status !== 200) this.bad(`GET /f/${k}: status ${r.status}`);
      else if (sha(r.body) !== sha(this.files[k])) this.bad(`GET /f/${k}: ${r.body.length} bytes, sha256 ${sha(r.body).slice(0, 16)} != ${sha(this.files[k]).slice(0, 16)}`);
      else this.good('http');
    } else if (op === 1) {
      const n = ++this.upSeq;
      const body = this.bytes(UPLOAD_BYTES, `up/${n}/${this.rng.next()}`);
      const r = await this.httpReq('POST', `/cgi-bin/put?n=${n}`, body);
      if (!r) { this.counts.httpFailed++; return; }
      this.counts.httpPut++;
      const m = /^ok (\d+) ([0-9a-f]{32})/.exec(r.body.toString('latin1'));
      if (r.status !== 200 || !m) this.bad(`POST n=${n}: status ${r.status}: ${r.body.toString('latin1').slice(0, 80).trim()}`);
      else if (Number(m[1]) !== n || m[2] !== md5(body)) this.bad(`POST n=${n}: acknowledged ${m[1]} md5 ${m[2]} != ${md5(body)}`);
      else { this.acked.set(n, body); this.good('http'); }
    } else {
      const ns = [...this.acked.keys()];
      const n = ns[this.rng.int(ns.length)];
      const r = await this.httpReq('GET', `/u/${n}`);
      if (!r) { this.counts.httpFailed++; return; }
      this.counts.httpReadBack++;
      if (r.status !== 200) this.bad(`GET /u/${n} (acknowledged): status ${r.status}`);
      else if (!r.body.equals(this.acked.get(n)!)) this.bad(`GET /u/${n} (acknowledged): ${r.body.length} bytes, md5 ${md5(r.body)} != ${md5(this.acked.get(n)!)}`);
      else this.good('http');
    }
  }

  private tcpConnect(): void {
    const s = net.connect(ECHO_PORT, GUEST_IP);
    this.tcp = s;
    this.tcpExpect = '';
    this.tcpBuf = '';
    let up = false;
    s.setNoDelay(true);
    s.setKeepAlive(false);
    s.on('connect', () => { up = true; });
    s.on('data', (d: Buffer) => {
      this.tcpBuf += d.toString('latin1');
      // Every byte back in order: what came must be a prefix of what was sent and not yet echoed.
      const n = Math.min(this.tcpBuf.length, this.tcpExpect.length);
      if (this.tcpBuf.length > this.tcpExpect.length || this.tcpBuf.slice(0, n) !== this.tcpExpect.slice(0, n)) {
        this.bad(`TCP echo: got ${JSON.stringify(this.tcpBuf.slice(0, 60))}, expected ${JSON.stringify(this.tcpExpect.slice(0, 60))}`);
        s.destroy();
        return;
      }
      const nl = this.tcpBuf.lastIndexOf('\n');
      if (nl >= 0) {
        this.counts.tcpLines += this.tcpBuf.slice(0, nl + 1).split('\n').length - 1;
        this.tcpBuf = this.tcpBuf.slice(nl + 1);
        this.tcpExpect = this.tcpExpect.slice(nl + 1);
        this.good('tcp');
      }
    });
    const gone = (why: string): void => {
      if (this.tcp !== s) return;
      this.tcp = undefined;
      // A connection the guest had accepted must not break (its TCP state is in the guest, not in tsvmm).
      if (up && !this.stopped) { this.broken.push({ at: Date.now(), what: `TCP echo connection ${why}` }); process.stdout.write(`@svc-note TCP echo connection ${why}\n`); }
    };
    s.on('error', (e) => gone(`error: ${e.message}`));
    s.on('close', () => gone('closed'));
  }

  private tcpTick(): void {
    if (!this.tcp) { this.tcpConnect(); return; }
    if (this.tcp.connecting) return;
    // Not more than 64 lines unanswered (a stalled guest): the stream waits with it.
    if (this.tcpExpect.length > 64 * 40) return;
    const n = ++this.tcpSeq;
    const line = `t${n} ${sha(Buffer.from(`tcp ${n}`)).slice(0, 24)}\n`;
    this.tcpExpect += line;
    this.tcp.write(line);
  }

  private udpPayload(n: number): string { return `u${n} ${sha(Buffer.from(`udp ${n}`)).slice(0, 40)}`; }
  private udpTick(): void {
    const n = ++this.udpSeq;
    this.counts.udpSent++;
    this.udp.send(this.udpPayload(n), ECHO_PORT, GUEST_IP);
  }
  private udpReply(m: Buffer): void {
    const t = m.toString('latin1');
    const n = Number(/^u(\d+) /.exec(t)?.[1] ?? NaN);
    if (!Number.isInteger(n) || n < 1 || n > this.udpSeq || t !== this.udpPayload(n)) { this.bad(`UDP echo: ${JSON.stringify(t.slice(0, 60))} is not a datagram we sent`); return; }
    if (this.udpSeen.has(n)) { this.counts.udpDup++; return; }
    this.udpSeen.add(n);
    this.counts.udpGot++;
    this.good('udp');
  }

  start(): void {
    void (async () => { for (let i = 0; !this.stopped; i++) { await this.httpOp(i); await sleep(300); } })();
    const t1 = setInterval(() => (this.stopped ? clearInterval(t1) : this.tcpTick()), 250);
    const t2 = setInterval(() => (this.stopped ? clearInterval(t2) : this.udpTick()), 100);
  }

  /** A new guest (a fresh disk): the uploads acknowledged by the last one are not on it. */
  newGuest(): void { this.acked.clear(); }

  stop(): void { this.stopped = true; this.tcp?.destroy(); this.udp.close(); }

  /** Per service, the longest it went without a correct answer, over its answers around [from, to]. */
  gaps(from: number, to: number): Record<Svc, number> {
    const g = { http: 0, tcp: 0, udp: 0 };
    for (const s of SVCS) {
      const a = this.ok[s];
      let prev = a.filter((t) => t <= from).pop() ?? from;
      for (const t of a.filter((x) => x > from && x <= to)) { g[s] = Math.max(g[s], t - prev); prev = t; }
    }
    return g;
  }
}

/** What the guest fetches at setup (over HTTP from L1): its files, the UDP echo binary, the CGI. */
export function setupServer(c: Client): Promise<http.Server> {
  const udpecho = fs.readFileSync(path.join(ROOT, 'bench', 'out', 'udpecho'));
  const srv = http.createServer((req, res) => {
    const m = /^\/f\/(\d+)$/.exec(req.url ?? '');
    const body = m && Number(m[1]) < FILES ? c.files[Number(m[1])] : req.url === '/udpecho' ? udpecho : req.url === '/put' ? Buffer.from(PUT_CGI) : undefined;
    res.writeHead(body ? 200 : 404, { 'content-length': String(body?.length ?? 0) });
    res.end(body);
  });
  return new Promise((r) => srv.listen(SETUP_PORT, HOST_IP, () => r(srv)));
}

async function components(socket: string): Promise<{ name: string; pid: number }[] | undefined> {
  try {
    const r = await Promise.race([request(socket, 'GET', '/v1/vm/components'), sleep(10_000).then(() => undefined)]);
    return r && r.status === 200 ? (JSON.parse(r.body) as { name: string; pid: number }[]) : undefined;
  } catch { return undefined; }
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, step = 200): Promise<boolean> {
  const t = Date.now() + ms;
  while (!(await cond())) { if (Date.now() > t) return false; await sleep(step); }
  return true;
}

// The cause may hold parentheses of its own ("self-check failed (corrupt while idle)").
const RECOVERY_LINE = /recovered (vmm|driver-domain|priv-domain|keeper|supervisor) \(cause: (.*?)\) in ([\d.]+) ms/;

/** Boots the guest, puts the services on its disk and starts them; the client checks they answer. */
async function startGuest(name: string, c: Client, srv: { server?: http.Server }): Promise<Vm> {
  const vm = new Vm(name, ['--cpus', '2', '--mem', '384M', '--standby', '--disk', freshDisk(name), '--net', `tap=${TAP}`, '--cmdline', GUEST_CMDLINE]);
  const bootMs = await vm.booted();
  setupTap(TAP);
  // The setup server listens on L1's side of the TAP, which exists once the VM does.
  srv.server ??= await setupServer(c);
  await vm.sh(`ip addr add ${GUEST_IP}/24 dev eth0; ip link set eth0 up; ip link set lo up`);
  // Short typed lines (busybox's line editor takes ~1 KiB).
  const url = `http://${HOST_IP}:${SETUP_PORT}`;
  await vm.sh(`mkdir -p /mnt/www/f /mnt/www/u /mnt/www/cgi-bin; for k in $(seq 0 ${FILES - 1}); do wget -q -O /mnt/www/f/$k ${url}/f/$k; done`);
  await vm.sh(`wget -q -O /mnt/udpecho ${url}/udpecho; wget -q -O /mnt/www/cgi-bin/put ${url}/put; chmod +x /mnt/udpecho /mnt/www/cgi-bin/put`);
  const setup = await vm.sh('sync; echo 3 >/proc/sys/vm/drop_caches; md5sum /mnt/www/f/*');
  const want = c.files.map((f, k) => `${md5(f)}  /mnt/www/f/${k}`).join('\n');
  if (setup.status !== 0 || setup.out.trim() !== want) throw new Error(`the guest's setup failed (status ${setup.status}): ${setup.out.slice(0, 300)}`);
  await vm.sh(`httpd -p ${HTTP_PORT} -h /mnt/www; (nc -ll -p ${ECHO_PORT} -e cat </dev/null >/dev/null 2>&1 &); (/mnt/udpecho ${ECHO_PORT} </dev/null >/dev/null 2>&1 &); (while :; do echo 3 >/proc/sys/vm/drop_caches; sleep 2; done </dev/null >/dev/null 2>&1 &); sleep 1; ps | grep -cE 'httpd|udpecho|nc -ll'`);
  process.stdout.write(`@svc-note guest ${name} booted in ${(bootMs / 1000).toFixed(0)} s; services started\n`);
  return vm;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    seed: { type: 'string' }, first: { type: 'string' }, minutes: { type: 'string' }, components: { type: 'string' }, kinds: { type: 'string' },
    'window-s': { type: 'string' }, tag: { type: 'string' },
  } });
  const seed = Number(values.seed ?? 1);
  let run = Number(values.first ?? 0);
  const deadline = Date.now() + Number(values.minutes ?? 20) * 60_000;
  const kinds = values.kinds?.split(',') as InjectKind[] | undefined;
  const comps = (values.components?.split(',') ?? Object.keys(SERVICE_KINDS)).filter((x) => SERVICE_KINDS[x]?.some((k) => !kinds || kinds.includes(k)));
  if (!comps.length) throw new Error('no (component, kind) pair left to inject');
  const windowMs = Number(values['window-s'] ?? 120) * 1000;
  const c = new Client(seed);
  const srv: { server?: http.Server } = {};
  let vm: Vm | undefined;
  let vms = 0;
  const end: Record<string, unknown> = { boots: 0, injections: 0 };
  try {
    // A run takes ~40 s (72 s under load), at most ~8 min (settle, SIGSTOP's wait, the window, the
    // probe): none starts that cannot end near the deadline, and the settle waits no longer than
    // that (campaign 2's runner went silent for 11 minutes after a run that ended 2 min before it).
    const left = () => deadline - Date.now();
    while (left() > MIN_RUN_MS) {
      if (!vm || vm.exit) {
        // A lost VM is replaced while there is time for a boot (minutes under TCG) and some runs.
        if (vm) { vm.kill(); if (deadline - Date.now() < 10 * 60_000) break; }
        c.newGuest();
        vm = await startGuest(`${values.tag ?? 'lsv'}-${vms++}`, c, srv);
        end.boots = vms;
        if (vms === 1) c.start();
        if (!(await until(() => c.answering(), STEP_MS))) throw new Error(`the services did not answer after the boot: last ok http ${c.lastOk('http')} tcp ${c.lastOk('tcp')} udp ${c.lastOk('udp')} (${JSON.stringify(c.counts)})`);
      }
      const v = vm;
      const socket = vmPaths(v.name).socket;
      const { component, kind } = servicePlan(run, comps, kinds);
      const rng = new Rng(BigInt(seed) * 1_000_003n + BigInt(run));
      const t0 = Date.now();
      const phases: Record<string, number> = {};
      let tp = t0;
      const phase = (n: string) => { phases[n] = Date.now() - tp; tp = Date.now(); };
      // Settle: every component there, the standbys ready (the next fault meets a VM like the first did), the services answering.
      let comps0: { name: string; pid: number }[] | undefined;
      let missing: string[] = [];
      const settled = await until(async () => {
        comps0 = await components(socket);
        const p = comps0 ? pidsFrom(comps0) : undefined;
        missing = [
          ...(p ? (['vmm', 'keeper', 'driver-domain', 'priv-domain'] as const).filter((x) => !p[x]) : ['the API']),
          ...['vmm', 'driver-domain'].filter((x) => !(alive(v.standby[x]) && v.standby[x] !== v.pid[x])).map((x) => `${x} standby`),
          ...(c.answering() ? [] : ['the services']),
        ];
        return !!v.exit || !missing.length;
      }, Math.min(SETTLE_MAX_MS, Math.max(0, left() - MIN_RUN_MS)), 1000);
      if (v.exit) continue;
      if (!settled) {
        process.stdout.write(`@svc-note run ${run} not started: the VM did not settle (missing: ${missing.join(', ')}) within ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
        break;
      }
      phase('settle');
      const delayMs = 500 + rng.int(2500);
      await sleep(delayMs);
      comps0 = (await components(socket)) ?? comps0;
      phase('delay');
      const rec: RunRecord = {
        seed, run, at: new Date().toISOString(), component, kind, workload: 'linux-service', cpus: 2, delayMs,
        outcome: 'not-manifested', detected: false, detectors: [], symptoms: [], wallMs: 0, load: Number(os.loadavg()[0].toFixed(2)),
      };
      const errAt = v.err.length;
      const wrongAt = c.wrong.length;
      const brokenAt = c.broken.length;
      const tInject = Date.now();
      try {
        if (!comps0) throw new Error('the API did not answer before the fault');
        rec.injected = await inject(component, kind, pidsFrom(comps0), { seed: rng.next(), cpus: 2, socket });
      } catch (e) { rec.injectError = (e as Error).message.split('\n')[0]; }
      phase('inject');
      // Observe: long enough for the hang detector (--hang-timeout 20 s) to judge a stopped component,
      // then until every service answered correctly after the fault, within the window.
      await sleep(kind === 'SIGSTOP' ? 35_000 : 15_000);
      const restored = await until(() => !!v.exit || SVCS.every((s) => c.lastOk(s) > tInject && c.lastOk(s) > Date.now() - FRESH_MS), Math.max(0, windowMs - (Date.now() - tInject)));
      const tRestored = Date.now();
      phase('window');
      const symptoms: string[] = [];
      if (!v.exit && !restored) symptoms.push(`the services did not all answer correctly within ${windowMs / 1000} s: last correct answer ${SVCS.map((s) => `${s} ${c.lastOk(s) ? ((Date.now() - c.lastOk(s)) / 1000).toFixed(1) : '-'} s ago`).join(', ')}`);
      // The API: a priv-domain restart is a node start under TCG, 40-160 s on a loaded machine (run 1/2 of
      // the first campaign was judged at 60 s, before its recovery line came at 157 s).
      if (!v.exit && !(await until(async () => !!(await components(socket)), STEP_MS, 500))) symptoms.push(`the API did not answer for ${STEP_MS / 1000} s`);
      phase('api');
      if (kind === 'SIGSTOP' && rec.injected) { try { process.kill(rec.injected.pid, 'SIGCONT'); } catch { /* gone */ } }
      // What the fault set off ends here: the probe's own recovery of the vmm is no detection of it.
      const errEnd = v.err.length;
      // A keeper fault shows only at the vmm's next failure: the probe is that failure.
      if (component === 'keeper' && !v.exit) {
        const cs = await components(socket);
        const vmmPid = cs ? pidsFrom(cs).vmm : 0;
        const tProbe = Date.now();
        try { if (vmmPid) process.kill(vmmPid, 'SIGKILL'); } catch { /* gone */ }
        const ok = vmmPid > 0 && await until(() => !!v.exit || SVCS.every((s) => c.lastOk(s) > tProbe + 1000 && c.lastOk(s) > Date.now() - FRESH_MS), windowMs);
        rec.probe = ok && !v.exit ? 'recovered' : 'failed';
        if (rec.probe === 'failed') symptoms.push(`recovery probe (SIGKILL of the vmm after the window) failed${v.exit ? ': the VM exited' : ''}`);
        phase('probe');
      } else rec.probe = 'skipped';
      if (v.exit) symptoms.push(`VM lost: tsvmm exited ${JSON.stringify(v.exit)}: ${v.err.trim().split('\n').slice(-1)[0]}`);
      symptoms.push(...c.wrong.slice(wrongAt).map((w) => w.what).slice(0, 10), ...c.broken.slice(brokenAt).map((w) => w.what));
      const errSince = v.err.slice(errAt, errEnd);
      for (const l of errSince.split('\n')) {
        const m = RECOVERY_LINE.exec(l);
        if (m) {
          rec.detectors.push(l.replace(/^.*?tsvmm: /, '').slice(0, 300));
          if (rec.recoveryMs === undefined) rec.recoveryMs = Number(m[3]);
        } else if (l && DETECTOR.test(l) && !BENIGN.test(l)) rec.detectors.push(l.slice(0, 300));
      }
      rec.detected = rec.detectors.length > 0;
      rec.symptoms = symptoms;
      rec.outcome = classify(rec.detected, symptoms);
      const gaps = c.gaps(tInject, tRestored);
      rec.service = { restoredMs: restored ? tRestored - tInject : undefined, gapMs: Math.max(...Object.values(gaps)), gaps, counts: { ...c.counts } };
      rec.wallMs = Date.now() - t0;
      rec.phases = phases;
      // Twice: L1's own kernel messages share the console and can cut into a line (the reader dedupes by run).
      const line = `@svc-run ${JSON.stringify({ ...rec, detectors: rec.detectors.slice(0, 6).map((d) => d.slice(0, 200)) })}\n`;
      process.stdout.write(line);
      process.stdout.write(line);
      run++;
      end.injections = (end.injections as number) + 1;
    }
    if (vm && !vm.exit) {
      const log = await vm.kernelLog();
      end.kernelLog = judge(log.out);
      const stop = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'tsvmm.js'), 'stop', '--name', vm.name], { encoding: 'utf8', timeout: STEP_MS });
      end.stop = stop.status;
    }
  } catch (e) {
    end.error = (e as Error).message;
  } finally {
    c.stop();
    srv.server?.close();
    vm?.kill();
  }
  end.counts = c.counts;
  end.wrong = c.wrong.length;
  end.broken = c.broken.length;
  process.stdout.write(`@svc-end ${JSON.stringify(end)}\n`);
}

if (require.main === module) main().then(() => process.exit(0), (e) => { process.stdout.write(`@svc-end ${JSON.stringify({ error: (e as Error).message })}\n`); process.exit(1); });
