// The fd poller: one native thread that epoll_waits on eventfds (guest
// kicks) and readable fds (TAP), and calls back into the JS event loop
// through a thread-safe function. Used by the driver-domain, which must
// wait on many fds without blocking its event loop or libuv's thread pool.
//
//   pollerStart(cb)        cb(tag, count) runs on the JS thread
//   pollerAdd(fd, tag, isEventfd)
//       isEventfd: the thread reads (clears) the 8-byte counter and passes it
//       as count; otherwise the fd is edge-triggered and JS drains it.
//   pollerRemove(fd)
#include <napi.h>

#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <thread>

#include "poller.h"

namespace {

struct Event {
  uint32_t tag;
  uint64_t count;
};

int g_epfd = -1;
Napi::ThreadSafeFunction g_tsfn;

void CallJs(Napi::Env env, Napi::Function cb, Event* ev) {
  if (env != nullptr && cb != nullptr) {
    cb.Call({Napi::Number::New(env, ev->tag), Napi::Number::New(env, static_cast<double>(ev->count))});
  }
  delete ev;
}

void Loop(int epfd) {
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; i++) {
      uint64_t data = evs[i].data.u64;
      int fd = static_cast<int>(data >> 32);
      uint32_t tag = static_cast<uint32_t>(data >> 1) & 0x7fffffff;
      bool is_eventfd = data & 1;
      uint64_t count = 1;
      if (is_eventfd) {
        if (read(fd, &count, sizeof count) != sizeof count) continue;  // spurious (nonblocking)
      }
      g_tsfn.NonBlockingCall(new Event{tag, count}, CallJs);
    }
  }
}

Napi::Value PollerStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g_epfd >= 0) {
    Napi::Error::New(env, "poller already started").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  g_epfd = epoll_create1(EPOLL_CLOEXEC);
  if (g_epfd < 0) {
    Napi::Error::New(env, "epoll_create1 failed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  g_tsfn = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "tsvmm-poller", 0, 1);
  g_tsfn.Unref(env);  // the poller alone does not keep the process alive
  std::thread(Loop, g_epfd).detach();
  return env.Undefined();
}

Napi::Value PollerAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t tag = info[1].As<Napi::Number>().Uint32Value() & 0x7fffffff;
  bool is_eventfd = info[2].ToBoolean();
  struct epoll_event ev = {};
  ev.events = is_eventfd ? static_cast<uint32_t>(EPOLLIN) : static_cast<uint32_t>(EPOLLIN | EPOLLET);
  ev.data.u64 = (static_cast<uint64_t>(fd) << 32) | (static_cast<uint64_t>(tag) << 1) | (is_eventfd ? 1 : 0);
  if (g_epfd < 0 || epoll_ctl(g_epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    Napi::Error::New(env, std::string("pollerAdd: ") + (g_epfd < 0 ? "poller not started" : strerror(errno))).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value PollerRemove(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (g_epfd >= 0) epoll_ctl(g_epfd, EPOLL_CTL_DEL, fd, nullptr);
  return info.Env().Undefined();
}

}  // namespace

namespace tsvmm {
void InitPoller(Napi::Env env, Napi::Object exports) {
  exports.Set("pollerStart", Napi::Function::New(env, PollerStart));
  exports.Set("pollerAdd", Napi::Function::New(env, PollerAdd));
  exports.Set("pollerRemove", Napi::Function::New(env, PollerRemove));
}
}  // namespace tsvmm
