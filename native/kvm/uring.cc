// io_uring through raw syscalls (no liburing): the thin native half of
// virtio/io-uring.ts. Only what must be native lives here: the three
// syscalls and the mmap of the rings. Building SQEs and reaping CQEs happens
// in TypeScript over the mapped rings, with the field offsets and constants
// exported below from <linux/io_uring.h> (nothing about the layout is
// hard-coded on the TypeScript side).
//
//   uringSetup(entries, flags) -> { fd, features, flags, sqEntries, cqEntries,
//                                   sq: ArrayBuffer, cq: ArrayBuffer, sqes: ArrayBuffer,
//                                   sqOff: {...}, cqOff: {...} }
//       throws (with `code`, e.g. ENOSYS/EPERM/EINVAL) when io_uring is unusable.
//       sq and cq are the same ArrayBuffer when the kernel has IORING_FEAT_SINGLE_MMAP.
//       The mappings are unmapped when their ArrayBuffers are collected; the
//       fd is closed by the caller (native.close).
//   uringEnter(fd, toSubmit, minComplete, flags) -> result or -errno (never throws: hot path)
//   uringRegisterEventfd(fd, eventfd, asyncOnly) -> 0 or -errno
//   uringConstants: opcodes, flags and the io_uring_sqe / io_uring_cqe field offsets
#include <napi.h>

#include "errno-error.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/io_uring.h>

namespace {

void Unmap(Napi::Env, void* data, size_t* len) {
  munmap(data, *len);
  delete len;
}

void* MapRing(int fd, size_t len, off_t off) {
  return mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, off);
}

Napi::Value UringSetup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  unsigned entries = info[0].As<Napi::Number>().Uint32Value();
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 0;
  int fd = static_cast<int>(syscall(__NR_io_uring_setup, entries, &p));
  if (fd < 0) return tsvmm::ThrowErrno(env, "io_uring_setup", errno);

  size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(__u32);
  size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single && cq_len > sq_len) sq_len = cq_len;
  size_t sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);

  void* sq = MapRing(fd, sq_len, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) {
    int e = errno;
    close(fd);
    return tsvmm::ThrowErrno(env, "mmap io_uring SQ ring", e);
  }
  void* cq = sq;
  if (!single) {
    cq = MapRing(fd, cq_len, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) {
      int e = errno;
      munmap(sq, sq_len);
      close(fd);
      return tsvmm::ThrowErrno(env, "mmap io_uring CQ ring", e);
    }
  }
  void* sqes = MapRing(fd, sqes_len, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) {
    int e = errno;
    munmap(sq, sq_len);
    if (!single) munmap(cq, cq_len);
    close(fd);
    return tsvmm::ThrowErrno(env, "mmap io_uring SQEs", e);
  }

  Napi::Object r = Napi::Object::New(env);
  r.Set("fd", Napi::Number::New(env, fd));
  r.Set("features", Napi::Number::New(env, p.features));
  r.Set("flags", Napi::Number::New(env, p.flags));
  r.Set("sqEntries", Napi::Number::New(env, p.sq_entries));
  r.Set("cqEntries", Napi::Number::New(env, p.cq_entries));
  Napi::ArrayBuffer sq_ab = Napi::ArrayBuffer::New(env, sq, sq_len, Unmap, new size_t(sq_len));
  r.Set("sq", sq_ab);
  r.Set("cq", single ? sq_ab : Napi::ArrayBuffer::New(env, cq, cq_len, Unmap, new size_t(cq_len)));
  r.Set("sqes", Napi::ArrayBuffer::New(env, sqes, sqes_len, Unmap, new size_t(sqes_len)));
  Napi::Object so = Napi::Object::New(env);
  so.Set("head", p.sq_off.head);
  so.Set("tail", p.sq_off.tail);
  so.Set("ringMask", p.sq_off.ring_mask);
  so.Set("ringEntries", p.sq_off.ring_entries);
  so.Set("flags", p.sq_off.flags);
  so.Set("dropped", p.sq_off.dropped);
  so.Set("array", p.sq_off.array);
  r.Set("sqOff", so);
  Napi::Object co = Napi::Object::New(env);
  co.Set("head", p.cq_off.head);
  co.Set("tail", p.cq_off.tail);
  co.Set("ringMask", p.cq_off.ring_mask);
  co.Set("ringEntries", p.cq_off.ring_entries);
  co.Set("overflow", p.cq_off.overflow);
  co.Set("cqes", p.cq_off.cqes);
  co.Set("flags", p.cq_off.flags);
  r.Set("cqOff", co);
  return r;
}

