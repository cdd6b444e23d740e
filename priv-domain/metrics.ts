/**
 * Prometheus metrics (prom-client), gathered at scrape time from where each number lives:
 * the control page (exit counters, virtio counters: shared memory, so they keep counting across
 * restarts of every component, this one included), the device state page (heartbeats, in-flight
 * requests), and the supervisor's status (pids, restarts, recoveries).
 */
import * as fs from 'fs';
import * as client from 'prom-client';
import { versionInfo } from '../contracts/version';
import { ControlPage, LATENCY_BUCKETS, NATIVE_EXIT_SLOT, MAX_STAT_DEVICES, MAX_STAT_OPS, STAT_OP_NAMES, StatOp } from '../contracts/control-page';
import { Component, StatePage } from '../contracts/state-page';
import { EXIT_NAME } from '../kvm/run';
import type { ControlStatus, HangKillRecord, RecoveryRecord, StandbyStatus, VmConfig } from '../proto';
import type { DeviceEntry } from '../contracts/device-list';

export interface MetricsSource {
  cfg: VmConfig;
  devices: DeviceEntry[];
  control?: ControlPage;
  statePage?: StatePage;
  status(): ControlStatus | undefined;
  recoveries(): RecoveryRecord[];
  /** Seconds since each component's heartbeat last moved (components that beat). */
  heartbeatAges(): Map<string, number>;
  consoleBytes(): number;
  /** Bytes of serial output the --serial sink refused. */
  serialDropped(): number;
  /** Every hang kill of this run (supervisor/hang-watch.ts). */
  hangKills(): HangKillRecord[];
  /** The standbys of a VM run with --standby (none without). */
  standbys(): StandbyStatus[];
  /** starting, running, paused, recovering; '' before the supervisor said. */
  guestState(): string;
}

/** The values tsvmm_guest_state takes (ControlStatus.guest_state). */
export const GUEST_STATES = ['starting', 'running', 'paused', 'recovering'];
/** USER_HZ: the unit of utime and stime in /proc/PID/stat. */
const CLOCK_TICKS = 100;
/** x86-64's page size: the unit of rss in /proc/PID/stat. */
const PAGE_BYTES = 4096;

/**
 * CPU time (seconds, user + system), resident and virtual memory (bytes) of process `pid`, from
 * /proc/PID/stat (readable for any process: it works for a confined priv-domain too, which may not
 * read the others' smaps). undefined when it is gone.
 */
