// See poller.cc.
#pragma once
#include <napi.h>

namespace tsvmm {
void InitPoller(Napi::Env env, Napi::Object exports);
}
