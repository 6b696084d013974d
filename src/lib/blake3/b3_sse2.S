/*
 * b3_sse2.S - BLAKE3's sse2 kernels for x86-64 (the official assembly from
 * Debian's librust-blake3-dev, unchanged); elsewhere nothing, and
 * BLAKE3's dispatch uses its portable code.
 */
#if defined(__x86_64__) && defined(__ELF__)
#include "blake3_sse2_x86-64_unix.S"
#endif
