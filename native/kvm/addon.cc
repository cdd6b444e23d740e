// tsvmm native core: the thin layer between TypeScript and the kernel.
//
// Only what must be native lives here: file descriptors, ioctl, mmap,
// memfd/eventfd, and the signal used to kick a vCPU thread out of KVM_RUN.
// Every ioctl number and struct layout comes from <linux/kvm.h> (exported by
// constants.cc); typed wrappers and all policy live in TypeScript
// (vmm/kvm/). Errors become JS exceptions carrying the errno name in `code`.
#include <napi.h>

#include "errno-error.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "constants.h"

namespace tsvmm {
void RegisterKeeper(Napi::Env env, Napi::Object exports);  // keeper-binding.cc
void InitUring(Napi::Env env, Napi::Object exports);       // uring.cc
void InitPoller(Napi::Env env, Napi::Object exports);      // poller.cc
void InitFdio(Napi::Env env, Napi::Object exports);        // fdio.cc
void InitPidfd(Napi::Env env, Napi::Object exports);       // pidfd.cc
void InitPtrace(Napi::Env env, Napi::Object exports);      // ptrace.cc
void InitSeccomp(Napi::Env env, Napi::Object exports);     // seccomp-binding.cc
void InitFastExit(Napi::Env env, Napi::Object exports);    // fastexit.cc
}

namespace {

using tsvmm::ErrnoError;

#define THROW_ERRNO(env, what)                     \
  do {                                             \
    ErrnoError(env, what, errno).ThrowAsJavaScriptException(); \
    return env.Undefined();                        \
  } while (0)

int64_t ArgInt(const Napi::Value& v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Int64Value(&lossless);
  }
  return v.As<Napi::Number>().Int64Value();
}

// A pointer to the bytes of a Buffer/TypedArray/DataView/ArrayBuffer.
bool BytesOf(const Napi::Value& v, void** data, size_t* len) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    *data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    *len = ta.ByteLength();
    return true;
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    *data = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    *len = dv.ByteLength();
    return true;
  }
  if (v.IsArrayBuffer()) {
    auto ab = v.As<Napi::ArrayBuffer>();
    *data = ab.Data();
    *len = ab.ByteLength();
    return true;
  }
  return false;
}

// open(path, flags) -> fd
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int fd = open(path.c_str(), info[1].As<Napi::Number>().Int32Value() | O_CLOEXEC);
  if (fd < 0) THROW_ERRNO(env, ("open " + path).c_str());
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  close(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// ioctl(fd, request, arg) -> result. arg is an integer (passed by value) or
// a byte view (passed by pointer; the kernel reads/writes it in place).
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  unsigned long req = static_cast<unsigned long>(ArgInt(info[1]));
  long r;
  void* data;
  size_t len;
  if (info.Length() < 3 || info[2].IsUndefined()) {
    r = ioctl(fd, req, 0);
  } else if (BytesOf(info[2], &data, &len)) {
    r = ioctl(fd, req, data);
  } else {
    r = ioctl(fd, req, static_cast<unsigned long>(ArgInt(info[2])));
  }
  if (r < 0) THROW_ERRNO(env, "ioctl");
  return Napi::Number::New(env, static_cast<double>(r));
}

// run(vcpuFd) -> 0 or -errno. The vCPU hot path: no exception on EINTR/EAGAIN
// (a kick), no allocation.
Napi::Value Run(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int r = ioctl(fd, KVM_RUN, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : r);
}

void Unmap(Napi::Env, void* data, size_t* len) {
  munmap(data, *len);
  delete len;
}

// mmap(fd, length, offset, writable) -> ArrayBuffer over a MAP_SHARED mapping
// (no copy; unmapped when the ArrayBuffer is collected).
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  size_t length = static_cast<size_t>(ArgInt(info[1]));
  off_t offset = static_cast<off_t>(ArgInt(info[2]));
  bool writable = info.Length() < 4 || info[3].ToBoolean();
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(nullptr, length, prot, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) THROW_ERRNO(env, "mmap");
  return Napi::ArrayBuffer::New(env, p, length, Unmap, new size_t(length));
}

