/*
 * The native peer of `r3map-bench uffd`: the same work as r3map's userfaultfd region, in C.
 *
 * A pre-filled memory source (the same pattern as src/bench/uffd-source.ts), an anonymous
 * private region registered with userfaultfd in MISSING mode, and one pthread that polls the
 * uffd, drains its messages and resolves each fault with ONE UFFDIO_COPY of the enclosing chunk
 * (aligned to the region base, the last one clipped) straight from the source; EEXIST counts as
 * success. The main thread touches one byte of every page, in order or in a shuffled order
 * (the same xorshift32 Fisher-Yates as the JS side), timing the first touch of each chunk, then
 * verifies every byte against the source.
 *
 *   handler <size-bytes> <chunk-bytes> <seq|rand> <seed>
 *
 * prints one JSON line: {"touchMs", "mbps", "faults", "firstTouchP50Us", "firstTouchP99Us",
 * "verified"}. Built by the bench with the system compiler: cc -O2 -pthread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint8_t *source;
static uint8_t *region;
static size_t region_len;
static size_t chunk;
static long page;
static int uffd;
static int stop_pipe[2];
static unsigned long faults;

static void die(const char *what) {
  fprintf(stderr, "uffd-native: %s: %s\n", what, strerror(errno));
  exit(1);
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void serve(uint64_t address) {
  size_t off = ((size_t)(address - (uint64_t)region) / chunk) * chunk;
  size_t len = region_len - off < chunk ? region_len - off : chunk;
  size_t done = 0;
  while (done < len) {
    struct uffdio_copy copy = {
      .dst = (uint64_t)(region + off + done), .src = (uint64_t)(source + off + done), .len = len - done, .mode = 0,
    };
    if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) return;
    if (copy.copy > 0) done += (size_t)copy.copy;
    else if (errno == EEXIST) done += (size_t)page;
    else if (errno != EAGAIN) die("UFFDIO_COPY");
  }
}

static void *handler(void *arg) {
  (void)arg;
  struct uffd_msg msgs[64];
  struct pollfd fds[2] = { { .fd = uffd, .events = POLLIN }, { .fd = stop_pipe[0], .events = POLLIN } };
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents) return NULL;
    for (;;) {
      ssize_t n = read(uffd, msgs, sizeof msgs);
      if (n < 0) {
        if (errno == EAGAIN) break;
        die("read");
      }
      size_t count = (size_t)n / sizeof msgs[0];
      for (size_t i = 0; i < count; i++) {
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
        faults++;
        serve(msgs[i].arg.pagefault.address);
      }
      if (count < 64) break;
    }
  }
}

static uint32_t xorshift(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s <size-bytes> <chunk-bytes> <seq|rand> <seed>\n", argv[0]);
    return 2;
  }
  size_t size = strtoull(argv[1], NULL, 10);
  chunk = strtoull(argv[2], NULL, 10);
  int random_order = strcmp(argv[3], "rand") == 0;
  uint32_t seed = (uint32_t)strtoul(argv[4], NULL, 10);
  page = sysconf(_SC_PAGESIZE);
  region_len = (size + page - 1) / page * page;
  if (chunk < (size_t)page || chunk % page) {
    fprintf(stderr, "uffd-native: chunk must be a multiple of %ld\n", page);
    return 2;
  }

  source = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (source == MAP_FAILED) die("mmap source");
  uint32_t *words = (uint32_t *)source;
  for (size_t i = 0; i < region_len / 4; i++) words[i] = (uint32_t)((i + seed) * 2654435761u);

  uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = { .api = UFFD_API, .features = 0 };
  if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");
  region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) die("mmap region");
  struct uffdio_register reg = { .range = { .start = (uint64_t)region, .len = region_len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
  if (pipe2(stop_pipe, O_CLOEXEC)) die("pipe2");
  pthread_t thread;
  if (pthread_create(&thread, NULL, handler, NULL)) die("pthread_create");

  size_t pages = region_len / page;
  uint32_t *order = malloc(pages * sizeof *order);
  size_t chunks = (region_len + chunk - 1) / chunk;
  uint8_t *touched = calloc(chunks, 1);
  double *latency = malloc(chunks * sizeof *latency);
  if (!order || !touched || !latency) die("malloc");
  for (size_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
  if (random_order) {
    uint32_t x = seed ? seed : 1;
    for (size_t i = pages - 1; i > 0; i--) {
      size_t j = xorshift(&x) % (uint32_t)(i + 1);
      uint32_t t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
  }

  volatile uint8_t *touch = region;
  unsigned sum = 0;
  size_t measured = 0;
  double start = now_us();
  for (size_t i = 0; i < pages; i++) {
    size_t off = (size_t)order[i] * page;
    size_t c = off / chunk;
    if (!touched[c]) {
      double t0 = now_us();
      sum += touch[off];
      latency[measured++] = now_us() - t0;
      touched[c] = 1;
    } else {
      sum += touch[off];
    }
  }
  double elapsed_us = now_us() - start;
  int verified = memcmp(region, source, size) == 0;

  if (write(stop_pipe[1], "x", 1) != 1) die("write");
  pthread_join(thread, NULL);
  qsort(latency, measured, sizeof *latency, cmp_double);
  printf("{\"touchMs\":%.3f,\"mbps\":%.1f,\"faults\":%lu,\"firstTouchP50Us\":%.1f,\"firstTouchP99Us\":%.1f,\"verified\":%s,\"sum\":%u}\n",
         elapsed_us / 1e3, size / elapsed_us, faults, latency[measured / 2], latency[(size_t)(measured * 0.99)],
         verified ? "true" : "false", sum);
  return verified ? 0 : 1;
}
