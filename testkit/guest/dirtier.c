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
 *   http_port=P    also serve HTTP on TCP port P (usually 80): load the NIC's kernel modules
 *                  listed in /lib/modules/load (the initramfs holds them), give eth0 QEMU
 *                  user-mode networking's guest address 10.0.2.15/24 (default route via
 *                  10.0.2.2), and fork a tiny HTTP/1.0 server that answers every request with
 *                  200 OK and "guest-app: requests=N uptime=S.SSs". It prints
 *                  "app: http listening on :P" once it accepts, or "app: error: ..." if a step
 *                  failed (the dirtier runs on either way). Without it: no network at all.
 * Every 2 s it prints one status line on the console:
 *   dirtier: t=12s dirtied=1800MiB rate=150MiB/s pattern=random ref=ok
 * "ref" checks a 16 MiB reference pattern written once at start; it reads CORRUPT if it changed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

/* ---- optional application: a tiny HTTP server on QEMU user-mode networking ---- */

#define MODULE_DIR "/lib/modules"
#define GUEST_ADDR "10.0.2.15"
#define GUEST_MASK "255.255.255.0"
#define GUEST_GW "10.0.2.2"

/* Load the modules /lib/modules/load names, one file per line, dependencies first. */
static int load_modules(void) {
    FILE *list = fopen(MODULE_DIR "/load", "r");
    if (!list) {
        printf("app: error: cannot open %s/load: %s\n", MODULE_DIR, strerror(errno));
        return -1;
    }
    char name[256];
    int rc = 0;
    while (rc == 0 && fgets(name, sizeof name, list)) {
        name[strcspn(name, "\r\n")] = 0;
        if (!*name) continue;
        char path[sizeof name + sizeof MODULE_DIR + 1];
        snprintf(path, sizeof path, "%s/%s", MODULE_DIR, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            printf("app: error: cannot open module %s: %s\n", path, strerror(errno));
            rc = -1;
            break;
        }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) {
            printf("app: error: finit_module %s: %s\n", name, strerror(errno));
            rc = -1;
        }
        close(fd);
    }
    fclose(list);
    return rc;
}

static int set_addr(int s, unsigned long req, const char *ifname, const char *addr, const char *what) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sin->sin_addr);
    if (ioctl(s, req, &ifr) != 0) {
        printf("app: error: %s %s %s: %s\n", what, ifname, addr, strerror(errno));
        return -1;
    }
    return 0;
}

static int link_up(int s, const char *ifname) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
        printf("app: error: SIOCGIFFLAGS %s: %s\n", ifname, strerror(errno));
        return -1;
    }
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) {
        printf("app: error: SIOCSIFFLAGS %s up: %s\n", ifname, strerror(errno));
        return -1;
    }
    return 0;
}

/* lo up; eth0 (waiting for the driver to register it) 10.0.2.15/24, up, default route. */
static int net_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        printf("app: error: socket: %s\n", strerror(errno));
        return -1;
    }
    int rc = link_up(s, "lo");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
    double until = now_s() + 10;
    while (rc == 0 && ioctl(s, SIOCGIFINDEX, &ifr) != 0) {
        if (now_s() > until) {
            printf("app: error: no eth0 10 s after loading virtio_net (no NIC given to QEMU?)\n");
            rc = -1;
            break;
        }
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    /* app_addr/app_mask/app_gw on the kernel command line: a bridged provider network. */
    const char *addr = getenv("app_addr") ? getenv("app_addr") : GUEST_ADDR;
    const char *netmask = getenv("app_mask") ? getenv("app_mask") : GUEST_MASK;
    const char *gateway = getenv("app_gw") ? getenv("app_gw") : GUEST_GW;
    if (rc == 0) rc = set_addr(s, SIOCSIFADDR, "eth0", addr, "SIOCSIFADDR");
    if (rc == 0) rc = set_addr(s, SIOCSIFNETMASK, "eth0", netmask, "SIOCSIFNETMASK");
    if (rc == 0) rc = link_up(s, "eth0");
    if (rc == 0) {
        /* Only replies to forwarded connections need no route; a default route is a courtesy. */
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
        struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
        struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
        dst->sin_family = gw->sin_family = mask->sin_family = AF_INET;
        inet_pton(AF_INET, gateway, &gw->sin_addr);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        if (ioctl(s, SIOCADDRT, &rt) != 0)
            printf("app: warning: default route via %s: %s\n", gateway, strerror(errno));
    }
    close(s);
    return rc;
}

static void http_serve(int port) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0) {
        printf("app: error: http listen on :%d: %s\n", port, strerror(errno));
        _exit(1);
    }
    printf("app: http listening on :%d\n", port);
    unsigned long long requests = 0;
    for (;;) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        /* Read the request head (or whatever came within 2 s); its content does not matter. */
        struct timeval tv = {2, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[2048];
        size_t n = 0;
        while (n < sizeof req - 1) {
            ssize_t r = read(c, req + n, sizeof req - 1 - n);
            if (r <= 0) break;
            n += (size_t)r;
            req[n] = 0;
            if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
        }
        requests++;
        struct timespec up;
        clock_gettime(CLOCK_BOOTTIME, &up);
        char body[128], resp[384];
        int bl = snprintf(body, sizeof body, "guest-app: requests=%llu uptime=%.2fs\n", requests,
                          up.tv_sec + up.tv_nsec / 1e9);
        int rl = snprintf(resp, sizeof resp,
                          "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n%s",
                          bl, body);
        for (int off = 0; off < rl;) {
            ssize_t w = send(c, resp + off, (size_t)(rl - off), MSG_NOSIGNAL);
            if (w <= 0) break;
            off += (int)w;
        }
        close(c);
    }
}

/* Start the HTTP server in a child process. Call before mapping the working set, so the child
 * shares none of it (a fork afterwards would copy-on-write every dirtied page). */
static void app_start(unsigned long port) {
    if (port == 0 || port > 65535) {
        printf("app: error: http_port=%lu is not a TCP port\n", port);
        return;
    }
    if (load_modules() != 0 || net_up() != 0) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) printf("app: error: fork: %s\n", strerror(errno));
    else if (pid == 0) http_serve((int)port);
}

int main(void) {
    console();
    if (getenv("http_port")) app_start(env_ul("http_port", 0));
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
