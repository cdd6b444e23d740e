// fastexit.cc: KVM_RUN with the exits that need no policy answered in C, so the vCPU thread
// enters JavaScript only for the others (one N-API crossing per exit JavaScript handles, none for
// the rest).
//
// What counts as "no policy" is decided in TypeScript (vmm/platform.ts fixedPorts, fixedMmio) and
// handed over once per vCPU thread as tables of port and MMIO rules:
//   write rule: an OUT of `size` bytes to `port` has no effect (the exit is only counted);
//   read rule:  an IN from `port` answers `value`, OR `flag` if the u32 words at `a` and `b` differ
//               (a status register whose "data ready" bit is a non-empty ring in shared memory:
//               the UART's LSR over the platform page's RX head/tail);
//   MMIO read rule:  a 4-byte read at `gpa` answers the atomic word at `word` & `mask` (a virtio
//                    device's InterruptStatus over its isr word in the state page);
//   MMIO write rule: a 4-byte write at `gpa` clears the written bits (& `mask`) of the word and adds
//                    `one` (its ACK count), in one compare-and-swap (the device's InterruptACK).
// The loop keeps the exit journal's protocol (vmm/restore.ts SerialLineJournal): before each
// KVM_RUN, kvm_run.exit_reason = sentinel, the ack intent cleared and the journal's handled bit
// cleared; after an exit it answered, the handled bit set. An ACK stores the intent (flag | the ACK
// count it is about to move) before each compare-and-swap, so a vmm killed before the handled bit
// is replayed only if the swap did not happen (keeper.h TSVMM_JOURNAL_ACK_INTENT). The rest of the
// commit word (line length, ring tag) is the vCPU thread's and is left as it is. Exits it does not
// answer go back to JavaScript, which counts them; the ones it answers are counted by reason and in
// the native slots (IO, MMIO) of the same counters.
#include <napi.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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

struct MmioRule {
  uint64_t gpa;
  uint8_t write;  // 1: InterruptACK (clear and count); 0: InterruptStatus (load)
  uint32_t mask;
  uint32_t one;
  volatile uint32_t* word;
};

constexpr int kMaxMmioRules = 64;

struct FastConfig {
  struct kvm_run* run = nullptr;
  uint32_t* commit = nullptr;  // the journal's commit word, or null (no journal)
  double* counters = nullptr;  // exit counters by reason (Float64 slots), or null
  uint32_t ncounters = 0;
  uint32_t native_io = UINT32_MAX;    // counter slots of the exits answered here, or none
  uint32_t native_mmio = UINT32_MAX;
  uint32_t* intent = nullptr;         // the journal's ack intent word, or null
  uint32_t intent_flag = 0;
  uint32_t intent_shift = 0;
  int nrules = 0;
  PortRule rules[kMaxRules];
  int nmmio = 0;
  MmioRule mmio[kMaxMmioRules];
  // Test hook (vmm/vcpu-thread.ts installDieHook, TSVMM_TEST_HOOKS only): SIGKILL the vmm in the
  // middle of the die_n-th MMIO write rule it answers, after the ack intent is stored and before
  // (die_after 0) or after (1) the compare-and-swap, always before the handled bit. 0: off.
  uint32_t die_n = 0;
  uint32_t die_count = 0;
  uint8_t die_after = 0;
};

thread_local FastConfig g;

uintptr_t Addr(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless;
    return static_cast<uintptr_t>(v.As<Napi::BigInt>().Uint64Value(&lossless));
  }
  return v.IsNumber() ? static_cast<uintptr_t>(v.As<Napi::Number>().Int64Value()) : 0;
}

uint32_t U32(const Napi::Object& o, const char* key, uint32_t dflt) {
  return o.Has(key) && o.Get(key).IsNumber() ? o.Get(key).As<Napi::Number>().Uint32Value() : dflt;
}

