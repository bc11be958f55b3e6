/*
 * dirtier: /init of the lab's guest. Writes guest memory at a chosen rate and pattern so live
 * migration has something to chase, and proves memory survived the migration intact.
 *
 * Parameters come from the kernel command line (the kernel hands unknown key=value words to
 * init as environment variables):
 *   dirty_mbps=N   MiB/s to dirty (0: idle)
 *   dirty_mb=M     working set in MiB (default 256)
 *   pattern=P      seq (sweep the working set) | random (random pages) | hot (random pages of
 *                  the first hot_mb MiB only)
 *   hot_mb=H       hot set for pattern=hot (default 32)
 * Every 2 s it prints one status line on the console:
 *   dirtier: t=12s dirtied=1800MiB rate=150MiB/s pattern=random ref=ok
 * "ref" checks a 16 MiB reference pattern written once at start; it reads CORRUPT if it changed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define REF_BYTES (16UL << 20)
#define TICKS_PER_S 100

static unsigned long env_ul(const char *k, unsigned long dflt) {
    const char *v = getenv(k);
    return v && *v ? strtoul(v, NULL, 10) : dflt;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void console(void) {
    /* As PID 1 from an initramfs there may be no /dev yet: mount devtmpfs for the console. */
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2) close(fd);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
}

int main(void) {
    console();
    unsigned long mbps = env_ul("dirty_mbps", 0);
    unsigned long mb = env_ul("dirty_mb", 256);
    unsigned long hot_mb = env_ul("hot_mb", 32);
    const char *pattern = getenv("pattern") ? getenv("pattern") : "seq";
    int seq = strcmp(pattern, "seq") == 0, hot = strcmp(pattern, "hot") == 0;
    if (!seq && !hot && strcmp(pattern, "random") != 0) {
        printf("dirtier: unknown pattern=%s, using seq\n", pattern);
        seq = 1;
        pattern = "seq";
    }
    unsigned long pages = (mb << 20) / PAGE;
    unsigned long hot_pages = (hot_mb << 20) / PAGE;
    if (hot_pages == 0 || hot_pages > pages) hot_pages = pages;

    unsigned char *ref = mmap(NULL, REF_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    unsigned char *buf = pages ? mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0) : NULL;
    if (ref == MAP_FAILED || buf == MAP_FAILED) {
        printf("dirtier: cannot map %lu MiB: out of guest memory\n", mb);
        for (;;) pause();
    }
    for (unsigned long i = 0; i < REF_BYTES / 8; i++) ((uint64_t *)ref)[i] = i * 2654435761ULL;

    double per_tick = (double)mbps * 256.0 / TICKS_PER_S; /* pages per tick */
    double owed = 0, start = now_s(), next = start, last_status = start - 2;
    unsigned long cursor = 0;
    unsigned long long dirtied = 0;
    printf("dirtier: started dirty_mbps=%lu dirty_mb=%lu pattern=%s hot_mb=%lu\n", mbps, mb, pattern, hot_mb);
    for (unsigned long tick = 0;; tick++) {
        owed += per_tick;
        while (owed >= 1.0 && pages) {
            unsigned long p;
            if (seq) p = cursor++ % pages;
            else if (hot) p = xorshift() % hot_pages;
            else p = xorshift() % pages;
            buf[p * PAGE + (tick % PAGE)] = (unsigned char)tick;
            owed -= 1.0;
            dirtied++;
        }
        double t = now_s();
        if (t - last_status >= 2.0) {
            int ok = 1;
            for (unsigned long i = 0; i < REF_BYTES / 8; i++)
                if (((uint64_t *)ref)[i] != i * 2654435761ULL) { ok = 0; break; }
            double el = t - start;
            printf("dirtier: t=%.0fs dirtied=%lluMiB rate=%.0fMiB/s pattern=%s ref=%s\n", el,
                   dirtied / 256, el > 0 ? dirtied / 256.0 / el : 0.0, pattern, ok ? "ok" : "CORRUPT");
            last_status = t;
        }
        next += 1.0 / TICKS_PER_S;
        double wait = next - now_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
        } else if (wait < -1.0) {
            next = now_s(); /* cannot keep up (TCG is slow): do not accumulate a backlog */
        }
    }
}
