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

/* The writer for a merge into a GGUF base (gguf_checkpoint.c): the
 * input's version; a tensor at a given offset in the data section (the
 * input's layout kept: aligned and in order, or start fails); bytes by
 * tensor index (declaration order), from any thread; a whole tensor
 * copied from another file; the bytes before the tensor data as
 * written, after start; a string value replaced by one of the same
 * length after start (a hash known only at the end). */
void lora_ggw_set_version(lora_ggw *w, uint32_t version);
int lora_ggw_declare_at(lora_ggw *w, const char *name, uint32_t type, int ndim,
                        const uint64_t *ne, uint64_t offset, lora_error *err);
int lora_ggw_write_at(lora_ggw *w, size_t i, uint64_t off, const void *buf, size_t len,
                      lora_error *err);
int lora_ggw_copy_at(lora_ggw *w, size_t i, int src_fd, uint64_t src_off, lora_error *err);
const unsigned char *lora_ggw_header(const lora_ggw *w, size_t *len);
int lora_ggw_patch_str(lora_ggw *w, const char *key, const char *value, lora_error *err);

#endif
