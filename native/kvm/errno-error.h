// errno-error.h: the one way the addon turns a failed syscall into a JavaScript error:
// message "what: strerror", and errno, code (e.g. 'EBUSY') and syscall properties, like Node's own.
#pragma once
#include <napi.h>

#include <string.h>

#include <string>

namespace tsvmm {

inline Napi::Error ErrnoError(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  const char* name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("syscall", Napi::String::New(env, what));
  return e;
}

// Throws ErrnoError(what, err) and returns undefined (the value a binding returns after throwing).
inline Napi::Value ThrowErrno(Napi::Env env, const std::string& what, int err) {
  ErrnoError(env, what, err).ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace tsvmm
