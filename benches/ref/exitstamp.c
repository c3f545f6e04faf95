/* exitstamp DELAY_US FILE [N]
 *
 * Sleeps DELAY_US microseconds (so that its parent is idle, waiting, when
 * it exits), then appends "PID SECONDS.NANOSECONDS\n" to FILE, the
 * CLOCK_REALTIME just before _exit(0). CLOCK_REALTIME because brood's
 * events file stamps its `exit` event with wall-clock time; the reference
 * reaper stamps with the same clock. The file is opened before the stamp;
 * only the formatting and one write(2) lie between the stamp and _exit. */
#include "common.h"
#include <fcntl.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: exitstamp DELAY_US FILE [N]\n"); return 2; }
    long us = atol(argv[1]);
    int fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) die("open");
    struct timespec d = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&d, &d) != 0 && errno == EINTR) {}
    char buf[64];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int len = snprintf(buf, sizeof buf, "%d %lld.%09ld\n", (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec);
    (void)!write(fd, buf, (size_t)len);
    _exit(0);
}
