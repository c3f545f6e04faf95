/* reaploop -n N -j P -o FILE PROG [ARGS...]
 *
 * The C self-pipe reaper: a SIGCHLD handler writes a byte to a non-blocking
 * pipe, one epoll loop waits on it, and on each wake waitpid(-1, WNOHANG)
 * runs until it returns 0. Each reaped pid is stamped with CLOCK_REALTIME
 * right after its waitpid returns; at the end FILE gets "PID SEC.NSEC" per
 * child. At most P children in flight, N in all (counter appended). */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>

static int self_w = -1;

static void on_chld(int sig) {
    (void)sig;
    int saved = errno;
    (void)!write(self_w, "c", 1);
    errno = saved;
}

int main(int argc, char **argv) {
    long n = 1, p = 1;
    const char *outpath = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "+n:j:o:")) != -1) {
        if (opt == 'n') n = atol(optarg);
        else if (opt == 'j') p = atol(optarg);
        else if (opt == 'o') outpath = optarg;
        else return 2;
    }
    if (optind >= argc || !outpath) { fprintf(stderr, "usage: reaploop -n N -j P -o FILE PROG [ARGS...]\n"); return 2; }
    int sp[2];
    if (pipe2(sp, O_CLOEXEC | O_NONBLOCK)) die("pipe2");
    self_w = sp[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = sp[0] };
    epoll_ctl(ep, EPOLL_CTL_ADD, sp[0], &ev);
    pid_t *rp = calloc((size_t)n, sizeof(pid_t));
    struct timespec *rt = calloc((size_t)n, sizeof(struct timespec));
    char num[32];
    char **cargv = counter_argv(argc - optind, argv + optind, num);
    sigset_t all, saved;
    sigfillset(&all);
    long started = 0, running = 0, reaped = 0;
    while (started < n || running > 0) {
        while (started < n && running < p) {
            snprintf(num, sizeof num, "%ld", ++started);
            sigprocmask(SIG_SETMASK, &all, &saved);
            pid_t pid = fork();
            if (pid == 0) {
                signal(SIGCHLD, SIG_DFL);
                sigprocmask(SIG_SETMASK, &saved, NULL);
                execvp(cargv[0], cargv);
                _exit(127);
            }
            sigprocmask(SIG_SETMASK, &saved, NULL);
            if (pid < 0) die("fork");
            running++;
        }
        struct epoll_event got[4];
        int nev = epoll_wait(ep, got, 4, -1);
        if (nev < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        char drain[256];
        while (read(sp[0], drain, sizeof drain) > 0) {}
        int st;
        pid_t w;
        while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
            clock_gettime(CLOCK_REALTIME, &rt[reaped]);
            rp[reaped++] = w;
            running--;
        }
    }
    FILE *f = fopen(outpath, "w");
    if (!f) die("fopen");
    for (long i = 0; i < reaped; i++)
        fprintf(f, "%d %lld.%09ld\n", (int)rp[i], (long long)rt[i].tv_sec, rt[i].tv_nsec);
    fclose(f);
    return 0;
}
