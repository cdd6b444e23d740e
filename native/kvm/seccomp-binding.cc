// seccomp-binding.cc: the JS face of seccomp.c, and the prctl bits that go with it. Mechanism only:
// which calls a component may make, and whether a stray one kills or is logged, come from
// contracts/confinement.ts.
//
//   syscallTable() -> { name: number } for every x86-64 system call
//   seccompInstall(rules[], mode) -> sets no_new_privs, then installs the allowlist on every
//     thread of the process (SECCOMP_FILTER_FLAG_TSYNC); mode 1 kills the process on a call outside
//     it (SECCOMP_RET_KILL_PROCESS), 2 logs it (SECCOMP_RET_LOG). Throws on failure. A rule, in
//     order: nr (allow), [nr, 1, errno] (fail with errno), [nr, 2, arg, mask] (allow when every
//     bit of mask is set in argument arg), [nr, 3, arg, value] (allow when argument arg is value, else
//     on to the next rule).
//   setDumpable(bool) -> prctl(PR_SET_DUMPABLE): not dumpable, a process cannot be ptraced or have
//     its /proc files read by another process of the same uid
#include <napi.h>

#include <errno.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/seccomp.h>

#include "errno-error.h"
#include "seccomp.h"

namespace tsvmm {
namespace {

Napi::Value SyscallTable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int nr;
  for (int i = 0; const char* name = tsvmm_syscall_name_at(i, &nr); i++) o.Set(name, Napi::Number::New(env, nr));
  return o;
}

tsvmm_bpf g_prog;  // big: not on the stack

Napi::Value SeccompInstall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) return ThrowErrno(env, "seccompInstall: expected an array of system call numbers", EINVAL);
  Napi::Array nrs = info[0].As<Napi::Array>();
  int mode = info[1].As<Napi::Number>().Int32Value();
  if (mode != TSVMM_SECCOMP_KILL && mode != TSVMM_SECCOMP_LOG) return ThrowErrno(env, "seccompInstall: mode", EINVAL);
  uint32_t dflt = tsvmm_seccomp_action(mode);
  tsvmm_bpf_begin(&g_prog, dflt);
  for (uint32_t i = 0; i < nrs.Length(); i++) {
    Napi::Value r = nrs.Get(i);
    if (r.IsNumber()) { tsvmm_bpf_allow(&g_prog, r.As<Napi::Number>().Int32Value()); continue; }
    if (!r.IsArray()) return ThrowErrno(env, "seccompInstall: a rule is a number or an array", EINVAL);
    Napi::Array a = r.As<Napi::Array>();
    auto at = [&](uint32_t k) { return a.Get(k).As<Napi::Number>().Int64Value(); };
    int nr = static_cast<int>(at(0));
    if (a.Length() == 3 && at(1) == 1) tsvmm_bpf_errno(&g_prog, nr, static_cast<int>(at(2)));
    else if (a.Length() == 4 && at(1) == 2 && at(2) >= 0 && at(2) < 6) tsvmm_bpf_allow_mask(&g_prog, nr, static_cast<int>(at(2)), static_cast<uint32_t>(at(3)), dflt);
    else if (a.Length() == 4 && at(1) == 3 && at(2) >= 0 && at(2) < 6) {
      uint64_t v = static_cast<uint64_t>(at(3));
      tsvmm_bpf_allow_arg_in(&g_prog, nr, static_cast<int>(at(2)), &v, 1, dflt);
    } else return ThrowErrno(env, "seccompInstall: unknown rule", EINVAL);
  }
  if (tsvmm_bpf_end(&g_prog, dflt) < 0) return ThrowErrno(env, "seccompInstall: the list is too long", E2BIG);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return ThrowErrno(env, "seccompInstall: PR_SET_NO_NEW_PRIVS", errno);
  struct sock_fprog prog = {g_prog.len, g_prog.insn};
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
  if (r < 0) return ThrowErrno(env, "seccompInstall: seccomp(SECCOMP_SET_MODE_FILTER)", errno);
  // > 0: the thread that could not be synchronized (it has a filter of its own).
  if (r > 0) return ThrowErrno(env, "seccompInstall: thread " + std::to_string(r) + " could not take the filter", EBUSY);
  return env.Undefined();
}

Napi::Value SetDumpable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (prctl(PR_SET_DUMPABLE, info[0].ToBoolean().Value() ? 1 : 0, 0, 0, 0) < 0) return ThrowErrno(env, "prctl(PR_SET_DUMPABLE)", errno);
  return env.Undefined();
}

}  // namespace

void InitSeccomp(Napi::Env env, Napi::Object exports) {
  exports.Set("syscallTable", Napi::Function::New(env, SyscallTable));
  exports.Set("seccompInstall", Napi::Function::New(env, SeccompInstall));
  exports.Set("setDumpable", Napi::Function::New(env, SetDumpable));
  exports.Set("CLONE_THREAD", Napi::Number::New(env, CLONE_THREAD));
}

}  // namespace tsvmm
