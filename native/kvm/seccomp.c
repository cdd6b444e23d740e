// seccomp.c: builds seccomp-BPF allowlists (seccomp.h). Linear: one compare per allowed call, in the
// order given (policy puts the hot calls first), two instructions each so no jump is ever longer
// than one.
#include "seccomp.h"

#include <stddef.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <asm/unistd_64.h>

#define X32_SYSCALL_BIT 0x40000000u

static void emit(struct tsvmm_bpf* p, uint16_t code, uint8_t jt, uint8_t jf, uint32_t k) {
  if (p->len >= TSVMM_SECCOMP_MAX_INSNS) { p->overflow = 1; return; }
  struct sock_filter f = {code, jt, jf, k};
  p->insn[p->len++] = f;
}

#define LD_NR() emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr))

void tsvmm_bpf_begin(struct tsvmm_bpf* p, uint32_t dflt) {
  p->len = 0;
  p->overflow = 0;
  emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64);
  emit(p, BPF_RET | BPF_K, 0, 0, dflt);
  LD_NR();
  emit(p, BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT);
  emit(p, BPF_RET | BPF_K, 0, 0, dflt);
}

void tsvmm_bpf_allow(struct tsvmm_bpf* p, int nr) {
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, (uint32_t)nr);
  emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
}

void tsvmm_bpf_allow_arg_in(struct tsvmm_bpf* p, int nr, int arg, const uint64_t* vals, int n, uint32_t dflt) {
  (void)dflt;
  // if (nr != NR) skip the whole block; else check the argument and return (allow or default).
  // Not this call: skip LD lo, ST, 4 per value, the JA and the RET, to the LD_NR that ends the block.
  int block = 2 + 4 * n + 2;
  if (block > 255) { p->overflow = 1; return; }
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, (uint8_t)block, (uint32_t)nr);
  uint32_t lo = offsetof(struct seccomp_data, args) + 8 * arg, hi = lo + 4;  // little-endian
  emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, lo);
  emit(p, BPF_ST, 0, 0, 0);  // M[0] = low word
  for (int i = 0; i < n; i++) {
    // A = low word; equal? check the high word: equal -> allow.
    emit(p, BPF_LD | BPF_MEM, 0, 0, 0);
    emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 2, (uint32_t)vals[i]);
    emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, hi);
    emit(p, BPF_JMP | BPF_JEQ | BPF_K, (uint8_t)(4 * (n - 1 - i) + 1), 0, (uint32_t)(vals[i] >> 32));
  }
  emit(p, BPF_JMP | BPF_JA, 0, 0, 1);  // no value matched: on to the next rule (over the RET)
  emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
  LD_NR();  // the next rule compares nr again
}

void tsvmm_bpf_allow_mask(struct tsvmm_bpf* p, int nr, int arg, uint32_t mask, uint32_t dflt) {
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 5, (uint32_t)nr);
  emit(p, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, args) + 8 * arg);
  emit(p, BPF_ALU | BPF_AND | BPF_K, 0, 0, mask);
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, mask);
  emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
  emit(p, BPF_RET | BPF_K, 0, 0, dflt);
  LD_NR();
}

void tsvmm_bpf_errno(struct tsvmm_bpf* p, int nr, int err) {
  emit(p, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, (uint32_t)nr);
  emit(p, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ERRNO | ((uint32_t)err & SECCOMP_RET_DATA));
}

int tsvmm_bpf_end(struct tsvmm_bpf* p, uint32_t dflt) {
  emit(p, BPF_RET | BPF_K, 0, 0, dflt);
  return p->overflow ? -7 /* E2BIG */ : 0;
}

uint32_t tsvmm_seccomp_action(int mode) {
  return mode == TSVMM_SECCOMP_LOG ? SECCOMP_RET_LOG : SECCOMP_RET_KILL_PROCESS;
}

static const struct { const char* name; int nr; } table[] = {
#define X(n) {#n, __NR_##n},
#include "syscall-names.h"
#undef X
};

int tsvmm_syscall_nr(const char* name) {
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(table[i].name, name) == 0) return table[i].nr;
  return -1;
}

const char* tsvmm_syscall_name_at(int i, int* nr) {
  if (i < 0 || (size_t)i >= sizeof table / sizeof table[0]) return NULL;
  *nr = table[i].nr;
  return table[i].name;
}
