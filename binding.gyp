{
  "targets": [
    {
      "target_name": "tsvmm_kvm",
      "sources": ["native/kvm/addon.cc", "native/kvm/constants.cc", "native/kvm/abi.c", "native/kvm/poller.cc", "native/kvm/keeper.c", "native/kvm/restore.c", "native/kvm/keeper-binding.cc", "native/kvm/uring.cc", "native/kvm/fdio.cc", "native/kvm/pidfd.cc", "native/kvm/ptrace.cc", "native/kvm/seccomp.c", "native/kvm/seccomp-binding.cc", "native/kvm/fastexit.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "<(INTERMEDIATE_DIR)"],
      "actions": [{
        "action_name": "syscall_names",
        "inputs": ["native/kvm/gen-syscalls.sh"],
        "outputs": ["<(INTERMEDIATE_DIR)/syscall-names.h"],
        "action": ["sh", "native/kvm/gen-syscalls.sh", "<(INTERMEDIATE_DIR)/syscall-names.h"]
      }],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions"]
    },
    {
      "target_name": "tsvmm-jail",
      "type": "executable",
      "sources": ["native/jail/jail.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
