/* forkloop [-v] -n N -j P PROG [ARGS...]
 *
 * The textbook loop, minimal: fork, execvp(PROG ARGS... i), waitpid, with at
 * most P children in flight. No pipes, no signal handling: the spawn limit
 * that brood's `spawn -n N -j P -q` is compared with. With -v it spawns with
 * vfork and execv (no page-table copy, the parent waits until the child has
 * exec'd, as posix_spawn and brood do): the tighter limit. */
#include "common.h"
#include <sys/wait.h>

int main(int argc, char **argv) {
    static long n = 1, p = 1; /* static: vfork may clobber automatic variables */
    int opt, use_vfork = 0;
    while ((opt = getopt(argc, argv, "+vn:j:")) != -1) {
        if (opt == 'v') use_vfork = 1;
        else if (opt == 'n') n = atol(optarg);
        else if (opt == 'j') p = atol(optarg);
        else return 2;
    }
    if (optind >= argc) { fprintf(stderr, "usage: forkloop [-v] -n N -j P PROG [ARGS...]\n"); return 2; }
    char num[32];
    char **cargv = counter_argv(argc - optind, argv + optind, num);
    long started = 0, running = 0, failed = 0;
    while (started < n || running > 0) {
        while (started < n && running < p) {
            snprintf(num, sizeof num, "%ld", ++started);
            pid_t pid;
            if (use_vfork) {
                pid = vfork();
                if (pid == 0) {
                    execv(cargv[0], cargv);
                    _exit(127);
                }
            } else {
                pid = fork();
                if (pid == 0) {
                    execvp(cargv[0], cargv);
                    _exit(127);
                }
            }
            if (pid < 0) die("fork");
            running++;
        }
        int st;
        pid_t w = waitpid(-1, &st, 0);
        if (w < 0) { if (errno == EINTR) continue; die("waitpid"); }
        running--;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    return failed ? 1 : 0;
}
