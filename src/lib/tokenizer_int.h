/*
 * tokenizer_int.h - the parts of a Hugging Face tokenizer.json shared by
 * the tokenizer files (tokenizer.c: loading and the encode pipeline;
 * tokenizer_bpe.c: the BPE model; tokenizer_pretok.c: normalizers and
 * pre-tokenizers; tokenizer_decode.c: decoders).  Private to them.
 *
 * Every Sequence (normalizers, pre-tokenizers, decoders, post-processors)
 * is flattened into one array of steps when the file is read.
 */
#ifndef LORA_TOKENIZER_INT_H
#define LORA_TOKENIZER_INT_H

#include "internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>

/* Limits: every length a tokenizer.json or a text can bring. */
#define TK_MAX_FILE (512u << 20)      /* tokenizer.json bytes */
#define TK_MAX_IDS (1u << 24)         /* highest token id + 1 */
#define TK_MAX_TOKEN 4096             /* bytes of one vocabulary entry */
#define TK_MAX_STEPS 64               /* steps of a flattened Sequence */
#define TK_MAX_PATTERN 8192           /* bytes of one regex */
#define TK_MAX_TEXT (1ull << 30)      /* bytes of one text to encode */
#define TK_MATCH_LIMIT 10000000u      /* PCRE2 match limit per search */

/* A growable byte buffer. */
typedef struct tk_buf {
    char *p;
    size_t len, cap;
} tk_buf;
int tk_buf_reserve(tk_buf *b, size_t extra, lora_error *err);
int tk_buf_add(tk_buf *b, const void *p, size_t n, lora_error *err);

/* A piece of text being pre-tokenized: bytes [off, off+len) of a pool;
 * first: it starts at offset 0 of the original text (Metaspace "first"). */
typedef struct tk_piece {
    size_t off, len;
    int first;
} tk_piece;
typedef struct tk_pieces {
    tk_piece *v;
    size_t n, cap;
} tk_pieces;
int tk_pieces_add(tk_pieces *ps, size_t off, size_t len, int first, lora_error *err);

/* A compiled pattern: a PCRE2 regex or a literal string. */
typedef struct tk_pattern {
    pcre2_code *re;   /* NULL for a literal */
    pcre2_match_context *mc;
    char *lit;
    size_t litlen;
} tk_pattern;
int tk_pattern_parse(json_t *pat, const char *what, tk_pattern *out, lora_error *err);
void tk_pattern_free(tk_pattern *p);
/* Next match of P in S[0..len) at or after START: 1 with [*ms, *me),
 * 0 when none, -code on a regex error (match limit). */
int tk_pattern_next(const tk_pattern *p, pcre2_match_data *md, const char *s, size_t len,
                    size_t start, size_t *ms, size_t *me, lora_error *err);

/* Normalizers. */
enum { TK_N_NFC = 1, TK_N_NFD, TK_N_NFKC, TK_N_NFKD, TK_N_PREPEND, TK_N_REPLACE };
typedef struct tk_norm {
    int kind;
    char *str;        /* Prepend: prepend; Replace: content */
    tk_pattern pat;   /* Replace */
} tk_norm;

/* Pre-tokenizers. */
enum { TK_P_BYTELEVEL = 1, TK_P_SPLIT, TK_P_DIGITS, TK_P_METASPACE };
enum { TK_SPLIT_REMOVED = 1, TK_SPLIT_ISOLATED, TK_SPLIT_PREV, TK_SPLIT_NEXT, TK_SPLIT_CONTIG };
typedef struct tk_pretok {
    int kind;
    int add_prefix_space, use_regex;   /* ByteLevel */
    tk_pattern pat;                    /* Split */
    int behavior, invert;              /* Split */
    int individual;                    /* Digits */
    char repl[8];                      /* Metaspace replacement (one UTF-8 char) */
    size_t repl_len;
    int prepend;                       /* Metaspace: 0 never, 1 always, 2 first */
    int split;                         /* Metaspace */
} tk_pretok;

/* Decoders. */
enum { TK_D_BYTELEVEL = 1, TK_D_METASPACE, TK_D_REPLACE, TK_D_BYTEFALLBACK, TK_D_FUSE, TK_D_STRIP };
typedef struct tk_decoder {
    int kind;
    char repl[8];          /* Metaspace */
    size_t repl_len;
    int prepend;           /* Metaspace: prepend_scheme != never */
    tk_pattern pat;        /* Replace */
    char *content;         /* Replace content; Strip content (one char) */
    size_t start, stop;    /* Strip */
} tk_decoder;

typedef struct tk_added {
    char *content;         /* as in the file */
    char *norm;            /* content after the normalizer when normalized */
    size_t len, norm_len;
    int32_t id;
    int special, normalized, lstrip, rstrip, single_word;
} tk_added;

/* A byte trie over added tokens, for leftmost-longest matching. */
typedef struct tk_trie_node {
    uint32_t child;        /* first child, 0 none */
    uint32_t sibling;      /* next sibling, 0 none */
    int32_t added;         /* index into added[] ending here, -1 none */
    unsigned char byte;
} tk_trie_node;
typedef struct tk_trie {
    tk_trie_node *v;       /* v[0] is the root */
    uint32_t n, cap;
    unsigned char first[256];   /* 1 when some token starts with this byte */
} tk_trie;

/* The word cache: model-level piece → ids, shared by every caller
 * (behind a pointer: it changes under a const tokenizer, under its lock). */
