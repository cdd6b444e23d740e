// The KVM ABI (ioctl numbers, struct sizes and field offsets, exit reasons,
// capabilities) straight from <linux/kvm.h>, so TypeScript never restates a
// number the kernel header already defines. The table is built in C
// (abi.c); constants.cc exposes it to JS.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
struct tsvmm_const {
  const char* name;
  double value;
};
extern const struct tsvmm_const tsvmm_constants[];
extern const size_t tsvmm_constants_count;
#ifdef __cplusplus
}

#include <napi.h>
namespace tsvmm {
Napi::Object Constants(Napi::Env env);
}
#endif
