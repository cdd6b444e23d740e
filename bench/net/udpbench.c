/*
 * udpbench: the host side of bench/net.ts, run inside the bench's network
 * namespace. Talks to the guest's UDP echo (workload=net, port 7).
 *
 *   udpbench rr     HOST PORT SIZE SECONDS MAXCOUNT
 *       one datagram in flight: send, wait for its echo (200 ms timeout,
 *       counted lost), repeat -> round trips/s
 *   udpbench stream HOST PORT SIZE SECONDS MAXCOUNT WINDOW
 *       up to WINDOW datagrams in flight; a new one goes out for each echo
 *       that comes back (or after 200 ms of silence) -> echoed payload bytes/s
 *
 * Bounded by SECONDS and MAXCOUNT (datagrams sent). Every datagram carries
 * (magic, seq) and a pattern derived from seq; echoes are checked byte for
 * byte. Prints one JSON line: mode, size, sent, received, lost, corrupt,
 * seconds, rate (round trips/s or echoed bytes/s).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void fill(uint8_t *b, size_t n, uint32_t seq) {
  memcpy(b, "TSVB", 4);
  memcpy(b + 4, &seq, 4);
  for (size_t i = 8; i < n; i++) b[i] = (uint8_t)(seq * 131 + i * 7);
}

static int check(const uint8_t *b, ssize_t n, size_t size, uint32_t *seq) {
  if (n != (ssize_t)size || memcmp(b, "TSVB", 4) != 0) return 0;
  memcpy(seq, b + 4, 4);
  for (size_t i = 8; i < size; i++) if (b[i] != (uint8_t)(*seq * 131 + i * 7)) return 0;
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: udpbench rr|stream HOST PORT SIZE SECONDS MAXCOUNT [WINDOW]\n");
    return 2;
  }
  const char *mode = argv[1];
  int stream = strcmp(mode, "stream") == 0;
  size_t size = strtoul(argv[4], 0, 0);
  double seconds = atof(argv[5]);
  uint64_t maxcount = strtoull(argv[6], 0, 0);
  int window = argc > 7 ? atoi(argv[7]) : 1;
  if (size < 8 || size > 1472 || window < 1) { fprintf(stderr, "udpbench: bad size or window\n"); return 2; }
  if (!stream) window = 1;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) { perror("socket"); return 1; }
  int buf = 4 << 20;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  setsockopt(s, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  struct sockaddr_in to = {0};
  to.sin_family = AF_INET;
  to.sin_port = htons(atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) { fprintf(stderr, "udpbench: bad host\n"); return 2; }
  if (connect(s, (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }
  uint8_t out[1500], in[2048];
  uint8_t *seen = calloc(maxcount + 1, 1);
  uint64_t sent = 0, received = 0, corrupt = 0, dup = 0;
  int inflight = 0;
  double t0 = now(), end = t0 + seconds, last = t0;
  for (;;) {
    double t = now();
    int sending = t < end && sent < maxcount;
    if (!sending && inflight == 0) break;
    if (t > end + 1.0) break; /* drain at most 1 s after the end */
    while (sending && inflight < window) {
      fill(out, size, (uint32_t)sent);
      if (send(s, out, size, 0) != (ssize_t)size) { if (errno == EAGAIN || errno == ENOBUFS) break; perror("send"); return 1; }
      sent++;
      inflight++;
      if (sent >= maxcount) break;
    }
    struct pollfd p = {s, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r == 0) {
      /* 200 ms of silence: whatever is in flight is lost */
      inflight = 0;
      continue;
    }
    for (;;) {
      ssize_t n = recv(s, in, sizeof in, MSG_DONTWAIT);
      if (n < 0) break;
      uint32_t seq;
      if (!check(in, n, size, &seq) || seq >= sent) { corrupt++; continue; }
      if (seen[seq]) { dup++; continue; }
      seen[seq] = 1;
      received++;
      last = now();
      if (inflight > 0) inflight--;
    }
  }
  double dt = (stream ? last : now()) - t0;
  if (dt <= 0) dt = 1e-9;
  double rate = stream ? received * (double)size / dt : received / dt;
  printf("{\"mode\":\"%s\",\"size\":%zu,\"window\":%d,\"sent\":%llu,\"received\":%llu,\"lost\":%llu,\"dup\":%llu,\"corrupt\":%llu,\"seconds\":%.4f,\"rate\":%.1f}\n",
         mode, size, window, (unsigned long long)sent, (unsigned long long)received, (unsigned long long)(sent - received),
         (unsigned long long)dup, (unsigned long long)corrupt, dt, rate);
  return 0;
}
