// tsvmm-jail: what the supervisor execs a component through, as Firecracker's jailer is: it runs as
// root, single-threaded (Node is not: namespaces must be entered before Node starts), and leaves
// nothing of root behind before it execs Node (contracts/confinement.ts, docs/architecture.md
// "Confinement"):
//
//   tsvmm-jail [--netns FD | --new-netns] [--ro [--rw DIR]...] --uid UID --gid GID -- PROG ARG...
//
//   --netns FD    setns(2) into the network namespace FD (then closed): the VM's empty one, kept by
//                 the supervisor, so a restart does not pay for a new namespace
//   --new-netns   unshare(CLONE_NEWNET): a new, empty network namespace (loopback only, down)
//   --ro          unshare(CLONE_NEWNS), every mount private, then the whole tree read-only
//                 (mount_setattr AT_RECURSIVE MOUNT_ATTR_RDONLY); each --rw DIR bound over itself
//                 read-write again
//   --uid/--gid   setgroups(0), setgid, setuid: no supplementary group, no capability left
// Any failure: one line on stderr, exit 126, nothing executed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/mount.h>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

static void die(const char* what, const char* arg) {
  fprintf(stderr, "tsvmm-jail: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  exit(126);
}

static long number(const char* s, const char* what) {
  char* end;
  errno = 0;
  long v = strtol(s ? s : "", &end, 10);
  if (!s || !*s || *end || errno || v < 0) { errno = EINVAL; die(what, s); }
  return v;
}

int main(int argc, char** argv) {
  int netns = -1, new_netns = 0, ro = 0;
  long uid = -1, gid = -1;
  const char* rw[16];
  int nrw = 0;
  int i = 1;
  for (; i < argc; i++) {
    const char* a = argv[i];
    if (!strcmp(a, "--")) { i++; break; }
    if (!strcmp(a, "--netns")) netns = (int)number(argv[++i], "--netns");
    else if (!strcmp(a, "--new-netns")) new_netns = 1;
    else if (!strcmp(a, "--ro")) ro = 1;
    else if (!strcmp(a, "--rw")) {
      if (nrw == 16 || i + 1 >= argc) { errno = E2BIG; die("--rw", argv[i + 1]); }
      rw[nrw++] = argv[++i];
    } else if (!strcmp(a, "--uid")) uid = number(argv[++i], "--uid");
    else if (!strcmp(a, "--gid")) gid = number(argv[++i], "--gid");
    else { errno = EINVAL; die("unknown option", a); }
  }
  if (i >= argc || uid < 0 || gid < 0) {
    fprintf(stderr, "usage: tsvmm-jail [--netns FD | --new-netns] [--ro [--rw DIR]...] --uid UID --gid GID -- PROG ARG...\n");
    return 126;
  }
  if (netns >= 0) {
    if (setns(netns, CLONE_NEWNET) < 0) die("setns", "net");
    close(netns);
  } else if (new_netns && unshare(CLONE_NEWNET) < 0) die("unshare", "CLONE_NEWNET");
  if (ro) {
    if (unshare(CLONE_NEWNS) < 0) die("unshare", "CLONE_NEWNS");
    // Nothing mounted or unmounted here reaches the host, nor the other way round.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("mount --make-rprivate", "/");
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY};
    if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr) < 0) die("mount_setattr rdonly", "/");
    for (int k = 0; k < nrw; k++) {
      if (mount(rw[k], rw[k], NULL, MS_BIND, NULL) < 0) die("bind", rw[k]);
      if (mount(NULL, rw[k], NULL, MS_BIND | MS_REMOUNT, NULL) < 0) die("remount rw", rw[k]);
    }
    // The working directory was entered before (by the spawner): enter it again, through the mounts
    // just made (it may be one of the --rw directories).
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd) || chdir(cwd) < 0) die("chdir", "(working directory)");
  }
  if (setgroups(0, NULL) < 0) die("setgroups", NULL);
  if (setgid((gid_t)gid) < 0) die("setgid", NULL);
  if (setuid((uid_t)uid) < 0) die("setuid", NULL);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("prctl", "PR_SET_NO_NEW_PRIVS");
  execv(argv[i], argv + i);
  die("exec", argv[i]);
  return 126;
}
