/* crashstamp FILE RUN_US [N]
 *
 * A program that crashes, for restart latency: at start it appends
 * "S PID SECONDS.NANOSECONDS\n" to FILE, runs (sleeps) RUN_US microseconds
 * so that it is plainly up, appends "E PID SECONDS.NANOSECONDS\n", then
 * _exit(1)s. The times are CLOCK_REALTIME, as in exitstamp, so that they
 * can be set beside a supervisor's own wall-clock stamps. Each line is one
 * O_APPEND write(2), so the lines of successive runs never mix. Only the
 * formatting and one write lie between the E stamp and _exit. The counter
 * that brood or the harness may append is ignored. */
#include "common.h"
#include <fcntl.h>
#include <time.h>

static void stamp(int fd, char kind) {
    char buf[64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int len = snprintf(buf, sizeof buf, "%c %d %lld.%09ld\n", kind, (int)getpid(), (long long)ts.tv_sec,
                       ts.tv_nsec);
    (void)!write(fd, buf, (size_t)len);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: crashstamp FILE RUN_US [N]\n"); return 2; }
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die("open");
    stamp(fd, 'S');
    long us = atol(argv[2]);
    struct timespec d = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {}
    stamp(fd, 'E');
    _exit(1);
}
