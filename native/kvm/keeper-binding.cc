// keeper-binding.cc: the JS face of the keeper (keeper.c) and of the process
// plumbing recovery needs (waiting for and reaping a child by pidfd). Only
// mechanism: which fds, which addresses, which MSRs all come from TypeScript.
#include <napi.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <math.h>
#include <time.h>

#include "errno-error.h"
#include "keeper.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace tsvmm {
namespace {

int64_t Int(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Int64Value(&lossless);
  }
  return v.As<Napi::Number>().Int64Value();
}

// One keeper per vmm process: its configuration must stay put (the keeper reads it after the vmm died).
tsvmm_keeper_config g_cfg;
bool g_started = false;

// snapshotTotalSize(ncpus) -> bytes the snapshot memfd needs.
Napi::Value SnapshotTotalSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), tsvmm_snap_total_size(info[0].As<Napi::Number>().Uint32Value()));
}

// snapshotFormat(fd, ncpus): a fresh header (state EMPTY) and zeroed journals.
Napi::Value SnapshotFormat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t ncpus = info[1].As<Napi::Number>().Uint32Value();
  if (ncpus == 0 || ncpus > TSVMM_MAX_VCPUS) return ThrowErrno(env, "snapshotFormat: bad vCPU count", EINVAL);
  uint32_t size = tsvmm_snap_total_size(ncpus);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ThrowErrno(env, "snapshotFormat: mmap", errno);
  tsvmm_snap_format(static_cast<uint8_t*>(p), ncpus);
  munmap(p, size);
  return env.Undefined();
}

// keeperStart({ vmFd, snapFd, vcpus: [{ fd, run: bigint address of its kvm_run }], msrs: number[], irqfds?,
//   dormant?, seccomp?: 0 | 1 kill | 2 log (its own filter, keeper.c) }) -> keeper pid. A dormant keeper (a warm standby's) saves nothing until takeover() arms it.
Napi::Value KeeperStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g_started) return ThrowErrno(env, "keeperStart: this vmm already has a keeper", EBUSY);
  Napi::Object o = info[0].As<Napi::Object>();
  Napi::Array vcpus = o.Get("vcpus").As<Napi::Array>();
  Napi::Array msrs = o.Get("msrs").As<Napi::Array>();
  int snapFd = o.Get("snapFd").As<Napi::Number>().Int32Value();
  if (vcpus.Length() == 0 || vcpus.Length() > TSVMM_MAX_VCPUS) return ThrowErrno(env, "keeperStart: bad vCPU count", EINVAL);
  if (msrs.Length() > TSVMM_MAX_MSRS) return ThrowErrno(env, "keeperStart: too many MSRs", E2BIG);

  uint32_t size = tsvmm_snap_total_size(vcpus.Length());
  off_t have = lseek(snapFd, 0, SEEK_END);
  if (have < static_cast<off_t>(size)) return ThrowErrno(env, "keeperStart: snapshot memfd is too small", EINVAL);
  void* snap = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, snapFd, 0);
  if (snap == MAP_FAILED) return ThrowErrno(env, "keeperStart: mmap snapshot", errno);
  const tsvmm_snap_header* h = static_cast<const tsvmm_snap_header*>(snap);
  if (h->magic != TSVMM_SNAP_MAGIC || h->version != TSVMM_SNAP_VERSION || h->ncpus != vcpus.Length()) {
    munmap(snap, size);
    return ThrowErrno(env, "keeperStart: snapshot memfd is not formatted for this VM", EINVAL);
  }

  tsvmm_keeper_config& c = g_cfg;
  memset(&c, 0, sizeof c);
  c.vm_fd = o.Get("vmFd").As<Napi::Number>().Int32Value();
  c.ncpus = static_cast<int>(vcpus.Length());
  for (uint32_t i = 0; i < vcpus.Length(); i++) {
    Napi::Object v = vcpus.Get(i).As<Napi::Object>();
    c.vcpu_fd[i] = v.Get("fd").As<Napi::Number>().Int32Value();
    c.run[i] = reinterpret_cast<struct kvm_run*>(static_cast<uintptr_t>(Int(v.Get("run"))));
  }
  if (o.Has("irqfds")) {
    Napi::Array irqfds = o.Get("irqfds").As<Napi::Array>();
    if (irqfds.Length() > TSVMM_MAX_IRQFDS) return ThrowErrno(env, "keeperStart: too many irqfds", E2BIG);
    c.nirqfds = irqfds.Length();
    for (uint32_t i = 0; i < irqfds.Length(); i++) {
      Napi::Object q = irqfds.Get(i).As<Napi::Object>();
      c.irqfd_fd[i] = q.Get("fd").As<Napi::Number>().Int32Value();
      c.irqfd_gsi[i] = q.Get("gsi").As<Napi::Number>().Uint32Value();
    }
  }
  c.nmsrs = msrs.Length();
  for (uint32_t i = 0; i < msrs.Length(); i++) c.msr_index[i] = msrs.Get(i).As<Napi::Number>().Uint32Value();
  c.snap = static_cast<uint8_t*>(snap);
  c.snap_size = size;
  if (o.Has("coalescedRing")) c.coalesced_ring = reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(Int(o.Get("coalescedRing"))));
  c.vmm_pidfd = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (c.vmm_pidfd < 0) return ThrowErrno(env, "keeperStart: pidfd_open", errno);
  c.stop_efd = eventfd(0, EFD_CLOEXEC);
  if (c.stop_efd < 0) return ThrowErrno(env, "keeperStart: eventfd", errno);
  c.armed = o.Has("dormant") && o.Get("dormant").ToBoolean() ? 0 : 1;
  c.seccomp = o.Has("seccomp") ? o.Get("seccomp").As<Napi::Number>().Uint32Value() : 0;
  int pid = tsvmm_keeper_start(&c);
  if (pid < 0) return ThrowErrno(env, "keeperStart: clone", errno ? errno : ENOMEM);
  g_started = true;
  return Napi::Number::New(env, pid);
}

