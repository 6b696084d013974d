/*
 * b3_hasher.c - BLAKE3's blake3.c, the official C implementation as Debian
 * ships it (librust-blake3-dev, found by configure as BLAKE3_SRC),
 * compiled into liblora unchanged.  Receipt version 6 hashes base
 * tensors with BLAKE3 (tensorhash.c says why).
 */
#include "blake3.c"
