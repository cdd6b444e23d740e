// Non-throwing fd I/O for the driver-domain's hot paths (the TAP): a read
// that returns -EAGAIN instead of throwing an exception (building a Node
// error object and its stack costs more than the read itself), and a
// writev of byte views with no per-call validation.
//
//   fdRead(fd, view) -> bytes read, or -errno
//   fdWritev(fd, views[]) -> bytes written, or -errno
#include <napi.h>

#include <errno.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

bool View(const Napi::Value& v, void** data, size_t* len) {
  if (!v.IsTypedArray()) return false;
  auto ta = v.As<Napi::TypedArray>();
  *data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  *len = ta.ByteLength();
  return true;
}

Napi::Value FdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  void* data;
  size_t len;
  if (!View(info[1], &data, &len)) return Napi::Number::New(env, -EINVAL);
  ssize_t r;
  do r = read(fd, data, len); while (r < 0 && errno == EINTR);
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r));
}

Napi::Value FdWritev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (!info[1].IsArray()) return Napi::Number::New(env, -EINVAL);
  Napi::Array a = info[1].As<Napi::Array>();
  uint32_t n = a.Length();
  if (n > IOV_MAX) return Napi::Number::New(env, -EINVAL);
  struct iovec iov[IOV_MAX];
  for (uint32_t i = 0; i < n; i++) {
    if (!View(a.Get(i), &iov[i].iov_base, &iov[i].iov_len)) return Napi::Number::New(env, -EINVAL);
  }
  ssize_t r;
  do r = writev(fd, iov, static_cast<int>(n)); while (r < 0 && errno == EINTR);
  return Napi::Number::New(env, r < 0 ? -errno : static_cast<double>(r));
}

}  // namespace

namespace tsvmm {
void InitFdio(Napi::Env env, Napi::Object exports) {
  exports.Set("fdRead", Napi::Function::New(env, FdRead));
  exports.Set("fdWritev", Napi::Function::New(env, FdWritev));
}
}  // namespace tsvmm