export function processStat(pid: number): { cpuSeconds: number; residentBytes: number; virtualBytes: number } | undefined {
  let text: string;
  try { text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1'); } catch { return undefined; }
  // Fields after the command (which may hold spaces and parentheses): field n is f[n - 3].
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  const vsize = Number(f[20]);
  const rss = Number(f[21]);
  if (![utime, stime, vsize, rss].every(Number.isFinite)) return undefined;
  return { cpuSeconds: (utime + stime) / CLOCK_TICKS, residentBytes: rss * PAGE_BYTES, virtualBytes: vsize };
}

/**
 * A histogram whose buckets are counted elsewhere (the control page's latency table, written by the
 * driver-domain): prom-client's Histogram only observes values one by one, so this hands the
 * registry the series directly, in the same shape.
 */
class CountedHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(readonly name: string, readonly help: string, private readonly series: () => { labels: Record<string, string>; buckets: ArrayLike<number>; sum: number }[]) {}
  get(): { name: string; help: string; type: string; aggregator: string; values: { metricName: string; labels: Record<string, string | number>; value: number }[] } {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const s of this.series()) {
      let cum = 0;
      for (let b = 0; b <= LATENCY_BUCKETS.length; b++) {
        cum += s.buckets[b];
        values.push({ metricName: `${this.name}_bucket`, labels: { ...s.labels, le: b < LATENCY_BUCKETS.length ? LATENCY_BUCKETS[b] : '+Inf' }, value: cum });
      }
      values.push({ metricName: `${this.name}_sum`, labels: s.labels, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: s.labels, value: cum });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export const RECOVERY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Component names of the heartbeat slots. */
export const HEARTBEAT_COMPONENTS: [Component, string][] = [
  [Component.Supervisor, 'supervisor'], [Component.Vmm, 'vmm'], [Component.DriverDomain, 'driver-domain'],
  [Component.PrivDomain, 'priv-domain'], [Component.VmmStandby, 'vmm-standby'], [Component.DriverDomainStandby, 'driver-domain-standby'],
];

function deviceName(d: DeviceEntry, cfg: VmConfig): string {
  return d.kind === 'blk' ? `blk${d.index}` : `net${d.index - cfg.disks.length}`;
}

export class Metrics {
  readonly registry = new client.Registry();
  readonly apiRequests: client.Counter<'method' | 'code'>;

  constructor(src: MetricsSource) {
    const r = this.registry;
    r.setDefaultLabels({ vm: src.cfg.name });
    const reg = [r];

    /** Every vCPU's exit counters (control page), as `vcpu` label and its counters. */
    const eachVcpu = (each: (vcpu: string, counters: Float64Array) => void) => {
      const c = src.control;
      if (c) for (let v = 0; v < src.cfg.cpus; v++) each(String(v), c.exitCounters(v));
    };
    new client.Counter({
      name: 'tsvmm_vcpu_exits_total', help: 'KVM exits handled by the vmm, by vCPU and exit reason.', labelNames: ['vcpu', 'reason'], registers: reg,
      collect() {
        this.reset();
        eachVcpu((vcpu, counters) => {
          for (let reason = 0; reason < NATIVE_EXIT_SLOT.IO; reason++) {
            if (counters[reason] > 0) this.inc({ vcpu, reason: EXIT_NAME[reason] ?? `exit_${reason}` }, counters[reason]);
          }
        });
      },
    });
    new client.Counter({
      name: 'tsvmm_vcpu_exits_native_total', labelNames: ['vcpu', 'reason'], registers: reg,
      help: 'Of tsvmm_vcpu_exits_total, the exits the native exit loop answered without entering JavaScript (native/kvm/fastexit.cc).',
      collect() {
        this.reset();
        eachVcpu((vcpu, counters) => {
          if (counters[NATIVE_EXIT_SLOT.IO] > 0) this.inc({ vcpu, reason: 'io' }, counters[NATIVE_EXIT_SLOT.IO]);
          if (counters[NATIVE_EXIT_SLOT.MMIO] > 0) this.inc({ vcpu, reason: 'mmio' }, counters[NATIVE_EXIT_SLOT.MMIO]);
        });
      },
    });

    const devLabels = ['device', 'type', 'operation'] as const;
    const devCounter = (name: string, help: string, slot: number) => new client.Counter({
      name, help, labelNames: devLabels, registers: reg,
      collect() {
        this.reset();
        const c = src.control;
        if (!c) return;
        for (const d of src.devices) {
          const ops = d.kind === 'blk' ? [StatOp.Read, StatOp.Write, StatOp.Flush, StatOp.GetId, StatOp.Other] : [StatOp.Tx, StatOp.Rx];
          for (const op of ops) {
            if (op >= MAX_STAT_OPS) continue;
            this.inc({ device: deviceName(d, src.cfg), type: d.kind, operation: STAT_OP_NAMES[op] }, c.devStat(d.index, op)[slot]);
          }
        }
      },
    });
    devCounter('tsvmm_virtio_requests_total', 'virtio requests completed (blk) or frames moved (net), by device and operation.', 0);
    devCounter('tsvmm_virtio_bytes_total', 'Data bytes of those requests and frames.', 1);
    devCounter('tsvmm_virtio_request_errors_total', 'virtio requests that completed with an error.', 2);

    r.registerMetric(new CountedHistogram('tsvmm_virtio_request_duration_seconds',
      'virtio request latency, by device and operation: from the driver-domain taking a request off its ring to completing it ' +
      '(blk; net tx), or from reading a frame off the TAP to completing it into a guest buffer (net rx, the wait for one included).',
      () => {
        const c = src.control;
        if (!c) return [];
        const out: { labels: Record<string, string>; buckets: Float64Array; sum: number }[] = [];
        for (const d of src.devices) {
          if (d.index >= MAX_STAT_DEVICES) continue;
          const ops = d.kind === 'blk' ? [StatOp.Read, StatOp.Write, StatOp.Flush, StatOp.GetId, StatOp.Other] : [StatOp.Tx, StatOp.Rx];
          for (const op of ops) {
            const h = c.latency(d.index, op);
            const n = h.subarray(0, LATENCY_BUCKETS.length + 1).reduce((a, b) => a + b, 0);
            // Reads, writes, tx and rx always (zero from the start); the rarer ones once seen.
            if (n === 0 && ![StatOp.Read, StatOp.Write, StatOp.Tx, StatOp.Rx].includes(op)) continue;
            out.push({ labels: { device: deviceName(d, src.cfg), type: d.kind, operation: STAT_OP_NAMES[op] }, buckets: h, sum: h[LATENCY_BUCKETS.length + 1] });
          }
        }
        return out;
      }) as unknown as client.Metric<string>);

    new client.Gauge({
      name: 'tsvmm_virtio_requests_in_flight', help: 'Requests the driver-domain has taken from a queue and not yet completed (from the state page).',
      labelNames: ['device', 'type', 'queue'], registers: reg,
      collect() {
        this.reset();
        const p = src.statePage;
        if (!p) return;
        for (const d of src.devices) {
          for (let q = 0; q < d.queues; q++) {
            let n = 0;
            try { n = p.device(d.index).progress(q).inflightInOrder().length; } catch { n = 0; }
            this.set({ device: deviceName(d, src.cfg), type: d.kind, queue: String(q) }, n);
          }
        }
      },
    });

    new client.Gauge({
      name: 'tsvmm_component_up', help: '1 while the component process is running.', labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const c of src.status()?.components ?? []) this.set({ component: c.name }, c.pid && c.state !== 'stopped' ? 1 : 0);
      },
    });
    new client.Gauge({
      name: 'tsvmm_component_start_time_seconds', help: 'Start time of the component process, seconds since the Unix epoch.', labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const c of src.status()?.components ?? []) if (c.startedAt) this.set({ component: c.name }, c.startedAt);
      },
    });
    new client.Counter({
      name: 'tsvmm_component_restarts_total', help: 'Times the supervisor restarted the component after a failure.', labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const c of src.status()?.components ?? []) this.inc({ component: c.name }, c.restarts);
      },
    });
    new client.Histogram({
      name: 'tsvmm_component_recovery_duration_seconds', help: 'Time from a component failure being seen to its replacement being ready, by cause.',
      labelNames: ['component', 'cause'], buckets: RECOVERY_BUCKETS, registers: reg,
      collect() {
        this.reset();
        for (const rec of src.recoveries()) this.observe({ component: rec.component, cause: causeLabel(rec.cause) }, rec.seconds);
      },
    });
    new client.Gauge({
      name: 'tsvmm_component_heartbeat_age_seconds', help: "Seconds since the component's heartbeat counter in the state page last moved.",
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const [name, age] of src.heartbeatAges()) this.set({ component: name }, age);
      },
    });

    new client.Counter({
      name: 'tsvmm_hang_kills_total', help: 'Components the supervisor found hung (heartbeat still, with the kernel\'s evidence) and killed; each is then recovered.',
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const name of ['vmm', 'driver-domain', 'priv-domain', 'keeper']) this.inc({ component: name }, 0);
        for (const h of src.hangKills()) this.inc({ component: h.component }, 1);
      },
    });
    new client.Gauge({
      name: 'tsvmm_standby_ready', help: "1 while the component's warm standby (tsvmm run --standby) is built and would take over at once; 0 while it is missing or starting. Absent without --standby.",
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const sb of src.standbys()) this.set({ component: sb.component }, sb.ready ? 1 : 0);
      },
    });
    new client.Gauge({
      name: 'tsvmm_guest_state', help: "The guest's state, one series per state, 1 for the current one: starting (not run yet), running, paused (tsvmm pause), recovering (its vmm died; the next one has not resumed it yet).",
      labelNames: ['state'], registers: reg,
      collect() {
        this.reset();
        const now = src.guestState();
        if (!now) return;
        for (const st of GUEST_STATES) this.set({ state: st }, st === now ? 1 : 0);
      },
    });

    // Each process of the VM the supervisor knows, from /proc (prom-client's process_* metrics, per component).
    let seen: { at: number; list: { name: string; stat: ReturnType<typeof processStat> }[] } | undefined;
    const processes = () => {
      // Read once per scrape (three metrics use it).
      const now = performance.now();
      if (seen && now - seen.at < 50) return seen.list;
      const out: [string, number][] = [];
      for (const c of src.status()?.components ?? []) if (c.pid) out.push([c.name, c.pid]);
      for (const sb of src.standbys()) if (sb.pid) out.push([`${sb.component}-standby`, sb.pid]);
      seen = { at: now, list: out.map(([name, pid]) => ({ name, stat: processStat(pid) })).filter((p) => p.stat) };
      return seen.list;
    };
    new client.Counter({
      name: 'tsvmm_process_cpu_seconds_total', help: 'CPU time (user and system) of the process of each component (from /proc/PID/stat).',
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const p of processes()) this.inc({ component: p.name }, p.stat!.cpuSeconds);
      },
    });
    new client.Gauge({
      name: 'tsvmm_process_resident_memory_bytes', help: "Resident memory of the process of each component (from /proc/PID/stat): the vmm's and the driver-domain's include the guest RAM they touched (one memfd, shared); the keeper shares the vmm's memory.",
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const p of processes()) this.set({ component: p.name }, p.stat!.residentBytes);
      },
    });
    new client.Gauge({
      name: 'tsvmm_process_virtual_memory_bytes', help: 'Virtual memory size of the process of each component (from /proc/PID/stat).',
      labelNames: ['component'], registers: reg,
      collect() {
        this.reset();
        for (const p of processes()) this.set({ component: p.name }, p.stat!.virtualBytes);
      },
    });

    const v = versionInfo();
    new client.Gauge({
      name: 'tsvmm_build_info', help: 'The tsvmm build serving this VM (always 1): version, git commit, Node.js version.',
      labelNames: ['version', 'commit', 'node'], registers: reg,
      collect() { this.set({ version: v.version, commit: v.commit ?? 'unknown', node: v.node }, 1); },
    });
    new client.Gauge({ name: 'tsvmm_guest_memory_bytes', help: 'Guest RAM size.', registers: reg, collect() { this.set(src.cfg.memBytes); } });
    new client.Gauge({ name: 'tsvmm_vcpus', help: 'Number of vCPUs of the VM.', registers: reg, collect() { this.set(src.cfg.cpus); } });
    new client.Gauge({
      name: 'tsvmm_vm_paused', help: '1 while the VM is paused (tsvmm pause).', registers: reg,
      collect() { this.set(src.control?.pauseRequested ? 1 : 0); },
    });
    new client.Counter({
      name: 'tsvmm_console_bytes_total', help: 'Bytes of guest serial output.', registers: reg,
      collect() { this.reset(); this.inc(src.consoleBytes()); },
    });
    new client.Counter({
      name: 'tsvmm_serial_dropped_bytes_total', help: 'Bytes of guest serial output the --serial sink refused (a full disk, say); they are still in the console log.', registers: reg,
      collect() { this.reset(); this.inc(src.serialDropped()); },
    });
    this.apiRequests = new client.Counter({
      name: 'tsvmm_api_requests_total', help: 'Management API requests served by this priv-domain process, by method and status code.',
      labelNames: ['method', 'code'], registers: reg,
    });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** A bounded label value for a recovery cause: "signal SIGKILL", "exit code 1", "hang", ... */
export function causeLabel(cause: string): string {
  const m = /^(signal \w+|exit code -?\d+|hang|corrupt\w*)/.exec(cause);
  return (m ? m[1] : cause.split(/[:(]/)[0].trim()).slice(0, 64) || 'unknown';
}