// keeperRestart() -> pid of a new, armed keeper, once this running vmm's keeper has exited (the
// supervisor saw it die, or killed it stopped). Throws EBUSY while the old one is still alive.
Napi::Value KeeperRestart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_started) return ThrowErrno(env, "keeperRestart: this vmm has no keeper to replace", EINVAL);
  int pid = tsvmm_keeper_restart(&g_cfg);
  if (pid < 0) return ThrowErrno(env, pid == -EBUSY ? "keeperRestart: the previous keeper has not exited" : "keeperRestart: clone", -pid);
  return Napi::Number::New(env, pid);
}

// keeperStop(): the guest exited normally; the keeper exits without saving.
Napi::Value KeeperStop(const Napi::CallbackInfo& info) {
  if (g_started) {
    uint64_t one = 1;
    ssize_t r = write(g_cfg.stop_efd, &one, sizeof one);
    (void)r;
  }
  return info.Env().Undefined();
}

class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, int pidfd) : Napi::AsyncWorker(env), pidfd_(pidfd), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    struct pollfd p = {pidfd_, POLLIN, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
    memset(&info_, 0, sizeof info_);
    if (syscall(SYS_waitid, P_PIDFD, pidfd_, &info_, WEXITED | __WALL, nullptr) < 0) err_ = errno;
    close(pidfd_);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object r = Napi::Object::New(env);
    if (err_) {
      r.Set("error", Napi::String::New(env, strerror(err_)));
    } else if (info_.si_code == CLD_EXITED) {
      r.Set("code", Napi::Number::New(env, info_.si_status));
    } else {
      r.Set("signal", Napi::Number::New(env, info_.si_status));
    }
    deferred_.Resolve(r);
  }

 private:
  int pidfd_;
  int err_ = 0;
  siginfo_t info_;
  Napi::Promise::Deferred deferred_;
};

// waitExit(pid) -> Promise<{code} | {signal} | {error}>: waits (off the event loop) for a child
// of this process that Node did not spawn (a keeper) to exit, and reaps it.
Napi::Value WaitExit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int pid = info[0].As<Napi::Number>().Int32Value();
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return ThrowErrno(env, "waitExit: pidfd_open", errno);
  auto* w = new WaitWorker(env, pidfd);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// The u32 at byteOffset of an ArrayBuffer (a shared mapping from mmap) or of a typed array (which may
