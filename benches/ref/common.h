/* Shared helpers for the reference programs: small, no allocation in children. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

static inline void die(const char *what) {
    perror(what);
    exit(2);
}

/* argv for PROG ARGS... COUNTER: the counter is appended as the last
 * argument, as brood does (a "{n}" argument is not supported here). */
static inline char **counter_argv(int argc, char **argv, char *numbuf) {
    char **v = calloc((size_t)argc + 2, sizeof(char *));
    if (!v) die("calloc");
    for (int i = 0; i < argc; i++) v[i] = argv[i];
    v[argc] = numbuf;
    v[argc + 1] = NULL;
    return v;
}

/* Raise the soft RLIMIT_NOFILE to the hard one, as brood does. */
static inline void raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}
#endif
