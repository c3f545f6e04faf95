/* linegen BYTES WRITE_SIZE [N]
 *
 * Writes BYTES bytes of 80-byte lines (79 printable bytes and '\n') to
 * stdout, in write(2) calls of WRITE_SIZE bytes (65536: big buffered writes;
 * 80: one line per write; 1: one byte per write). The optional last argument
 * is the counter that brood and the reference loops append; it is ignored. */
#include "common.h"

#define LINE 80

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: linegen BYTES WRITE_SIZE [N]\n"); return 2; }
    long long total = atoll(argv[1]);
    long wsize = atol(argv[2]);
    if (wsize < 1) wsize = 1;
    /* pattern[o % LINE .. ] is the stream from offset o on */
    size_t plen = (size_t)wsize + 2 * LINE;
    char *pat = malloc(plen);
    if (!pat) die("malloc");
    for (size_t i = 0; i < plen; i++)
        pat[i] = (i % LINE == LINE - 1) ? '\n' : (char)('a' + (i % LINE) % 26);
    long long off = 0;
    while (off < total) {
        long long want = total - off < wsize ? total - off : wsize;
        ssize_t w = write(1, pat + off % LINE, (size_t)want);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        off += w;
    }
    return 0;
}
