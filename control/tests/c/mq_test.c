/*
 * The client library from C: POSIX message-queue calls on a Conveyor group's queues.
 * Run by control/tests/mq.rs with CONVEYOR_CONFIG and CONVEYOR_MEMBER set.
 *
 *   mq_test basic          every call and errno on queue /basic; prints "basic ok"
 *   mq_test produce N      sends N messages "m<i>" to /work, then two "stop"
 *   mq_test consume        receives from /work until "stop"; prints each message
 */
#include "conveyor_mq.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, " (errno %d %s; %s)\n", errno, strerror(errno),           \
              conveyor_mq_error());                                             \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* An absolute CLOCK_REALTIME deadline `ms` from now. */
static struct timespec in_ms(long ms) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec += 1;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

static int basic(void) {
  struct conveyor_mq_attr attr = {0, 4, 128, 0};
  /* Bad names and missing queues. */
  CHECK(conveyor_mq_open("no-slash", O_RDWR, 0, NULL) == -1 && errno == EINVAL, "name");
  CHECK(conveyor_mq_open("/missing", O_RDWR, 0, NULL) == -1 && errno == ENOENT, "missing");
  int q = conveyor_mq_open("/basic", O_RDWR | O_CREAT, 0600, &attr);
  CHECK(q >= 0, "open /basic");
  CHECK(conveyor_mq_open("/basic", O_RDWR | O_CREAT | O_EXCL, 0600, &attr) == -1 &&
            errno == EEXIST, "O_EXCL");
  struct conveyor_mq_attr got;
  CHECK(conveyor_mq_getattr(q, &got) == 0, "getattr");
  CHECK(got.mq_maxmsg == 4 && got.mq_flags == 0 && got.mq_curmsgs == 0 && got.mq_msgsize >= 128,
        "attr %ld %ld %ld %ld", got.mq_flags, got.mq_maxmsg, got.mq_msgsize, got.mq_curmsgs);

  /* Three messages come back in order, with their priorities. */
  const char *msgs[] = {"first", "second", "third"};
  for (unsigned i = 0; i < 3; i++)
    CHECK(conveyor_mq_send(q, msgs[i], strlen(msgs[i]), i + 1) == 0, "send %u", i);
  char buf[8192];
  for (unsigned i = 0; i < 3; i++) {
    unsigned prio = 99;
    ssize_t n = conveyor_mq_receive(q, buf, sizeof buf, &prio);
    CHECK(n == (ssize_t)strlen(msgs[i]) && memcmp(buf, msgs[i], n) == 0 && prio == i + 1,
          "receive %u: %zd bytes, prio %u", i, n, prio);
  }

  /* Empty: a timed receive times out at its deadline with ETIMEDOUT. */
  double t0 = now_s();
  struct timespec dl = in_ms(300);
  CHECK(conveyor_mq_timedreceive(q, buf, sizeof buf, NULL, &dl) == -1 && errno == ETIMEDOUT,
        "timedreceive on an empty queue");
  double waited = now_s() - t0;
  CHECK(waited >= 0.25 && waited < 5.0, "waited %.3f s", waited);
  /* A deadline already past fails at once. */
  dl = in_ms(-1000);
  CHECK(conveyor_mq_timedreceive(q, buf, sizeof buf, NULL, &dl) == -1 && errno == ETIMEDOUT,
        "past deadline");

  /* Non-blocking: EAGAIN when empty. */
  struct conveyor_mq_attr nb = {O_NONBLOCK, 0, 0, 0}, old;
  CHECK(conveyor_mq_setattr(q, &nb, &old) == 0 && old.mq_flags == 0, "setattr");
  CHECK(conveyor_mq_getattr(q, &got) == 0 && got.mq_flags == O_NONBLOCK, "flags now");
  CHECK(conveyor_mq_receive(q, buf, sizeof buf, NULL) == -1 && errno == EAGAIN, "EAGAIN empty");

  nb.mq_flags = 0;
  CHECK(conveyor_mq_setattr(q, &nb, NULL) == 0, "blocking again");
  for (int i = 0; i < 4; i++) {
    char m[16];
    int len = snprintf(m, sizeof m, "fill%d", i);
    CHECK(conveyor_mq_send(q, m, len, 0) == 0, "fill %d", i);
  }

  /* Full: a queue nobody reads, of 2 messages: a non-blocking send is EAGAIN, a timed send
   * ETIMEDOUT at its deadline. */
  struct conveyor_mq_attr small = {0, 2, 64, 0};
  int f = conveyor_mq_open("/full", O_WRONLY | O_CREAT | O_NONBLOCK, 0600, &small);
  CHECK(f >= 0, "open /full");
  CHECK(conveyor_mq_send(f, "a", 1, 0) == 0 && conveyor_mq_send(f, "b", 1, 0) == 0, "fill /full");
  CHECK(conveyor_mq_send(f, "c", 1, 0) == -1 && errno == EAGAIN, "EAGAIN full");
  CHECK(conveyor_mq_setattr(f, &nb, NULL) == 0, "/full blocking");
  t0 = now_s();
  dl = in_ms(300);
  CHECK(conveyor_mq_timedsend(f, "c", 1, 0, &dl) == -1 && errno == ETIMEDOUT, "timedsend full");
  waited = now_s() - t0;
  CHECK(waited >= 0.25 && waited < 5.0, "timedsend waited %.3f s", waited);
  /* mq_curmsgs follows the group's queue (published every 200 ms). */
  int two = 0;
  for (int i = 0; i < 50 && !two; i++) {
    CHECK(conveyor_mq_getattr(f, &got) == 0, "getattr /full");
    two = got.mq_curmsgs == 2 && got.mq_maxmsg == 2;
    struct timespec s = {0, 20 * 1000000L};
    if (!two) nanosleep(&s, NULL);
  }
  CHECK(two, "curmsgs %ld maxmsg %ld", got.mq_curmsgs, got.mq_maxmsg);
  CHECK(conveyor_mq_close(f) == 0, "close /full");

  /* The descriptor's fd is readable: a message waits. A buffer too small is EMSGSIZE and
   * the message stays for the next receive. */
  struct pollfd p = {conveyor_mq_fd(q), POLLIN, 0};
  CHECK(p.fd >= 0, "fd");
  CHECK(poll(&p, 1, 5000) == 1 && (p.revents & POLLIN), "poll: a message waits");
  CHECK(conveyor_mq_receive(q, buf, 2, NULL) == -1 && errno == EMSGSIZE, "EMSGSIZE receive");
  for (int i = 0; i < 4; i++) {
    ssize_t n = conveyor_mq_receive(q, buf, sizeof buf, NULL);
    char m[16];
    int len = snprintf(m, sizeof m, "fill%d", i);
    CHECK(n == len && memcmp(buf, m, len) == 0, "drain %d", i);
  }
  /* Drained: the fd is no longer readable. */
  p.revents = 0;
  CHECK(poll(&p, 1, 0) == 0, "poll: nothing waits");
  /* A message that comes later makes it readable again. */
  CHECK(conveyor_mq_send(q, "late", 4, 7) == 0, "send late");
  CHECK(poll(&p, 1, 5000) == 1, "poll: the late message");
  unsigned prio = 0;
  CHECK(conveyor_mq_receive(q, buf, sizeof buf, &prio) == 4 && prio == 7, "late");

  /* Too large to send: EMSGSIZE; bad priority: EINVAL. */
  CHECK(conveyor_mq_getattr(q, &got) == 0, "getattr");
  size_t big = (size_t)got.mq_msgsize + 1;
  char *huge = calloc(big, 1);
  CHECK(huge != NULL, "calloc");
  CHECK(conveyor_mq_send(q, huge, big, 0) == -1 && errno == EMSGSIZE, "EMSGSIZE send");
  CHECK(conveyor_mq_send(q, huge, big - 1, 0) == 0, "largest message");
  CHECK(conveyor_mq_receive(q, buf, sizeof buf, NULL) == (ssize_t)(big - 1), "largest back");
  free(huge);
  CHECK(conveyor_mq_send(q, "p", 1, 40000) == -1 && errno == EINVAL, "priority");

  /* Write-only and read-only descriptors; closed ones are EBADF. */
  int w = conveyor_mq_open("/basic", O_WRONLY, 0, NULL);
  CHECK(w >= 0, "open write-only");
  CHECK(conveyor_mq_receive(w, buf, sizeof buf, NULL) == -1 && errno == EBADF, "read on O_WRONLY");
  CHECK(conveyor_mq_close(w) == 0, "close w");
  CHECK(conveyor_mq_send(w, "x", 1, 0) == -1 && errno == EBADF, "EBADF after close");
  CHECK(conveyor_mq_close(w) == -1 && errno == EBADF, "double close");
  CHECK(conveyor_mq_close(q) == 0, "close q");
  CHECK(conveyor_mq_receive(12345, buf, sizeof buf, NULL) == -1 && errno == EBADF, "unknown");
  printf("basic ok\n");
  return 0;
}

