/* concloop -n N PROG [ARGS...]
 *
 * N children alive at once, then a graceful stop: the C reference for
 * brood's `spawn -n N` on long-lived children. Like brood, each child gets
 * a stdout and a stderr pipe (read ends in one epoll), its own process
 * group and PR_SET_PDEATHSIG; signals arrive through a signalfd. On SIGTERM
 * (or SIGINT) every child's group gets SIGTERM; then pipes are read to EOF
 * and every child reaped, and concloop exits. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    long n = 1;
    int opt;
    while ((opt = getopt(argc, argv, "+n:")) != -1) {
        if (opt == 'n') n = atol(optarg);
        else return 2;
    }
    if (optind >= argc) { fprintf(stderr, "usage: concloop -n N PROG [ARGS...]\n"); return 2; }
    raise_nofile();
    sigset_t mask, empty;
    sigemptyset(&empty);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || ep < 0) die("signalfd/epoll");
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = sfd };
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    pid_t *pids = calloc((size_t)n, sizeof(pid_t));
    char num[32];
    char **cargv = counter_argv(argc - optind, argv + optind, num);
    pid_t me = getpid();
    long live = 0, open_pipes = 0;
    for (long i = 0; i < n; i++) {
        int po[2], pe[2];
        if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) die("pipe2");
        snprintf(num, sizeof num, "%ld", i + 1);
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            setpgid(0, 0);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != me) _exit(1);
            sigprocmask(SIG_SETMASK, &empty, NULL);
            dup2(po[1], 1);
            dup2(pe[1], 2);
            execvp(cargv[0], cargv);
            _exit(127);
        }
        setpgid(pid, pid);
        pids[i] = pid;
        live++;
        close(po[1]); close(pe[1]);
        int rds[2] = { po[0], pe[0] };
        for (int j = 0; j < 2; j++) {
            fcntl(rds[j], F_SETFL, O_NONBLOCK);
            ev.data.fd = rds[j];
            if (epoll_ctl(ep, EPOLL_CTL_ADD, rds[j], &ev)) die("epoll_ctl");
            open_pipes++;
        }
    }
    int stopping = 0;
    char buf[65536];
    struct epoll_event evs[256];
    while (!(stopping && live == 0 && open_pipes == 0)) {
        int nev = epoll_wait(ep, evs, 256, -1);
        if (nev < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int e = 0; e < nev; e++) {
            int fd = evs[e].data.fd;
            if (fd == sfd) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si) {
                    if ((si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) && !stopping) {
                        stopping = 1;
                        for (long i = 0; i < n; i++)
                            if (pids[i] > 0) kill(-pids[i], SIGTERM);
                    }
                }
                int st;
                pid_t w;
                while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
                    live--;
                    for (long i = 0; i < n; i++)
                        if (pids[i] == w) { pids[i] = 0; break; }
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR))) continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            close(fd);
            open_pipes--;
        }
    }
    return 0;
}
