/** The vmm exit status that means "another vmm restored the guest; this one was not needed" (not a failure). */
export const EXIT_NOT_NEEDED = 75;
