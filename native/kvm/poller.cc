// The fd poller: the driver-domain waits on many fds (guest kicks, I/O
// completion eventfds, TAPs) without blocking its event loop. The fds are
// watched with uv_poll on the Node event loop itself, so a ready fd runs its
// callback directly on the JS thread: no poller thread to wake and no
// thread-safe-function hop (one context switch less per guest kick or I/O
// completion batch than an epoll thread, measured on the net round-trip path).
//
//   pollerStart(cb)        cb(tag, count) runs on the JS thread
//   pollerAdd(fd, tag, isEventfd)
//       isEventfd: the 8-byte counter is read (cleared) natively and passed
//       as count; otherwise JS drains the fd.
//   pollerRemove(fd)
#include <napi.h>
#include <uv.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <map>

namespace {

struct Watch {
  uv_poll_t poll;
  int fd;
  uint32_t tag;
  bool is_eventfd;
};

Napi::FunctionReference g_cb;
napi_env g_env = nullptr;
uv_loop_t* g_loop = nullptr;
std::map<int, Watch*> g_watches;

void OnReady(uv_poll_t* handle, int status, int events) {
  Watch* w = static_cast<Watch*>(handle->data);
  if (status < 0 || !(events & UV_READABLE)) return;
  uint64_t count = 1;
  if (w->is_eventfd) {
    if (read(w->fd, &count, sizeof count) != sizeof count) return;  // spurious (nonblocking)
  }
  Napi::Env env(g_env);
  Napi::HandleScope scope(env);
  // MakeCallback: runs the microtask queue afterwards, as any libuv-driven JS callback does.
  g_cb.MakeCallback(env.Global(), {Napi::Number::New(env, w->tag), Napi::Number::New(env, static_cast<double>(count))});
}

void OnClose(uv_handle_t* handle) { delete static_cast<Watch*>(handle->data); }

Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g_loop != nullptr) {
    Napi::Error::New(env, "loop poller already started").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (napi_get_uv_event_loop(env, &g_loop) != napi_ok || g_loop == nullptr) {
    g_loop = nullptr;
    Napi::Error::New(env, "no libuv loop").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  g_env = env;
  g_cb = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (g_loop == nullptr) {
    Napi::Error::New(env, "pollerAdd: poller not started").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (g_watches.count(fd)) {
    Napi::Error::New(env, "pollerAdd: fd already watched").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Watch* w = new Watch();
  w->fd = fd;
  w->tag = info[1].As<Napi::Number>().Uint32Value() & 0x7fffffff;
  w->is_eventfd = info[2].ToBoolean();
  w->poll.data = w;
  int r = uv_poll_init(g_loop, &w->poll, fd);
  if (r == 0) r = uv_poll_start(&w->poll, UV_READABLE, OnReady);
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnClose);
    Napi::Error::New(env, std::string("pollerAdd: ") + uv_strerror(r)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Watching must not keep the process alive by itself (like the thread poller's Unref).
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  g_watches[fd] = w;
  return env.Undefined();
}

Napi::Value Remove(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  auto it = g_watches.find(fd);
  if (it != g_watches.end()) {
    uv_poll_stop(&it->second->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&it->second->poll), OnClose);
    g_watches.erase(it);
  }
  return info.Env().Undefined();
}

}  // namespace

namespace tsvmm {
void InitPoller(Napi::Env env, Napi::Object exports) {
  exports.Set("pollerStart", Napi::Function::New(env, Start));
  exports.Set("pollerAdd", Napi::Function::New(env, Add));
  exports.Set("pollerRemove", Napi::Function::New(env, Remove));
}
}  // namespace tsvmm