// madviseHugepage(arrayBuffer) -> 0 or -errno: madvise(MADV_HUGEPAGE) over a
// mapping (transparent huge pages where the host allows them for it).
Napi::Value MadviseHugepage(const Napi::CallbackInfo& info) {
  void* data;
  size_t len;
  if (!BytesOf(info[0], &data, &len)) return Napi::Number::New(info.Env(), -EINVAL);
  int r = madvise(data, len, MADV_HUGEPAGE);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// madvisePopulate(view, write) -> 0 or -errno: madvise(MADV_POPULATE_READ or _WRITE) over the
// whole pages inside a view: faults them in now, in one call, instead of one fault per page later
// (a snapshot prepares its copy this way before it pauses the guest).
Napi::Value MadvisePopulate(const Napi::CallbackInfo& info) {
  void* data;
  size_t len;
  if (!BytesOf(info[0], &data, &len)) return Napi::Number::New(info.Env(), -EINVAL);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t start = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(data) + len) & ~(page - 1);
  if (end <= start) return Napi::Number::New(info.Env(), 0);
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif
  int r = madvise(reinterpret_cast<void*>(start), end - start, info[1].ToBoolean() ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// mallocTrim() -> 1 if glibc gave memory back, else 0: malloc_trim(0), which returns the free
// pages of every malloc arena to the kernel (madvise(MADV_DONTNEED); brk for the top of the main
// heap). What a process's start compiled and parsed is freed to malloc but kept by it: a few MiB
// per component (issue 19, contracts/malloc-trim.ts).
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), malloc_trim(0));
}

// mmapAnon(length) -> ArrayBuffer over private anonymous memory (unmapped when collected).
Napi::Value MmapAnon(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t length = static_cast<size_t>(ArgInt(info[0]));
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) THROW_ERRNO(env, "mmap");
  return Napi::ArrayBuffer::New(env, p, length, Unmap, new size_t(length));
}

// address(arrayBuffer) -> bigint host virtual address of its first byte.
Napi::Value Address(const Napi::CallbackInfo& info) {
  void* data;
  size_t len;
  if (!BytesOf(info[0], &data, &len)) {
    Napi::TypeError::New(info.Env(), "address: expected a byte view").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data)));
}

// memfdCreate(name, size) -> fd, sized with ftruncate.
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  int64_t size = ArgInt(info[1]);
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), 0u));  // inheritable on purpose
  if (fd < 0) THROW_ERRNO(env, "memfd_create");
  if (ftruncate(fd, size) < 0) {
    int e = errno;
    close(fd);
    ErrnoError(env, "ftruncate", e).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// eventfd(initval, nonblock) -> fd
Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned init = info[0].As<Napi::Number>().Uint32Value();
  int flags = (info.Length() > 1 && info[1].ToBoolean()) ? EFD_NONBLOCK : 0;
  int fd = eventfd(init, flags);
  if (fd < 0) THROW_ERRNO(env, "eventfd");
  return Napi::Number::New(env, fd);
}

// fdSize(fd) -> size in bytes, for checking inherited memfds. fstat, not lseek(SEEK_END): the
// offset of a file description shared with other processes stays where it was.
Napi::Value FdSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct stat st;
  if (fstat(fd, &st) < 0) THROW_ERRNO(env, "fstat");
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value Gettid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// The kick: a signal with an empty handler (no SA_RESTART), so a thread
// blocked in KVM_RUN returns EINTR. The vCPU sets kvm_run.immediate_exit
// first so a kick that lands before KVM_RUN is not lost.
void KickHandler(int) {}

Napi::Value InstallKick(const Napi::CallbackInfo& info) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = KickHandler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGRTMIN + 4, &sa, nullptr);
  return Napi::Number::New(info.Env(), SIGRTMIN + 4);
}

Napi::Value Kick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid = info[0].As<Napi::Number>().Int32Value();
  if (syscall(SYS_tgkill, getpid(), tid, SIGRTMIN + 4) < 0) THROW_ERRNO(env, "tgkill");
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl));
  exports.Set("run", Napi::Function::New(env, Run));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("address", Napi::Function::New(env, Address));
  exports.Set("madviseHugepage", Napi::Function::New(env, MadviseHugepage));
  exports.Set("madvisePopulate", Napi::Function::New(env, MadvisePopulate));
  exports.Set("mmapAnon", Napi::Function::New(env, MmapAnon));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("eventfd", Napi::Function::New(env, Eventfd));
  exports.Set("fdSize", Napi::Function::New(env, FdSize));
  exports.Set("gettid", Napi::Function::New(env, Gettid));
  exports.Set("installKick", Napi::Function::New(env, InstallKick));
  exports.Set("kick", Napi::Function::New(env, Kick));
  exports.Set("constants", tsvmm::Constants(env));
  tsvmm::InitPoller(env, exports);
  tsvmm::RegisterKeeper(env, exports);
  tsvmm::InitUring(env, exports);
  tsvmm::InitFdio(env, exports);
  tsvmm::InitPidfd(env, exports);
  tsvmm::InitPtrace(env, exports);
  tsvmm::InitSeccomp(env, exports);
  tsvmm::InitFastExit(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(tsvmm_kvm, Init)
