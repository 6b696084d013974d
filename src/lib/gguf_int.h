/*
 * gguf_int.h - what the GGUF files of liblora (gguf.c, gguf_write.c,
 * gguf_names.c, convert.c) share and nothing else needs.
 */
#ifndef LORA_GGUF_INT_H
#define LORA_GGUF_INT_H

#include "internal.h"

/* Bytes of a tensor of ggml type TYPE with dimensions ne[0..ndim) in
 * ggml order: 0; -1 unknown type, -2 ne[0] not whole blocks,
 * -3 overflow. */
int lora_ggml_nbytes(uint32_t type, int ndim, const uint64_t *ne, uint64_t *nbytes);

#endif