Napi::Value UringEnter(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  unsigned to_submit = info[1].As<Napi::Number>().Uint32Value();
  unsigned min_complete = info[2].As<Napi::Number>().Uint32Value();
  unsigned flags = info[3].As<Napi::Number>().Uint32Value();
  long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : static_cast<double>(r));
}

Napi::Value UringRegisterEventfd(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  __s32 efd = info[1].As<Napi::Number>().Int32Value();
  bool async_only = info.Length() > 2 && info[2].ToBoolean();
  long r = syscall(__NR_io_uring_register, fd, async_only ? IORING_REGISTER_EVENTFD_ASYNC : IORING_REGISTER_EVENTFD, &efd, 1);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

// uringRegisterIowqMaxWorkers(fd, bounded, unbounded) -> 0 or -errno (IORING_REGISTER_IOWQ_MAX_WORKERS;
// 0 leaves a limit as it is).
Napi::Value UringRegisterIowqMaxWorkers(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  __u32 counts[2] = {info[1].As<Napi::Number>().Uint32Value(), info[2].As<Napi::Number>().Uint32Value()};
  long r = syscall(__NR_io_uring_register, fd, IORING_REGISTER_IOWQ_MAX_WORKERS, counts, 2);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
#define C(name) c.Set(#name, Napi::Number::New(env, static_cast<double>(name)))
#define OFF(type, field, name) c.Set(name, Napi::Number::New(env, static_cast<double>(offsetof(struct type, field))))
  C(IORING_OP_NOP);
  C(IORING_OP_READV);
  C(IORING_OP_WRITEV);
  C(IORING_OP_FSYNC);
  C(IORING_OP_READ);
  C(IORING_OP_WRITE);
  C(IORING_FSYNC_DATASYNC);
  C(IORING_ENTER_GETEVENTS);
  C(IORING_FEAT_SINGLE_MMAP);
  C(IORING_FEAT_NODROP);
  C(IORING_FEAT_SUBMIT_STABLE);
  C(IORING_CQ_EVENTFD_DISABLED);
  C(IOSQE_ASYNC);
#ifdef IORING_SETUP_SUBMIT_ALL
  C(IORING_SETUP_SUBMIT_ALL);
#endif
  c.Set("SQE_SIZE", Napi::Number::New(env, sizeof(struct io_uring_sqe)));
  c.Set("CQE_SIZE", Napi::Number::New(env, sizeof(struct io_uring_cqe)));
  c.Set("IOVEC_SIZE", Napi::Number::New(env, 16));
  OFF(io_uring_sqe, opcode, "SQE_OPCODE");
  OFF(io_uring_sqe, flags, "SQE_FLAGS");
  OFF(io_uring_sqe, fd, "SQE_FD");
  OFF(io_uring_sqe, off, "SQE_OFF");
  OFF(io_uring_sqe, addr, "SQE_ADDR");
  OFF(io_uring_sqe, len, "SQE_LEN");
  OFF(io_uring_sqe, rw_flags, "SQE_RW_FLAGS");
  OFF(io_uring_sqe, user_data, "SQE_USER_DATA");
  OFF(io_uring_cqe, user_data, "CQE_USER_DATA");
  OFF(io_uring_cqe, res, "CQE_RES");
  OFF(io_uring_cqe, flags, "CQE_FLAGS");
#undef C
#undef OFF
  return c;
}

}  // namespace

namespace tsvmm {
void InitUring(Napi::Env env, Napi::Object exports) {
  exports.Set("uringSetup", Napi::Function::New(env, UringSetup));
  exports.Set("uringEnter", Napi::Function::New(env, UringEnter));
  exports.Set("uringRegisterEventfd", Napi::Function::New(env, UringRegisterEventfd));
  exports.Set("uringRegisterIowqMaxWorkers", Napi::Function::New(env, UringRegisterIowqMaxWorkers));
  exports.Set("uringConstants", Constants(env));
}
}  // namespace tsvmm
