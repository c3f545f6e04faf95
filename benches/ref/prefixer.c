/* prefixer -k K PROG [ARGS...]
 *
 * The output limit: start K children (PROG ARGS... i, i = 1..K), each with a
 * stdout and a stderr pipe, read every pipe through one epoll loop (64 KiB
 * reads, like brood), cut lines (at most 64 KiB), and write each line as
 * "name.i | line\n" (name = basename of PROG, labels padded to a common
 * width) into a 256 KiB buffer that goes out in large write(2) calls (when
 * it is more than half full, and before waiting in epoll). Children's
 * stdout goes to our stdout, stderr to our stderr. Exits once every pipe is
 * at EOF and every child is reaped. */
#include "common.h"
#include <fcntl.h>
#include <libgen.h>
#include <sys/epoll.h>
#include <sys/wait.h>

#define READ_SZ (64 * 1024)
#define MAX_LINE (64 * 1024)
#define OUT_SZ (256 * 1024)

struct out { int fd; char *buf; size_t len; };
struct stream { int fd; struct out *out; char *partial; size_t plen; const char *prefix; size_t prefix_len; };

static void out_flush(struct out *o) {
    size_t off = 0;
    while (off < o->len) {
        ssize_t w = write(o->fd, o->buf + off, o->len - off);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        off += (size_t)w;
    }
    o->len = 0;
}

static void out_line(struct out *o, const char *prefix, size_t pl, const char *line, size_t ll) {
    if (o->len + pl + ll + 1 > OUT_SZ) out_flush(o);
    memcpy(o->buf + o->len, prefix, pl); o->len += pl;
    memcpy(o->buf + o->len, line, ll); o->len += ll;
    o->buf[o->len++] = '\n';
    if (o->len > OUT_SZ / 2) out_flush(o);
}

static void feed(struct stream *s, const char *data, size_t n) {
    while (n > 0) {
        size_t room = MAX_LINE - s->plen;
        size_t win = n < room ? n : room;
        const char *nl = memchr(data, '\n', win);
        if (nl) {
            size_t i = (size_t)(nl - data);
            if (s->plen == 0) out_line(s->out, s->prefix, s->prefix_len, data, i);
            else {
                memcpy(s->partial + s->plen, data, i);
                out_line(s->out, s->prefix, s->prefix_len, s->partial, s->plen + i);
                s->plen = 0;
            }
            data += i + 1; n -= i + 1;
        } else if (win == room) {
            memcpy(s->partial + s->plen, data, win);
            out_line(s->out, s->prefix, s->prefix_len, s->partial, MAX_LINE);
            s->plen = 0;
            data += win; n -= win;
        } else {
            memcpy(s->partial + s->plen, data, win);
            s->plen += win;
            n = 0;
        }
    }
}

int main(int argc, char **argv) {
    long k = 1;
    int opt;
    while ((opt = getopt(argc, argv, "+k:")) != -1) {
        if (opt == 'k') k = atol(optarg);
        else return 2;
    }
    if (optind >= argc || k < 1) { fprintf(stderr, "usage: prefixer -k K PROG [ARGS...]\n"); return 2; }
    raise_nofile();
    char *name = basename(strdup(argv[optind]));
    int width = 0;
    char tmp[512];
    for (long i = 1; i <= k; i++) {
        int l = snprintf(tmp, sizeof tmp, "%s.%ld", name, i);
        if (l > width) width = l;
    }
    struct out outs[2] = { { 1, malloc(OUT_SZ), 0 }, { 2, malloc(OUT_SZ), 0 } };
    struct stream *streams = calloc((size_t)k * 2, sizeof *streams);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    char num[32];
    char **cargv = counter_argv(argc - optind, argv + optind, num);
    for (long i = 0; i < k; i++) {
        int po[2], pe[2];
        if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC)) die("pipe2");
        snprintf(num, sizeof num, "%ld", i + 1);
        char *prefix = malloc((size_t)width + 8);
        snprintf(tmp, sizeof tmp, "%s.%ld", name, i + 1);
        int pl = snprintf(prefix, (size_t)width + 8, "%-*s | ", width, tmp);
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            dup2(po[1], 1);
            dup2(pe[1], 2);
            execvp(cargv[0], cargv);
            _exit(127);
        }
        close(po[1]); close(pe[1]);
        for (int j = 0; j < 2; j++) {
            struct stream *s = &streams[i * 2 + j];
            s->fd = j ? pe[0] : po[0];
            s->out = &outs[j];
            s->partial = malloc(MAX_LINE);
            s->prefix = prefix;
            s->prefix_len = (size_t)pl;
            struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
            if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev)) die("epoll_ctl");
        }
    }
    long open_streams = k * 2;
    char *rbuf = malloc(READ_SZ);
    struct epoll_event evs[64];
    while (open_streams > 0) {
        int nev = epoll_wait(ep, evs, 64, 0);
        if (nev == 0) {
            out_flush(&outs[0]);
            out_flush(&outs[1]);
            nev = epoll_wait(ep, evs, 64, -1);
        }
        if (nev < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int e = 0; e < nev; e++) {
            struct stream *s = evs[e].data.ptr;
            ssize_t r = read(s->fd, rbuf, READ_SZ);
            if (r > 0) { feed(s, rbuf, (size_t)r); continue; }
            if (r < 0 && errno == EINTR) continue;
            if (s->plen) { out_line(s->out, s->prefix, s->prefix_len, s->partial, s->plen); s->plen = 0; }
            epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
            close(s->fd);
            open_streams--;
        }
    }
    out_flush(&outs[0]);
    out_flush(&outs[1]);
    int failed = 0, st;
    while (wait(&st) > 0)
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
    return failed;
}
