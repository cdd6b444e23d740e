// pidfd.cc: the process plumbing a supervisor needs to adopt components it did not start
// (recovery/adopt.ts): take an fd out of another process (pidfd_getfd), signal it through its
// pidfd, and learn when and how it exited although it is not our child (no waitid: the exit
// status comes from PIDFD_GET_INFO, Linux 6.15+, or from /proc while it is a zombie). Only
// mechanism: which fds to take and what a death means is decided in TypeScript.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <string>

#include "errno-error.h"

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

namespace tsvmm {
namespace {

// <linux/pidfd.h> of Linux 6.15+ (absent from older headers): PIDFD_GET_INFO, first version (64 bytes).
struct pidfd_info_v0 {
  uint64_t mask;
  uint64_t cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
static_assert(sizeof(pidfd_info_v0) == 64, "PIDFD_INFO_SIZE_VER0");
constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, pidfd_info_v0);
constexpr uint64_t kPidfdInfoExit = 1ull << 3;

// The wait status (as waitpid's) of an exited process behind `pidfd`, or -1 while unknown.
int ExitStatus(int pidfd, int pid) {
  pidfd_info_v0 info;
  memset(&info, 0, sizeof info);
  info.mask = kPidfdInfoExit;
  if (ioctl(pidfd, kPidfdGetInfo, &info) == 0 && (info.mask & kPidfdInfoExit)) return info.exit_code;
  // Older kernels, or not reaped yet: a zombie's /proc/PID/stat has it (field 52). Still the same
  // process only while the pidfd says it has not been reaped; checked by the caller's start time.
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[2048];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  if (!p || p[1] != ' ' || p[2] != 'Z') return -1;
  // Fields after the comm: state is field 3; exit_code is field 52.
  int field = 2;
  for (char* q = p + 1; *q; q++) {
    if (*q == ' ' && ++field == 52) return atoi(q + 1);
  }
  return -1;
}

Napi::Object StatusObject(Napi::Env env, int status) {
  Napi::Object r = Napi::Object::New(env);
  if (status < 0) r.Set("unknown", Napi::Boolean::New(env, true));
  else if ((status & 0x7f) == 0) r.Set("code", Napi::Number::New(env, (status >> 8) & 0xff));
  else r.Set("signal", Napi::Number::New(env, status & 0x7f));
  return r;
}

class PidfdWaitWorker : public Napi::AsyncWorker {
 public:
  PidfdWaitWorker(Napi::Env env, int pidfd, int pid)
      : Napi::AsyncWorker(env), pidfd_(pidfd), pid_(pid), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    // Exited only when a pidfd polls readable, and a second poll says so too: a poll that came back
    // otherwise (interrupted, or with a value no poll of one fd returns, as a flipped register in
    // this thread made it in fault campaign 6) is repeated, never taken for an exit (that started a
    // second driver-domain beside the live one). contracts/pidfd.ts waitExited checks it once more.
    for (;;) {
      struct pollfd p = {pidfd_, POLLIN, 0};
      if (poll(&p, 1, -1) != 1 || !(p.revents & POLLIN)) continue;
      struct pollfd again = {pidfd_, POLLIN, 0};
      if (poll(&again, 1, 0) == 1) break;
    }
    // Exited. Its status appears once its parent (init, or a subreaper) reaps it: give that 200 ms.
    for (int i = 0; i < 100; i++) {
      status_ = ExitStatus(pidfd_, pid_);
      if (status_ >= 0) break;
      struct timespec ts = {0, 2 * 1000 * 1000};
      nanosleep(&ts, nullptr);
    }
  }
  void OnOK() override { deferred_.Resolve(StatusObject(Env(), status_)); }

 private:
  int pidfd_;
  int pid_;
  int status_ = -1;
  Napi::Promise::Deferred deferred_;
};

// pidfdWait(pidfd, pid) -> Promise<{code} | {signal} | {unknown: true}>: resolves (off the event loop)
// when the process behind pidfd has exited, whoever its parent is. Does not reap and does not close pidfd.
Napi::Value PidfdWait(const Napi::CallbackInfo& info) {
  auto* w = new PidfdWaitWorker(info.Env(), info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// pidfdExit(pidfd, pid) -> {code} | {signal} | {unknown: true}, now (the process has exited, or unknown).
Napi::Value PidfdExit(const Napi::CallbackInfo& info) {
  return StatusObject(info.Env(), ExitStatus(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value()));
}

// pidfdGetfd(pidfd, targetFd) -> a new fd (close-on-exec) for the open file behind targetFd in that
// process (pidfd_getfd(2): same uid and ptrace access, or CAP_SYS_PTRACE). Throws with the errno.
Napi::Value PidfdGetfd(const Napi::CallbackInfo& info) {
  long r = syscall(SYS_pidfd_getfd, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(), 0);
  if (r < 0) return ThrowErrno(info.Env(), "pidfd_getfd", errno);
  return Napi::Number::New(info.Env(), r);
}

// pidfdSignal(pidfd, sig) -> 0 | -errno: signals exactly that process (never a recycled pid).
Napi::Value PidfdSignal(const Napi::CallbackInfo& info) {
  long r = syscall(SYS_pidfd_send_signal, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(), nullptr, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

}  // namespace

void InitPidfd(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdWait", Napi::Function::New(env, PidfdWait));
  exports.Set("pidfdExit", Napi::Function::New(env, PidfdExit));
  exports.Set("pidfdGetfd", Napi::Function::New(env, PidfdGetfd));
  exports.Set("pidfdSignal", Napi::Function::New(env, PidfdSignal));
}

}  // namespace tsvmm
