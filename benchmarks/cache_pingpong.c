// Cache-line round trip between two CPUs: tells whether they share a last-level cache right
// now. On the development host the two vCPUs answer about 55 ns when they do and 300-360 ns
// when the hypervisor has placed them in different caches, the state in which data one
// thread writes and the other reads is slow (benchmarks/RESULTS.md, tenth session).
//
//   cc -O2 -pthread -o /tmp/cache_pingpong benchmarks/cache_pingpong.c
//   /tmp/cache_pingpong [samples [cpu_a cpu_b]]   # one line per sample: ns per round trip
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

enum { kRoundTrips = 100000 };

static _Atomic long token __attribute__((aligned(64)));  // odd: the responder's turn
static int cpu_a = 0, cpu_b = 1;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cache_pingpong: cannot run on CPU %d\n", cpu);
        exit(1);
    }
}

static void* respond(void* unused) {
    (void)unused;
    pin(cpu_b);
    for (;;) {
        long seen;
        while (((seen = atomic_load(&token)) & 1) == 0) {
        }
        if (seen < 0) return NULL;
        atomic_store(&token, seen + 1);
    }
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
    const int samples = argc > 1 ? atoi(argv[1]) : 10;
    if (argc > 3) cpu_a = atoi(argv[2]), cpu_b = atoi(argv[3]);
    pin(cpu_a);
    pthread_t responder;
    pthread_create(&responder, NULL, respond, NULL);
    long value = 0;
    for (int s = 0; s < samples; ++s) {
        const double start = seconds();
        for (int i = 0; i < kRoundTrips; ++i, value += 2) {
            atomic_store(&token, value + 1);
            while (atomic_load(&token) != value + 2) {
            }
        }
        printf("%.0f\n", (seconds() - start) / kRoundTrips * 1e9);
        fflush(stdout);
        usleep(1000);
    }
    atomic_store(&token, -1);
    pthread_join(responder, NULL);
    return 0;
}