// view a SharedArrayBuffer: a word the vmm's threads share), or nullptr.
uint32_t* WordAt(napi_env env, napi_value v, uint32_t off) {
  bool is;
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    void* data;
    size_t len;
    if (napi_get_arraybuffer_info(env, v, &data, &len) != napi_ok || off % 4 || off + 4 > len) return nullptr;
    return reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(data) + off);
  }
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return nullptr;
  napi_typedarray_type type;
  size_t length;
  void* data;  // the view's first element
  if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) != napi_ok) return nullptr;
  if ((type != napi_int32_array && type != napi_uint32_array) || off % 4 || off + 4 > length * 4) return nullptr;
  return reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(data) + off);
}

uint32_t* WordOf(const Napi::CallbackInfo& info) {
  return WordAt(info.Env(), info[0], info[1].As<Napi::Number>().Uint32Value());
}

// { vmFd, snap: ArrayBuffer (the snapshot memfd's mapping), vcpuFds: number[], irqfds: [{ fd, gsi }] }.
bool ParseRestore(Napi::Env env, const Napi::Object& o, tsvmm_restore_config* c) {
  memset(c, 0, sizeof *c);
  Napi::Array vcpus = o.Get("vcpuFds").As<Napi::Array>();
  Napi::Array irqfds = o.Get("irqfds").As<Napi::Array>();
  if (vcpus.Length() == 0 || vcpus.Length() > TSVMM_MAX_VCPUS || irqfds.Length() > TSVMM_MAX_IRQFDS || !o.Get("snap").IsArrayBuffer()) {
    ThrowErrno(env, "restore: bad configuration", EINVAL);
    return false;
  }
  auto snap = o.Get("snap").As<Napi::ArrayBuffer>();
  c->snap = static_cast<uint8_t*>(snap.Data());
  if (snap.ByteLength() < tsvmm_snap_total_size(vcpus.Length())) {
    ThrowErrno(env, "restore: snapshot mapping is too small", EINVAL);
    return false;
  }
  const tsvmm_snap_header* h = reinterpret_cast<const tsvmm_snap_header*>(c->snap);
  if (h->magic != TSVMM_SNAP_MAGIC || h->version != TSVMM_SNAP_VERSION || h->ncpus != vcpus.Length()) {
    ThrowErrno(env, "restore: snapshot memfd is not formatted for this VM", EINVAL);
    return false;
  }
  c->vm_fd = o.Get("vmFd").As<Napi::Number>().Int32Value();
  c->ncpus = static_cast<int>(vcpus.Length());
  for (uint32_t i = 0; i < vcpus.Length(); i++) c->vcpu_fd[i] = vcpus.Get(i).As<Napi::Number>().Int32Value();
  c->nirqfds = irqfds.Length();
  for (uint32_t i = 0; i < irqfds.Length(); i++) {
    Napi::Object q = irqfds.Get(i).As<Napi::Object>();
    c->irqfd_fd[i] = q.Get("fd").As<Napi::Number>().Int32Value();
    c->irqfd_gsi[i] = q.Get("gsi").As<Napi::Number>().Uint32Value();
  }
  return true;
}

Napi::Object RestoreResult(Napi::Env env, int status, const tsvmm_restore_result& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("status", Napi::Number::New(env, status));
  o.Set("generation", Napi::Number::New(env, r.generation));
  o.Set("failStep", Napi::Number::New(env, r.fail_step));
  o.Set("failErrno", Napi::Number::New(env, r.fail_errno));
  o.Set("failVcpu", Napi::Number::New(env, r.fail_vcpu));
  Napi::Array refused = Napi::Array::New(env);
  for (uint32_t i = 0; i < r.nrefused && i < TSVMM_MAX_REFUSED_MSRS; i++) refused.Set(i, Napi::Number::New(env, r.refused_msr[i]));
  o.Set("refusedMsrs", refused);
  o.Set("diedNs", Napi::BigInt::New(env, r.died_ns));
  o.Set("savedNs", Napi::BigInt::New(env, r.saved_ns));
  o.Set("claimedNs", Napi::BigInt::New(env, r.claimed_ns));
  o.Set("ran", Napi::Boolean::New(env, r.ran != 0));
  o.Set("enteredNs", Napi::BigInt::New(env, r.entered_ns));
  o.Set("runRc", Napi::Number::New(env, r.run_rc));
  o.Set("resumedNs", Napi::BigInt::New(env, r.resumed_ns));
  o.Set("repaired", Napi::Number::New(env, r.repaired));
  return o;
}