// fastExitInit({ run, commit?, ackIntent?, ackFlag?, ackShift?, counters?, ncounters?, nativeIoSlot?,
//   nativeMmioSlot?, rules: [{ port, size, write, value?, flag?, a?, b? }], mmio?: [{ gpa, write, word,
//   mask, one? }] }) for the calling thread's vCPU. Addresses are bigints (native.address).
Napi::Value FastExitInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Array rules = o.Get("rules").As<Napi::Array>();
  Napi::Array mmio = o.Has("mmio") && o.Get("mmio").IsArray() ? o.Get("mmio").As<Napi::Array>() : Napi::Array::New(env);
  if (rules.Length() > kMaxRules || mmio.Length() > kMaxMmioRules) {
    Napi::RangeError::New(env, "fastExitInit: too many port or MMIO rules").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  FastConfig c;
  c.run = reinterpret_cast<struct kvm_run*>(Addr(o.Get("run")));
  c.commit = reinterpret_cast<uint32_t*>(o.Has("commit") ? Addr(o.Get("commit")) : 0);
  c.counters = reinterpret_cast<double*>(o.Has("counters") ? Addr(o.Get("counters")) : 0);
  c.ncounters = U32(o, "ncounters", 0);
  c.native_io = U32(o, "nativeIoSlot", UINT32_MAX);
  c.native_mmio = U32(o, "nativeMmioSlot", UINT32_MAX);
  c.intent = reinterpret_cast<uint32_t*>(c.commit && o.Has("ackIntent") ? Addr(o.Get("ackIntent")) : 0);
  c.intent_flag = U32(o, "ackFlag", 0);
  c.intent_shift = U32(o, "ackShift", 0);
  if (o.Has("dieAtWrite") && o.Get("dieAtWrite").IsObject()) {
    Napi::Object d = o.Get("dieAtWrite").As<Napi::Object>();
    c.die_n = U32(d, "n", 0);
    c.die_after = d.Get("after").ToBoolean() ? 1 : 0;
  }
  c.nmmio = static_cast<int>(mmio.Length());
  for (uint32_t i = 0; i < mmio.Length(); i++) {
    Napi::Object r = mmio.Get(i).As<Napi::Object>();
    MmioRule& m = c.mmio[i];
    m.gpa = static_cast<uint64_t>(r.Get("gpa").As<Napi::Number>().Int64Value());
    m.write = r.Get("write").ToBoolean() ? 1 : 0;
    m.mask = U32(r, "mask", 0xffffffffu);
    m.one = U32(r, "one", 0);
    m.word = reinterpret_cast<volatile uint32_t*>(Addr(r.Get("word")));
    if (!m.word) {
      Napi::TypeError::New(env, "fastExitInit: an MMIO rule without a word address").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
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

[[noreturn]] void DieInWrite(uint64_t gpa, uint32_t value) {
  dprintf(2, "tsvmm vmm: test hook: dying in the middle of MMIO write #%u to 0x%llx = 0x%x (%s the device model applied it, in the native exit loop)\n",
          g.die_n, static_cast<unsigned long long>(gpa), value, g.die_after ? "after" : "before");
  kill(getpid(), SIGKILL);
  for (;;) pause();
}

// Answers a 4-byte MMIO exit by the MMIO rules: true if it did.
inline bool AnswerMmio(struct kvm_run* run) {
  if (run->mmio.len != 4) return false;
  uint64_t gpa = run->mmio.phys_addr;
  uint8_t w = run->mmio.is_write ? 1 : 0;
  for (int i = 0; i < g.nmmio; i++) {
    const MmioRule& m = g.mmio[i];
    if (m.gpa != gpa || m.write != w) continue;
    if (!w) {
      uint32_t v = __atomic_load_n(m.word, __ATOMIC_ACQUIRE) & m.mask;
      memcpy(run->mmio.data, &v, 4);
    } else {
      uint32_t bits;
      memcpy(&bits, run->mmio.data, 4);
      uint32_t old = __atomic_load_n(m.word, __ATOMIC_ACQUIRE), next;
      bool die = g.die_n && ++g.die_count == g.die_n;
      do {
        if (g.intent) __atomic_store_n(g.intent, g.intent_flag | (old >> g.intent_shift), __ATOMIC_RELEASE);
        next = (old & ~bits & m.mask) | ((old + m.one) & ~m.mask);
        if (die && !g.die_after) DieInWrite(gpa, bits);
      } while (!__atomic_compare_exchange_n(m.word, &old, next, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
      if (die) DieInWrite(gpa, bits);
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
      if (g.intent && __atomic_load_n(g.intent, __ATOMIC_RELAXED)) __atomic_store_n(g.intent, 0u, __ATOMIC_RELAXED);
      __atomic_store_n(g.commit, __atomic_load_n(g.commit, __ATOMIC_RELAXED) & ~TSVMM_JOURNAL_HANDLED, __ATOMIC_RELEASE);
    }
    int r = ioctl(fd, KVM_RUN, 0);
    if (r < 0) return Napi::Number::New(info.Env(), -errno);
    uint32_t reason = run->exit_reason;
    uint32_t slot;
    if (reason == KVM_EXIT_IO && Answer(run)) slot = g.native_io;
    else if (reason == KVM_EXIT_MMIO && AnswerMmio(run)) slot = g.native_mmio;
    else return Napi::Number::New(info.Env(), 0);
    if (g.counters && reason < g.ncounters) g.counters[reason] += 1;
    if (g.counters && slot < g.ncounters) g.counters[slot] += 1;
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