static int produce(int n) {
  struct conveyor_mq_attr attr = {0, 8, 64, 0};
  int q = conveyor_mq_open("/work", O_WRONLY | O_CREAT, 0600, &attr);
  CHECK(q >= 0, "open /work");
  char m[32];
  for (int i = 0; i < n; i++) {
    int len = snprintf(m, sizeof m, "m%d", i);
    /* Blocks while the 8-message queue is full: backpressure. */
    CHECK(conveyor_mq_send(q, m, len, 0) == 0, "send %d", i);
  }
  for (int i = 0; i < 2; i++) CHECK(conveyor_mq_send(q, "stop", 4, 0) == 0, "stop");
  printf("produced %d\n", n);
  fflush(stdout);
  return 0;
}

static int consume(void) {
  int q = -1;
  /* The producer creates the queue. */
  for (int i = 0; i < 200 && q < 0; i++) {
    q = conveyor_mq_open("/work", O_RDONLY, 0, NULL);
    if (q < 0) {
      CHECK(errno == ENOENT, "open /work");
      struct timespec s = {0, 50 * 1000000L};
      nanosleep(&s, NULL);
    }
  }
  CHECK(q >= 0, "open /work");
  char buf[8192];
  for (;;) {
    ssize_t n = conveyor_mq_receive(q, buf, sizeof buf, NULL);
    CHECK(n >= 0, "receive");
    if (n == 4 && memcmp(buf, "stop", 4) == 0) break;
    printf("%.*s\n", (int)n, buf);
    fflush(stdout);
  }
  /* Closing puts back what was fetched ahead (the other stop, if it came here). */
  CHECK(conveyor_mq_close(q) == 0, "close");
  struct timespec s = {0, 300 * 1000000L};
  nanosleep(&s, NULL);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "basic") == 0) return basic();
  if (argc >= 3 && strcmp(argv[1], "produce") == 0) return produce(atoi(argv[2]));
  if (argc >= 2 && strcmp(argv[1], "consume") == 0) return consume();
  fprintf(stderr, "usage: mq_test basic | produce N | consume\n");
  return 2;
}
