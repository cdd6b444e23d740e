/**
 * Prometheus metrics (prom-client), gathered at scrape time from where each number lives:
 * the control page (exit counters, virtio counters: shared memory, so they keep counting across
 * restarts of every component, this one included), the device state page (heartbeats, in-flight
 * requests), and the supervisor's status (pids, restarts, recoveries).
 */
import * as client from 'prom-client';
import { versionInfo } from '../contracts/version';
import { ControlPage, MAX_EXIT_REASONS, MAX_STAT_OPS, STAT_OP_NAMES, StatOp } from '../contracts/control-page';
import { Component, StatePage } from '../contracts/state-page';
import { EXIT_NAME } from '../kvm/run';
import type { ControlStatus, RecoveryRecord, VmConfig } from '../proto';
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

    new client.Counter({
      name: 'tsvmm_vcpu_exits_total', help: 'KVM exits handled by the vmm, by vCPU and exit reason.', labelNames: ['vcpu', 'reason'], registers: reg,
      collect() {
        this.reset();
        const c = src.control;
        if (!c) return;
        for (let v = 0; v < src.cfg.cpus; v++) {
          const counters = c.exitCounters(v);
          for (let reason = 0; reason < MAX_EXIT_REASONS; reason++) {
            if (counters[reason] > 0) this.inc({ vcpu: String(v), reason: EXIT_NAME[reason] ?? `exit_${reason}` }, counters[reason]);
          }
        }
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