// restore(cfg) -> { status: 0 | -1, failStep, ... }: sets the claimed snapshot's state into this VM (restore.c).
Napi::Value Restore(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static tsvmm_restore_config c;
  if (!ParseRestore(env, info[0].As<Napi::Object>(), &c)) return env.Undefined();
  tsvmm_restore_result r;
  memset(&r, 0, sizeof r);
  int status = tsvmm_restore(&c, &r);
  return RestoreResult(env, status, r);
}

tsvmm_restore_result g_last_takeover;

// takeover(cfg & { notifyFd?: timerfd, runVcpu?: { id, run: bigint address of its kvm_run } }, go: Int32Array
// (over a SharedArrayBuffer), timeoutMs) -> { status: 1 resumed | 0 timed out | -1 failed, ran, runRc, ... }:
// a warm standby's wait and takeover, blocking, native end to end (restore.c). Needs a dormant keeper.
Napi::Value Takeover(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_started || g_cfg.armed) return ThrowErrno(env, "takeover: start a dormant keeper first", EINVAL);
  static tsvmm_restore_config c;
  Napi::Object o = info[0].As<Napi::Object>();
  if (!ParseRestore(env, o, &c)) return env.Undefined();
  tsvmm_takeover_opts opts;
  memset(&opts, 0, sizeof opts);
  opts.go = WordAt(env, info[1], 0);
  if (!opts.go) return ThrowErrno(env, "takeover: go must be an Int32Array", EINVAL);
  opts.notify_timerfd = o.Has("notifyFd") ? o.Get("notifyFd").As<Napi::Number>().Int32Value() : -1;
  opts.notify_delay_ns = 2 * 1000 * 1000;
  opts.run_vcpu = -1;
  opts.publish = &g_last_takeover;
  if (o.Has("runVcpu")) {
    Napi::Object rv = o.Get("runVcpu").As<Napi::Object>();
    opts.run_vcpu = rv.Get("id").As<Napi::Number>().Int32Value();
    opts.run = reinterpret_cast<struct kvm_run*>(static_cast<uintptr_t>(Int(rv.Get("run"))));
  }
  tsvmm_restore_result r;
  memset(&r, 0, sizeof r);
  int status = tsvmm_takeover(&c, &g_cfg, &opts, info[2].As<Napi::Number>().Int32Value(), &r);
  return RestoreResult(env, status, r);
}

// snapshotClaim(snap: ArrayBuffer, timeoutMs) -> { state, claimed }: a cold restore's wait for the
// keeper (a futex, as the warm takeover's) and its claim of the saved generation (restore.c).
// state -1: the keeper did not finish in time.
Napi::Value SnapshotClaim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) return ThrowErrno(env, "snapshotClaim: expected the snapshot mapping", EINVAL);
  auto snap = info[0].As<Napi::ArrayBuffer>();
  if (snap.ByteLength() < sizeof(tsvmm_snap_header)) return ThrowErrno(env, "snapshotClaim: mapping too small", EINVAL);
  uint32_t claimed = 0;
  int state = tsvmm_snap_claim(static_cast<uint8_t*>(snap.Data()), info[1].As<Napi::Number>().Int32Value(), 0, &claimed);
  Napi::Object o = Napi::Object::New(env);
  o.Set("state", Napi::Number::New(env, state));
  o.Set("claimed", Napi::Boolean::New(env, claimed != 0));
  return o;
}

