/**
 * virtio-mmio (version 2, "modern") register map and the virtio constants
 * the device models share: device status bits, feature bit numbers, ring
 * flags, interrupt bits and device ids (virtio 1.2, sections 2, 4.2, 5.2, 5.1).
 *
 * Everything here is a plain number; no behaviour. All multi-byte virtio
 * fields are little-endian (VIRTIO_F_VERSION_1).
 */

/** Register offsets inside one virtio-mmio window (4 KiB per device). */
export const MmioReg = {
  MagicValue: 0x000,
  Version: 0x004,
  DeviceID: 0x008,
  VendorID: 0x00c,
  DeviceFeatures: 0x010,
  DeviceFeaturesSel: 0x014,
  DriverFeatures: 0x020,
  DriverFeaturesSel: 0x024,
  QueueSel: 0x030,
  QueueNumMax: 0x034,
  QueueNum: 0x038,
  QueueReady: 0x044,
  QueueNotify: 0x050,
  InterruptStatus: 0x060,
  InterruptACK: 0x064,
  Status: 0x070,
  QueueDescLow: 0x080,
  QueueDescHigh: 0x084,
  QueueDriverLow: 0x090,
  QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0,
  QueueDeviceHigh: 0x0a4,
  ShmSel: 0x0ac,
  ConfigGeneration: 0x0fc,
  Config: 0x100,
} as const;

/** "virt" in little-endian. */
export const VIRTIO_MMIO_MAGIC = 0x74726976;
/** Modern (virtio 1.x) virtio-mmio. */
export const VIRTIO_MMIO_VERSION = 2;
/** Our vendor id ("TSVM" would not fit the spirit; QEMU uses 0x554d4551 "QEMU"). */
export const TSVMM_VENDOR_ID = 0x4d565354; // "TSVM"

/** virtio device ids (virtio 1.2 section 5). */
export const DeviceId = {
  Net: 1,
  Block: 2,
} as const;

/** Device status field bits (virtio 1.2 section 2.1). */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;
/** All status bits a driver may legitimately have set. */
export const STATUS_KNOWN_BITS = 1 | 2 | 4 | 8 | 64 | 128;

/** InterruptStatus / InterruptACK bits. */
export const Interrupt = {
  /** Used buffer notification. */
  VRING: 1,
  /** Configuration change notification. */
  CONFIG: 2,
} as const;

/** Transport / ring feature bit numbers. */
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_RING_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;

/** virtio-blk feature bit numbers (section 5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;

/** virtio-net feature bit numbers (section 5.1.3). */
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_STATUS = 16;
/** virtio-net config status bits. */
export const VIRTIO_NET_S_LINK_UP = 1;

/** Split ring descriptor flags. */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail->flags: driver asks for no interrupts (only without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used->flags: device asks for no kicks (only without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Split ring geometry (virtio 1.2 section 2.7). */
export const VIRTQ_DESC_SIZE = 16;
export const VIRTQ_DESC_ALIGN = 16;
export const VIRTQ_AVAIL_ALIGN = 2;
export const VIRTQ_USED_ALIGN = 4;
/** Largest split queue the spec allows. */
export const VIRTQ_MAX_SIZE = 32768;

/** Bytes of the descriptor table for a queue of `num` entries. */
export function descTableSize(num: number): number {
  return VIRTQ_DESC_SIZE * num;
}
/** Bytes of the avail ring (flags, idx, ring[num], used_event). */
export function availRingSize(num: number): number {
  return 6 + 2 * num;
}
/** Bytes of the used ring (flags, idx, ring[num] of {id,len}, avail_event). */
export function usedRingSize(num: number): number {
  return 6 + 8 * num;
}

/** True when feature bit `bit` is set in a 64-bit feature word held as a bigint. */
export function hasFeature(features: bigint, bit: number): boolean {
  return ((features >> BigInt(bit)) & 1n) === 1n;
}
/** A feature word with the given bits set. */
export function features(...bits: number[]): bigint {
  return bits.reduce((f, b) => f | (1n << BigInt(b)), 0n);
}

/** virtio-blk request types (virtio 1.x, 5.2.6): the device model serves them, the metrics count them. */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
