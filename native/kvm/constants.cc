// See constants.h: the C table as a JS object name -> value.
#include "constants.h"

namespace tsvmm {

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  for (size_t i = 0; i < tsvmm_constants_count; i++) {
    c.Set(tsvmm_constants[i].name, Napi::Number::New(env, tsvmm_constants[i].value));
  }
  return c;
}

}  // namespace tsvmm
