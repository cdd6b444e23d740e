/*
 * A UDP echo server for the Linux guest of bench/linux-service (busybox has no UDP server):
 * every datagram to PORT goes back to its sender unchanged. Built static on the host
 * (bench/linux-service.ts), fetched by the guest over HTTP at setup, run from its disk.
 *   udpecho PORT
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  if (port <= 0 || port > 65535) { fprintf(stderr, "udpecho: usage: udpecho PORT\n"); return 2; }
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("udpecho: bind"); return 1; }
  static char buf[65536];
  for (;;) {
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
    if (n < 0) continue;
    sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
  }
}