typedef struct tk_cache_entry {
    char *key;
    uint32_t keylen, nids;
    int32_t *ids;
} tk_cache_entry;
typedef struct tk_cache {
    pthread_mutex_t lock;
    tk_cache_entry *v;
    size_t mask, n;
} tk_cache;

struct lora_tokenizer {
    /* vocabulary: id → bytes; bytes → id through an open-addressing table */
    size_t nids;                 /* highest id + 1 over vocab and added tokens */
    char *arena;                 /* every vocab string, back to back */
    size_t arena_len;
    uint64_t *tok_off;           /* per id: offset << 16 | length; UINT64_MAX none */
    uint32_t *vhash;             /* id + 1, 0 empty */
    size_t vhash_mask;
    size_t model_vocab;          /* entries of model.vocab */

    /* BPE merges: (left id, right id) → rank, merged id */
    uint64_t *mkeys;             /* left << 32 | right, UINT64_MAX empty */
    uint64_t *mvals;             /* rank << 32 | merged id */
    size_t mhash_mask;
    int ignore_merges, byte_fallback, fuse_unk;
    int32_t unk;                 /* -1 none */
    char *cont_prefix, *eow_suffix;  /* continuing_subword_prefix, end_of_word_suffix */
    int32_t byte_ids[256];       /* <0xNN> tokens, -1 none */

    tk_norm norm[TK_MAX_STEPS];
    size_t n_norm;
    tk_pretok pre[TK_MAX_STEPS];
    size_t n_pre;
    tk_decoder dec[TK_MAX_STEPS];
    size_t n_dec;
    int has_decoder;

    /* post-processor template for one sequence: ids before and after */
    int32_t *tpl_pre, *tpl_post;
    size_t n_tpl_pre, n_tpl_post;

    tk_added *added;
    size_t n_added;
    int32_t *added_of_id;        /* per id: index into added[] or -1 */
    tk_trie trie_raw, trie_norm; /* non-normalized, normalized added tokens */

    int32_t bos, eos;

    tk_cache *cache;
};

/* Work buffers of one encode call (encode is reentrant). */
typedef struct tk_work {
    tk_buf pool[2];
    tk_pieces pcs[2];
    tk_buf tmp, tmp2;
    tk_pieces spans;             /* matches of one split; .first = is a match */
    pcre2_match_data *md;
    /* BPE scratch */
    int32_t *sym_c;
    int32_t *sym_prev, *sym_next;
    uint32_t *sym_len;
    size_t sym_cap;
    uint64_t *heap;              /* rank << 32 | position */
    size_t heap_cap;
    /* output */
    int32_t *ids;
    size_t n, cap;
} tk_work;

/* tokenizer.c: open from memory (tests, fuzzing); CFG may be NULL. */
int tk_open_buffers(const char *json, size_t len, const char *cfg, size_t cfglen, const char *name,
                    lora_tokenizer **out, lora_error *err);

/* tokenizer_bpe.c */
int tk_vocab_build(lora_tokenizer *t, json_t *vocab, json_t *added, lora_error *err);
int tk_merges_build(lora_tokenizer *t, json_t *merges, lora_error *err);
int32_t tk_vocab_find(const lora_tokenizer *t, const char *s, size_t len);
const char *tk_token(const lora_tokenizer *t, int32_t id, size_t *len);
int tk_bpe_word(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, lora_error *err);
int tk_ids_add(tk_work *w, int32_t id, lora_error *err);
int tk_cache_new(lora_tokenizer *t, lora_error *err);
void tk_cache_free(lora_tokenizer *t);
void tk_work_free(tk_work *w);

/* tokenizer_pretok.c */
int tk_norm_parse(json_t *j, lora_tokenizer *t, lora_error *err);
int tk_pretok_parse(json_t *j, lora_tokenizer *t, lora_error *err);
/* Normalize S into OUT (cleared first). */
int tk_normalize(const lora_tokenizer *t, tk_work *w, const char *s, size_t len, tk_buf *out,
                 lora_error *err);
/* Pre-tokenize w->pool[0]/w->pcs[0] in place (results end in pool[0]/pcs[0]). */
int tk_pretokenize(const lora_tokenizer *t, tk_work *w, lora_error *err);
/* Unicode helpers (utf8proc). */
size_t tk_utf8_len(unsigned char c);
int32_t tk_utf8_decode(const char *s, size_t len, size_t *adv);
int tk_is_whitespace(int32_t c);
int tk_is_alnum(int32_t c);
/* Byte-level alphabet: byte → code point and back (-1 when not in it). */
int32_t tk_byte_char(unsigned char b);
int tk_char_byte(int32_t c);

/* tokenizer_decode.c */
int tk_decoder_parse(json_t *j, lora_tokenizer *t, lora_error *err);
void tk_decoder_free(tk_decoder *d);
/* *text NUL-terminated; *len (optional) its length (it may hold NULs). */
int tk_decode(const lora_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
              char **text, size_t *len, lora_error *err);
/* Append S with every ill-formed UTF-8 subsequence replaced by U+FFFD
 * (Rust's String::from_utf8_lossy: one per maximal subpart). */
int tk_utf8_lossy(tk_buf *out, const char *s, size_t len, lora_error *err);
/* Offset of the first ill-formed byte of S, or len when valid. */
size_t tk_utf8_valid_prefix(const char *s, size_t len);

#endif
