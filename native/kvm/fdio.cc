// Non-throwing fd I/O for the driver-domain's hot paths (the TAP): a read
// that returns -EAGAIN instead of throwing an exception (building a Node
// error object and its stack costs more than the read itself), and a
// writev of byte views with no per-call validation.
//
//   fdRead(fd, view) -> bytes read, or -errno
//   fdWritev(fd, views[]) -> bytes written, or -errno
// And what a snapshot of guest RAM needs (tsvmm snapshot, run --restore):
//   seekData(fd, offset, hole) -> lseek SEEK_DATA (or SEEK_HOLE): the next populated (or unpopulated)
//     byte of a memfd or a sparse file at or after offset; -1 when there is no more data (ENXIO)
//   crc32c(view) -> CRC-32C (Castagnoli) of the bytes, with the CPU's crc32 instruction where it has
//     one (SSE4.2): guest RAM is checksummed at GB/s, not at a table lookup per byte
// And the supervisor's for the priv-domain's API (the socket file stays the VM owner's while the
// priv-domain that serves it runs as another uid):
//   unixListen(path, backlog) -> a listening AF_UNIX stream socket bound to path, mode 0600
// And what an O_DIRECT disk (--disk ...,cache=none) must align to:
//   dioAlign(fd) -> [memory alignment, file offset alignment] from statx(STATX_DIOALIGN), [0, 0]
//     where the kernel (before 6.1) or the file system does not say; -errno on failure
#include <napi.h>

#include <cpuid.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "errno-error.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <string>
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

Napi::Value SeekData(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  off_t off = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t r = lseek(fd, off, info[2].ToBoolean() ? SEEK_HOLE : SEEK_DATA);
  if (r < 0 && errno == ENXIO) return Napi::Number::New(env, -1);
  if (r < 0) {
    Napi::Error e = Napi::Error::New(env, std::string("lseek: ") + strerror(errno));
    e.Set("code", Napi::String::New(env, errno == EINVAL ? "EINVAL" : "EIO"));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

uint32_t crc32c_table[8][256];

void Crc32cInit() {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78u ^ (c >> 1) : c >> 1;
    crc32c_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int t = 1; t < 8; t++) crc32c_table[t][n] = crc32c_table[0][crc32c_table[t - 1][n] & 0xff] ^ (crc32c_table[t - 1][n] >> 8);
}

uint32_t Crc32cSoft(uint32_t c, const uint8_t* p, size_t n) {
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= c;
    c = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^ crc32c_table[5][(w >> 16) & 0xff] ^
        crc32c_table[4][(w >> 24) & 0xff] ^ crc32c_table[3][(w >> 32) & 0xff] ^ crc32c_table[2][(w >> 40) & 0xff] ^
        crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
  }
  while (n--) c = crc32c_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHw(uint32_t c, const uint8_t* p, size_t n) {
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c64 = __builtin_ia32_crc32di(c64, w);
  }
  c = static_cast<uint32_t>(c64);
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}

bool HaveSse42() {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const bool hw = HaveSse42();
  static bool init = false;
  if (!hw && !init) { Crc32cInit(); init = true; }
  void* data;
  size_t len;
  if (!View(info[0], &data, &len)) return Napi::Number::New(env, -EINVAL);
  uint32_t c = info.Length() > 1 && info[1].IsNumber() ? ~info[1].As<Napi::Number>().Uint32Value() : 0xffffffffu;
  c = hw ? Crc32cHw(c, static_cast<const uint8_t*>(data), len) : Crc32cSoft(c, static_cast<const uint8_t*>(data), len);
  return Napi::Number::New(env, c ^ 0xffffffffu);
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int backlog = info[1].As<Napi::Number>().Int32Value();
  struct sockaddr_un a = {};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return tsvmm::ThrowErrno(env, "unixListen: " + path, ENAMETOOLONG);
  memcpy(a.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return tsvmm::ThrowErrno(env, "unixListen: socket", errno);
  // chmod after bind (umask is process-wide: not ours to change under other threads); the
  // directory the caller binds in is 0700, so the socket is never reachable by others meanwhile.
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&a), sizeof a) < 0 || chmod(a.sun_path, 0600) < 0 || listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    return tsvmm::ThrowErrno(env, "unixListen: " + path, err);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value DioAlign(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  struct statx stx;
  memset(&stx, 0, sizeof stx);
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) != 0) return Napi::Number::New(env, -errno);
  bool have = (stx.stx_mask & STATX_DIOALIGN) != 0;
  Napi::Array r = Napi::Array::New(env, 2);
  r.Set(0u, Napi::Number::New(env, have ? stx.stx_dio_mem_align : 0));
  r.Set(1u, Napi::Number::New(env, have ? stx.stx_dio_offset_align : 0));
  return r;
}

// socketPair() -> [a, b]: a connected AF_UNIX stream pair, close-on-exec (a spawn's stdio mapping
// clears that in the child). A component's adoption channel (contracts/orphan.ts).
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return tsvmm::ThrowErrno(env, "socketpair", errno);
  Napi::Array r = Napi::Array::New(env, 2);
  r.Set(0u, Napi::Number::New(env, sv[0]));
  r.Set(1u, Napi::Number::New(env, sv[1]));
  return r;
}

}  // namespace

namespace tsvmm {
void InitFdio(Napi::Env env, Napi::Object exports) {
  exports.Set("dioAlign", Napi::Function::New(env, DioAlign));
  exports.Set("fdRead", Napi::Function::New(env, FdRead));
  exports.Set("fdWritev", Napi::Function::New(env, FdWritev));
  exports.Set("seekData", Napi::Function::New(env, SeekData));
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair));
}
}  // namespace tsvmm