// snapshotVerify(snap: ArrayBuffer, ncpus) -> { status: 0 | -1, repaired, failStep, failErrno, failVcpu }:
// a claimed snapshot validated and, where one copy can, repaired before anything reads it (restore.c).
Napi::Value SnapshotVerify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) return ThrowErrno(env, "snapshotVerify: expected the snapshot mapping", EINVAL);
  auto snap = info[0].As<Napi::ArrayBuffer>();
  uint32_t ncpus = info[1].As<Napi::Number>().Uint32Value();
  if (ncpus == 0 || ncpus > TSVMM_MAX_VCPUS || snap.ByteLength() < tsvmm_snap_total_size(ncpus)) return ThrowErrno(env, "snapshotVerify: mapping too small", EINVAL);
  tsvmm_restore_result r;
  memset(&r, 0, sizeof r);
  int status = tsvmm_snap_verify(static_cast<uint8_t*>(snap.Data()), ncpus, &r.repaired, &r);
  Napi::Object o = RestoreResult(env, status, r);
  return o;
}

// snapshotStepName(step, restoring) -> the step's name (keeper.h TSVMM_STEPS), or undefined.
Napi::Value SnapshotStepName(const Napi::CallbackInfo& info) {
  const char* n = tsvmm_step_name(info[0].As<Napi::Number>().Uint32Value(), info[1].ToBoolean());
  return n ? Napi::String::New(info.Env(), n) : info.Env().Undefined();
}

// snapshotSaveLive() -> ArrayBuffer: this vmm's whole snapshot (the keeper's layout, state SAVED),
// saved now by the keeper's code while the vCPUs are parked (keeper.c tsvmm_snap_save_live). On
// failure the image's header says why (state FAILED, fail_step...): the caller reads it.
Napi::Value SnapshotSaveLive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_started) return ThrowErrno(env, "snapshotSaveLive: this vmm runs without a keeper", EINVAL);
  Napi::ArrayBuffer image = Napi::ArrayBuffer::New(env, g_cfg.snap_size);
  tsvmm_snap_save_live(&g_cfg, static_cast<uint8_t*>(image.Data()));
  return image;
}

// timerfdCreate() -> a CLOCK_MONOTONIC timerfd (non-blocking): takeover()'s notifyFd.
Napi::Value TimerfdCreate(const Napi::CallbackInfo& info) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(info.Env(), "timerfd_create", errno);
  return Napi::Number::New(info.Env(), fd);
}

// lastTakeover() -> the result of this process's successful takeover (read when notifyFd fires).
Napi::Value LastTakeover(const Napi::CallbackInfo& info) {
  return RestoreResult(info.Env(), 1, g_last_takeover);
}

// futexWait(arrayBuffer, byteOffset, expected, timeoutMs) -> 0 (woken or the word differs) | -ETIMEDOUT | -errno.
// Blocking, on purpose: a warm standby has nothing else to do, and a blocked thread wakes fastest.
// Shared (not FUTEX_PRIVATE): the waker is another process mapping the same memfd.
Napi::Value FutexWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t* w = WordOf(info);
  if (!w) return ThrowErrno(env, "futexWait: bad buffer or offset", EINVAL);
  uint32_t expected = info[2].As<Napi::Number>().Uint32Value();
  double ms = info[3].As<Napi::Number>().DoubleValue();
  struct timespec ts = {static_cast<time_t>(ms / 1000), static_cast<long>(fmod(ms, 1000.0) * 1e6)};
  long r = syscall(SYS_futex, w, 0 /* FUTEX_WAIT */, expected, &ts, nullptr, 0);
  if (r < 0 && errno == EAGAIN) r = 0, errno = 0;
  return Napi::Number::New(env, r < 0 ? -errno : 0);
}

// futexWake(arrayBuffer, byteOffset) -> number woken.
Napi::Value FutexWake(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t* w = WordOf(info);
  if (!w) return ThrowErrno(env, "futexWake: bad buffer or offset", EINVAL);
  long r = syscall(SYS_futex, w, 1 /* FUTEX_WAKE */, 0x7fffffff, nullptr, nullptr, 0);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// crc32(arrayBuffer | view, byteOffset, length) -> CRC-32 (the snapshot's checksum, native: a restoring
// vmm verifies the snapshot without waiting for the JIT).
Napi::Value Crc32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* p = nullptr;
  size_t len = 0;
  if (info[0].IsArrayBuffer()) {
    auto ab = info[0].As<Napi::ArrayBuffer>();
    p = static_cast<uint8_t*>(ab.Data());
    len = ab.ByteLength();
  } else if (info[0].IsTypedArray()) {
    auto ta = info[0].As<Napi::TypedArray>();
    p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    len = ta.ByteLength();
  } else {
    return ThrowErrno(env, "crc32: expected an ArrayBuffer or a typed array", EINVAL);
  }
  uint64_t off = info[1].As<Napi::Number>().Int64Value();
  uint64_t n = info[2].As<Napi::Number>().Int64Value();
  if (off > len || n > len - off) return ThrowErrno(env, "crc32: range out of bounds", EINVAL);
  tsvmm_snap_format_crc_init();
  return Napi::Number::New(env, tsvmm_crc32(p + off, n));
}

