/* seccomp.h: a seccomp-BPF allowlist (the mechanism; which system calls each component may make is
 * policy, in contracts/confinement.ts). Plain C: the keeper (keeper.c) builds its own filter with
 * these helpers before it is cloned. */
#pragma once
#include <stdint.h>
#include <linux/filter.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a call outside the list gets. */
#define TSVMM_SECCOMP_KILL 1  /* SECCOMP_RET_KILL_PROCESS: the whole process dies (SIGSYS) */
#define TSVMM_SECCOMP_LOG 2   /* SECCOMP_RET_LOG: allowed, and logged by the kernel (audit type 1326) */

#define TSVMM_SECCOMP_MAX_INSNS 1024

struct tsvmm_bpf {
  struct sock_filter insn[TSVMM_SECCOMP_MAX_INSNS];
  unsigned short len;
  int overflow;
};

/* Starts a program: a call from another ABI (i386, x32) gets the default action. */
void tsvmm_bpf_begin(struct tsvmm_bpf* p, uint32_t dflt_action);
/* Allows system call `nr` (any arguments). */
void tsvmm_bpf_allow(struct tsvmm_bpf* p, int nr);
/* Allows system call `nr` when argument `arg` (0-5) is one of `vals` (compared as 64-bit); else the
 * rules after this one decide. */
void tsvmm_bpf_allow_arg_in(struct tsvmm_bpf* p, int nr, int arg, const uint64_t* vals, int n, uint32_t dflt_action);
/* Allows system call `nr` only when argument `arg` has every bit of `mask` set (low 32 bits); else
 * the default action (no later rule is consulted). */
void tsvmm_bpf_allow_mask(struct tsvmm_bpf* p, int nr, int arg, uint32_t mask, uint32_t dflt_action);
/* System call `nr` fails with `err` (e.g. ENOSYS for clone3, so libc falls back to clone, whose
 * flags a filter can see). */
void tsvmm_bpf_errno(struct tsvmm_bpf* p, int nr, int err);
/* Ends the program: everything not allowed gets the default action. Returns 0 or -E2BIG. */
int tsvmm_bpf_end(struct tsvmm_bpf* p, uint32_t dflt_action);

/* The seccomp return value for TSVMM_SECCOMP_KILL / _LOG. */
uint32_t tsvmm_seccomp_action(int mode);

/* Name -> number for every x86-64 system call the kernel headers know; -1 if unknown. */
int tsvmm_syscall_nr(const char* name);
/* The i-th entry of that table (for listing it); NULL past the end. */
const char* tsvmm_syscall_name_at(int i, int* nr);

#ifdef __cplusplus
}
#endif
