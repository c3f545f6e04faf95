/* nop [ARGS...]
 *
 * The do-nothing child: exits 0 at once. Built static when the toolchain
 * allows, so that its exec costs no dynamic loading and what is left of a
 * spawn is the supervisor's own work and the kernel's fork/exec/exit. */
int main(void) { return 0; }