// exitNow(code): _exit(code) at once. Node's own exit joins every worker thread, and a vCPU thread
// inside KVM_RUN may not come back to JavaScript for a long time; a component that must die (an
// uncaught exception) must not hang in its exit path.
Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  _exit(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// pidfdOpen(pid) -> fd | -errno.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  long r = syscall(SYS_pidfd_open, info[0].As<Napi::Number>().Int32Value(), 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : r);
}

// pollIn(fd, timeoutMs) -> 1 readable (a pidfd: the process exited) | 0 timeout | -errno. Blocking.
Napi::Value PollIn(const Napi::CallbackInfo& info) {
  struct pollfd p = {info[0].As<Napi::Number>().Int32Value(), POLLIN, 0};
  int r = poll(&p, 1, info[1].As<Napi::Number>().Int32Value());
  return Napi::Number::New(info.Env(), r < 0 ? -errno : r > 0 ? 1 : 0);
}

// mmHoldStart(seccompMode) -> pid of the driver-domain's address-space holder | -errno (keeper.c).
Napi::Value MmHoldStart(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), tsvmm_mm_holder_start(info[0].As<Napi::Number>().Uint32Value()));
}

// mmHoldRelease(): this process exits of its own accord; its holder need not linger.
Napi::Value MmHoldRelease(const Napi::CallbackInfo& info) {
  tsvmm_mm_holder_release();
  return info.Env().Undefined();
}

}  // namespace

void RegisterKeeper(Napi::Env env, Napi::Object exports) {
  exports.Set("snapshotTotalSize", Napi::Function::New(env, SnapshotTotalSize));
  exports.Set("snapshotFormat", Napi::Function::New(env, SnapshotFormat));
  exports.Set("keeperStart", Napi::Function::New(env, KeeperStart));
  exports.Set("keeperStop", Napi::Function::New(env, KeeperStop));
  exports.Set("keeperRestart", Napi::Function::New(env, KeeperRestart));
  exports.Set("restore", Napi::Function::New(env, Restore));
  exports.Set("takeover", Napi::Function::New(env, Takeover));
  exports.Set("lastTakeover", Napi::Function::New(env, LastTakeover));
  exports.Set("snapshotClaim", Napi::Function::New(env, SnapshotClaim));
  exports.Set("snapshotVerify", Napi::Function::New(env, SnapshotVerify));
  exports.Set("snapshotStepName", Napi::Function::New(env, SnapshotStepName));
  exports.Set("snapshotSaveLive", Napi::Function::New(env, SnapshotSaveLive));
  exports.Set("timerfdCreate", Napi::Function::New(env, TimerfdCreate));
  exports.Set("waitExit", Napi::Function::New(env, WaitExit));
  exports.Set("futexWait", Napi::Function::New(env, FutexWait));
  exports.Set("futexWake", Napi::Function::New(env, FutexWake));
  exports.Set("crc32", Napi::Function::New(env, Crc32));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow));
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pollIn", Napi::Function::New(env, PollIn));
  exports.Set("mmHoldStart", Napi::Function::New(env, MmHoldStart));
  exports.Set("mmHoldRelease", Napi::Function::New(env, MmHoldRelease));
  Napi::Object c = exports.Get("constants").As<Napi::Object>();
  for (uint64_t i = 0; i < tsvmm_snap_constants_count; i++) {
    c.Set(tsvmm_snap_constants[i].name, Napi::Number::New(env, tsvmm_snap_constants[i].value));
  }
}

}  // namespace tsvmm
