/* pausechild [FIFO] N
 *
 * The smallest long-lived child: pause() until a signal kills it. With two
 * arguments, it first writes one byte to the FIFO named by the first, so
 * that the benchmark can tell when every child is alive (exec'd and
 * running), whoever started it. Built static when the toolchain allows. */
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc >= 3) {
        int fd = open(argv[1], O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            (void)!write(fd, "1", 1);
            close(fd);
        }
    }
    for (;;) pause();
}
