// The syscalls `tsvmm inject` (cli/inject.ts) needs that Node lacks, one binding each, no policy:
//
//   ptraceSeize(tid)            PTRACE_SEIZE (no options): attach without stopping
//   ptraceInterrupt(tid)        PTRACE_INTERRUPT: stop it (a thread in a syscall, KVM_RUN included, returns EINTR)
//   ptraceWait(tid)             waitpid(tid, __WALL): the raw status (WIFSTOPPED etc. decoded in TypeScript)
//   ptraceGetRegs(tid) -> Buffer  PTRACE_GETREGS: struct user_regs_struct
//   ptraceSetRegs(tid, Buffer)  PTRACE_SETREGS
//   ptraceDetach(tid)           PTRACE_DETACH (it resumes)
//   ptraceRegOffsets            { rip: offsetof(struct user_regs_struct, rip), ... }: the layout, from the header
// Each failure throws an ErrnoError.
#include <napi.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errno-error.h"

namespace {

pid_t Tid(const Napi::CallbackInfo& info) { return info[0].As<Napi::Number>().Int32Value(); }

Napi::Value Req(const Napi::CallbackInfo& info, enum __ptrace_request req, const char* what) {
  if (ptrace(req, Tid(info), nullptr, nullptr) < 0) return tsvmm::ThrowErrno(info.Env(), what, errno);
  return info.Env().Undefined();
}

Napi::Value Seize(const Napi::CallbackInfo& info) { return Req(info, PTRACE_SEIZE, "PTRACE_SEIZE"); }
Napi::Value Interrupt(const Napi::CallbackInfo& info) { return Req(info, PTRACE_INTERRUPT, "PTRACE_INTERRUPT"); }
Napi::Value Detach(const Napi::CallbackInfo& info) { return Req(info, PTRACE_DETACH, "PTRACE_DETACH"); }

Napi::Value Wait(const Napi::CallbackInfo& info) {
  int status = 0;
  pid_t r;
  do r = waitpid(Tid(info), &status, __WALL); while (r < 0 && errno == EINTR);
  if (r < 0) return tsvmm::ThrowErrno(info.Env(), "waitpid", errno);
  return Napi::Number::New(info.Env(), status);
}

Napi::Value GetRegs(const Napi::CallbackInfo& info) {
  struct user_regs_struct regs;
  if (ptrace(PTRACE_GETREGS, Tid(info), nullptr, &regs) < 0) return tsvmm::ThrowErrno(info.Env(), "PTRACE_GETREGS", errno);
  return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(&regs), sizeof regs);
}

Napi::Value SetRegs(const Napi::CallbackInfo& info) {
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  struct user_regs_struct regs;
  if (buf.Length() != sizeof regs) return tsvmm::ThrowErrno(info.Env(), "PTRACE_SETREGS", EINVAL);
  memcpy(&regs, buf.Data(), sizeof regs);
  if (ptrace(PTRACE_SETREGS, Tid(info), nullptr, &regs) < 0) return tsvmm::ThrowErrno(info.Env(), "PTRACE_SETREGS", errno);
  return info.Env().Undefined();
}

}  // namespace

namespace tsvmm {
void InitPtrace(Napi::Env env, Napi::Object exports) {
  exports.Set("ptraceSeize", Napi::Function::New(env, Seize));
  exports.Set("ptraceInterrupt", Napi::Function::New(env, Interrupt));
  exports.Set("ptraceWait", Napi::Function::New(env, Wait));
  exports.Set("ptraceGetRegs", Napi::Function::New(env, GetRegs));
  exports.Set("ptraceSetRegs", Napi::Function::New(env, SetRegs));
  exports.Set("ptraceDetach", Napi::Function::New(env, Detach));
  Napi::Object off = Napi::Object::New(env);
#define REG(name) off.Set(#name, Napi::Number::New(env, offsetof(struct user_regs_struct, name)))
  REG(r15); REG(r14); REG(r13); REG(r12); REG(rbp); REG(rbx); REG(r11); REG(r10); REG(r9); REG(r8);
  REG(rax); REG(rcx); REG(rdx); REG(rsi); REG(rdi); REG(rip); REG(eflags); REG(rsp);
#undef REG
  exports.Set("ptraceRegOffsets", off);
  exports.Set("ptraceRegsSize", Napi::Number::New(env, sizeof(struct user_regs_struct)));
}
}  // namespace tsvmm
