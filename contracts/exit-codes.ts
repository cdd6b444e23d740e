/** The vmm exit status that means "another vmm restored the guest; this one was not needed" (not a failure). */
export const EXIT_NOT_NEEDED = 75;

/**
 * `tsvmm`'s own exit status (README, "Exit status"): distinct for a usage error, a guest that
 * failed and a stop someone asked for, so a script or a service manager can tell them apart.
 */
export const TSVMM_EXIT = {
  /** The guest powered off with status 0 (or shut down); a verb did what it was asked. A stop on request (`stopped`) ends with 0 too, its reason on stderr. */
  ok: 0,
  /** tsvmm failed: a VMM or KVM error, recovery gave up, the VM could not be reached. */
  failed: 1,
  /** A usage error: bad options or input, rejected before anything ran. */
  usage: 2,
  /** The guest failed: it powered off with a non-zero status (the status is in the message and the `exited` event). */
  guestFailed: 3,
  /** Stopped on request: `tsvmm stop`, POST /v1/vm/stop or SIGTERM (a requested stop is not an error). */
  stopped: 0,
  /** Interrupted: SIGINT (Ctrl-C), 128 + 2 as shells expect. */
  interrupted: 130,
} as const;

/**
 * How long `tsvmm stop` (POST /v1/vm/stop without timeoutSeconds) gives the guest to power off
 * after the ACPI power button before the supervisor stops the VM hard.
 */
export const DEFAULT_STOP_TIMEOUT_MS = 5000;
