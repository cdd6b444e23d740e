// fastexit.cc: KVM_RUN with the exits that need no policy answered in C, so the vCPU thread
// enters JavaScript only for the others (one N-API crossing per exit JavaScript handles, none for
// the rest).
//
// What counts as "no policy" is decided in TypeScript (vmm/platform.ts fixedPorts) and handed over
// once per vCPU thread as a table of port rules:
//   write rule: an OUT of `size` bytes to `port` has no effect (the exit is only counted);
//   read rule:  an IN from `port` answers `value`, OR `flag` if the u32 words at `a` and `b` differ
//               (a status register whose "data ready" bit is a non-empty ring in shared memory:
//               the UART's LSR over the platform page's RX head/tail).
// The loop keeps the exit journal's protocol (vmm/restore.ts SerialLineJournal): before each
// KVM_RUN, kvm_run.exit_reason = sentinel and the journal's handled bit cleared; after an exit it
// answered, the handled bit set. The rest of the commit word (line length, ring tag) is the vCPU
// thread's and is left as it is. Exits it does not answer go back to JavaScript, which counts them.
#include <napi.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/kvm.h>

#include "keeper.h"

namespace {

struct PortRule {
  uint16_t port;
  uint8_t size;
  uint8_t write;   // 1: OUT ignored; 0: IN answered
  uint32_t value;
  uint32_t flag;
  const volatile uint32_t* a;
  const volatile uint32_t* b;
};

constexpr int kMaxRules = 16;

struct FastConfig {
  struct kvm_run* run = nullptr;
  uint32_t* commit = nullptr;  // the journal's commit word, or null (no journal)
  double* counters = nullptr;  // exit counters by reason (Float64 slots), or null
  uint32_t ncounters = 0;
  int nrules = 0;
  PortRule rules[kMaxRules];
};

thread_local FastConfig g;

uintptr_t Addr(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless;
    return static_cast<uintptr_t>(v.As<Napi::BigInt>().Uint64Value(&lossless));
  }
  return v.IsNumber() ? static_cast<uintptr_t>(v.As<Napi::Number>().Int64Value()) : 0;
}

// fastExitInit({ run, commit?, counters?, ncounters?, rules: [{ port, size, write, value?, flag?, a?, b? }] })
// for the calling thread's vCPU. Addresses are bigints (native.address).
Napi::Value FastExitInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Array rules = o.Get("rules").As<Napi::Array>();
  if (rules.Length() > kMaxRules) {
    Napi::RangeError::New(env, "fastExitInit: too many port rules").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  FastConfig c;
  c.run = reinterpret_cast<struct kvm_run*>(Addr(o.Get("run")));
  c.commit = reinterpret_cast<uint32_t*>(o.Has("commit") ? Addr(o.Get("commit")) : 0);
  c.counters = reinterpret_cast<double*>(o.Has("counters") ? Addr(o.Get("counters")) : 0);
  c.ncounters = o.Has("ncounters") ? o.Get("ncounters").As<Napi::Number>().Uint32Value() : 0;
  c.nrules = static_cast<int>(rules.Length());
  for (uint32_t i = 0; i < rules.Length(); i++) {
    Napi::Object r = rules.Get(i).As<Napi::Object>();
    PortRule& p = c.rules[i];
    p.port = static_cast<uint16_t>(r.Get("port").As<Napi::Number>().Uint32Value());
    p.size = static_cast<uint8_t>(r.Get("size").As<Napi::Number>().Uint32Value());
    p.write = r.Get("write").ToBoolean() ? 1 : 0;
    p.value = r.Has("value") ? r.Get("value").As<Napi::Number>().Uint32Value() : 0;
    p.flag = r.Has("flag") ? r.Get("flag").As<Napi::Number>().Uint32Value() : 0;
    p.a = reinterpret_cast<const volatile uint32_t*>(r.Has("a") ? Addr(r.Get("a")) : 0);
    p.b = reinterpret_cast<const volatile uint32_t*>(r.Has("b") ? Addr(r.Get("b")) : 0);
  }
  if (!c.run) {
    Napi::TypeError::New(env, "fastExitInit: no kvm_run address").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  g = c;
  return env.Undefined();
}

// Answers an IO exit by the rules: true if it did.
inline bool Answer(struct kvm_run* run) {
  if (run->io.count != 1) return false;
  uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
  bool out = run->io.direction == KVM_EXIT_IO_OUT;
  for (int i = 0; i < g.nrules; i++) {
    const PortRule& p = g.rules[i];
    if (p.port != run->io.port || p.size != run->io.size || p.write != out) continue;
    if (!out) {
      uint32_t v = p.value;
      if (p.flag && __atomic_load_n(p.a, __ATOMIC_ACQUIRE) != __atomic_load_n(p.b, __ATOMIC_ACQUIRE)) v |= p.flag;
      memcpy(data, &v, p.size);
    }
    return true;
  }
  return false;
}

// runFast(vcpuFd) -> 0 (an exit for JavaScript, in kvm_run) or -errno (a kick: -EINTR / -EAGAIN).
Napi::Value RunFast(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct kvm_run* run = g.run;
  for (;;) {
    if (g.commit) {
      __atomic_store_n(&run->exit_reason, TSVMM_EXIT_SENTINEL, __ATOMIC_RELAXED);
      __atomic_store_n(g.commit, __atomic_load_n(g.commit, __ATOMIC_RELAXED) & ~TSVMM_JOURNAL_HANDLED, __ATOMIC_RELEASE);
    }
    int r = ioctl(fd, KVM_RUN, 0);
    if (r < 0) return Napi::Number::New(info.Env(), -errno);
    uint32_t reason = run->exit_reason;
    if (reason != KVM_EXIT_IO || !Answer(run)) return Napi::Number::New(info.Env(), 0);
    if (g.counters && reason < g.ncounters) g.counters[reason] += 1;
    if (g.commit) __atomic_store_n(g.commit, __atomic_load_n(g.commit, __ATOMIC_RELAXED) | TSVMM_JOURNAL_HANDLED, __ATOMIC_RELEASE);
  }
}

}  // namespace

namespace tsvmm {
void InitFastExit(Napi::Env env, Napi::Object exports) {
  exports.Set("fastExitInit", Napi::Function::New(env, FastExitInit));
  exports.Set("runFast", Napi::Function::New(env, RunFast));
}
}  // namespace tsvmm
