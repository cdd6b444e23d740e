/**
 * The file descriptors the supervisor hands a component at spawn, by
 * position in its stdio array. Shared by the supervisor (which builds the
 * array) and the components (which read them).
 */
export const FD = {
  /** Node's IPC channel to the supervisor. */
  IPC: 3,
  /** Guest RAM memfd. */
  RAM: 4,
  /** Shared state memfd (platform page, then device pages). */
  STATE: 5,
  /** Where guest serial output is written. */
  SERIAL_OUT: 6,
} as const;

/** The state memfd: platform page at 0, virtio device state after it. */
export const STATE_MEMFD_SIZE = 64 * 1024;
