/*
 * model_internal.h - what the files of the causal language model share:
 * the per-family description (model_family.c), the model's weights
 * (model_weights.c), the forward session (model_forward.c) and the
 * numerical kernels (model_kernels.c).  model.c opens models and
 * attaches adapters.
 */
#ifndef LORA_MODEL_INTERNAL_H
#define LORA_MODEL_INTERNAL_H

#include "internal.h"

#define TRY(x)                  \
    do {                        \
        int rc_ = (x);          \
        if (rc_ != LORA_OK)     \
            return rc_;         \
    } while (0)

enum { NORM_LAYER = 1, NORM_RMS = 2 };
enum { ACT_GELU_TANH = 1, ACT_SILU = 2, ACT_RELU = 3, ACT_GELU = 4 };
enum { POS_LEARNED = 1, POS_ROPE = 2 };

/* One decoder-only family as the forward computes it.  Tensor names
 * are relative to the model's prefix; per-layer names hang off
 * "<prefix><layers>N." and are NULL when the family has no such tensor.
 * A family is one entry of the table in model_family.c. */
typedef struct lora_family {
    int arch;                  /* LORA_ARCH_* */
    const char *prefixes[3];   /* tried in order: the first holding `embed` wins */
    const char *embed, *pos_embed, *final_norm, *proj_in, *proj_out; /* ".weight" implied */
    uint64_t pos_offset;       /* OPT's learned positions start at row 2 */
    const char *layers;        /* "h." / "layers." */
    const char *n1, *n2;       /* the block's two norms (before attention, before the MLP) */
    const char *pn1, *pn2;     /* Gemma: norms of attention's and the MLP's outputs */
    int norm_plus_one;         /* Gemma's RMSNorm scales by (1 + w) */
    const char *qkv;           /* fused [q; k; v] (GPT-2 c_attn) or NULL */
    int qkv_interleaved;       /* fused per head [q_h; k_h; v_h] (GPT-NeoX) */
    const char *q, *k, *v, *o;
    const char *q_norm, *k_norm; /* per-head RMSNorm of q and k (Qwen3) */
    const char *gate, *up, *down; /* gate NULL: plain MLP */
    const char *gate_up;       /* fused [gate; up] (Phi-3), or NULL */
    const char *head;          /* "lm_head.weight" / "embed_out.weight" (no prefix) */
    int head_bias;             /* the head has a bias (Phi) */
    int conv1d;                /* weights stored [in, out] (GPT-2 Conv1D) */
    int norm;                  /* NORM_* */
    int norm_bias;             /* LayerNorm with bias */
    int act;                   /* ACT_* */
    int pos;                   /* POS_* */
    int all_bias;              /* every projection has a bias (GPT-2, OPT) */
} lora_family;

/* The family of cfg->arch (never NULL for a parsed config). */
const lora_family *lora_family_of(int arch);

/* One matrix product of the model: y[n, out] = x[n, in]·W (+ b), where W
 * is stored [in, out] (GPT-2 Conv1D) or [out, in] (nn.Linear), with an
 * optional LoRA pair applied unmerged and an optional merged weight. */
typedef struct linop {
    char *tensor;        /* checkpoint name */
    uint64_t in, out;
    int conv1d;
    float *w, *b;
    /* adapter */
    float *A, *B;        /* [r, in], [out, r] */
    uint64_t r;
    float scale;
    float *wm;           /* merged W, same layout as w */
    float *dora;         /* DoRA at run time: [out] factors m / ||W0 + dW|| (dora.c), or NULL */
} linop;

#define LAYER_OPS 9

typedef struct layer {
    float *n1w, *n1b, *n2w, *n2b;     /* norms (RMSNorm: no biases) */
    float *qnw, *knw;                 /* q/k norms [head_dim] */
    float *p1w, *p2w;                 /* Gemma's post-attention / post-MLP norms */
    linop qkv;                        /* fused */
    linop q, k, v;
    linop o;
    linop up, down, gate;
    linop gate_up;                    /* fused (Phi-3) */
} layer;

struct lora_model {
    lora_model_config cfg;
    const lora_family *fam;
    lora_ckpt *ck;
    char prefix[32];     /* one of fam->prefixes */
    float *embed, *wpe, *nfw, *nfb, *head;
    linop pin, pout;     /* OPT project_in / project_out (w NULL when absent) */
    char embed_name[96];  /* checkpoint names of the input embedding and the */
    char head_name[64];   /* head ("" when tied: head == embed) */
    /* Adapters on the embedding and on the head, both never shared with
     * the transformer blocks' ops: eop.A/B are lora_embedding_A [r, V]
     * and B [E, r], eop.wm the merged embedding; hop is the head as a
     * Linear [V, E] (its w is head, not owned), hop.wm the merged head.
     * With tied embeddings an lm_head update changes the head alone, as
     * PEFT applies it: hop.wm is embed + ΔW and embed stays. */
    linop eop, hop;
    layer *L;
    float *inv_freq;     /* [rotary_dim / 2] */
    float *inv_freq_local; /* Gemma 3's sliding layers (rope_local_theta), or NULL */
    float *inv_freq_long;  /* longrope past rope_original_max (inv_freq: the short one) */
    uint64_t params;
    lora_adapter *ad;
    size_t n_adapted;
    int merged;
};

void layer_ops(layer *l, linop **ops);
void linop_free_adapter(linop *op);
void linop_free(linop *op);

/* model_weights.c */
int model_load_weights(lora_model *m, lora_error *err);
int model_check_layer_count(const lora_model *m, lora_error *err);

struct lora_run {
    lora_model *m;
    int mode;
    uint64_t cap, pos;
    float **kc, **vc;       /* per layer [cap, kv_dim] */
    float *x, *h, *q, *att, *sc, *f1, *f2, *lt, *qkv, *e;
    float *y, *z;           /* parallel blocks: the MLP's input, attention's output */
    float *cosv, *sinv;     /* [cap, rotary_dim/2] */
    float *cosl, *sinl;     /* the same for inv_freq_local */
    float *cosg, *sing;     /* the same for inv_freq_long */
    uint64_t rmax;
};

/* model_kernels.c: the numerical steps, each with its contract there. */
void matmul(int wt, size_t n, uint64_t out, uint64_t in, float alpha, const float *x, size_t ldx,
            const float *W, size_t ldw, float beta, float *y, size_t ldy);
void linop_run(const lora_run *r, const linop *op, const float *x, size_t ldx, size_t n, float *y,
               size_t ldy);
void layernorm(const float *x, float *y, size_t n, uint64_t E, const float *w, const float *b,
               double eps);
void rmsnorm(const float *x, float *y, size_t n, uint64_t E, const float *w, double eps);
void model_norm(const lora_model *m, const float *x, float *y, size_t n, const float *w,
                const float *b);
void activate(int act, float *x, size_t n);
int model_act(const lora_model *m);
void rope(const lora_run *r, uint64_t l, float *v, size_t ld, size_t n, uint64_t nheads);
int layer_windowed(const lora_model_config *c, uint64_t l);
void head_rmsnorm(float *v, size_t ld, size_t n, uint64_t nheads, uint64_t hd, const float *w,
                  double eps);
void attention(lora_run *r, uint64_t l, const float *q, size_t ldq, size_t n, float *out);
void embedding_lora(const linop *op, uint64_t V, int32_t tok, float *x);

#endif
