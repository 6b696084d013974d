/*
 * mkfixture.c - deterministic tiny (or not so tiny) base checkpoints and
 * PEFT LoRA adapters for the demo, tests and benchmarks, written through
 * liblora's safetensors writer.  Not installed.
 *
 * Usage (a stable interface: other areas' tests and benchmarks call it):
 *
 *   tests/mkfixture llama|gpt2 OUTDIR [OPTION]...
 *
 * writes
 *   OUTDIR/base/model.safetensors      the base checkpoint
 *   OUTDIR/base/config.json            a Hugging Face config.json for it
 *   OUTDIR/adapter/adapter_config.json PEFT LoRA config
 *   OUTDIR/adapter/adapter_model.safetensors
 *
 * Options (defaults in brackets):
 *   --dtype F32|F16|BF16     base dtype [F32]
 *   --adapter-dtype D        lora_A / lora_B dtype [F32]
 *   --layers N               [2]
 *   --hidden H               hidden_size / n_embd [64]
 *   --intermediate I         llama intermediate_size [172]; gpt2 n_inner [4*H]
 *   --heads N                attention heads [4]
 *   --kv-heads N             llama key/value heads [heads/2, at least 1]
 *   --vocab V                [256]
 *   --positions P            gpt2 n_positions, llama max_position_embeddings [128]
 *   --rank R                 [8]
 *   --alpha A                [16]
 *   --targets a,b,...        PEFT target_modules entries [llama: q_proj,v_proj;
 *                            gpt2: c_attn]; each selects the modules whose name
 *                            equals it or ends with "." + it (PEFT's rule), so
 *                            gpt2 c_proj selects attn.c_proj and mlp.c_proj
 *   --seed S                 [1]
 *   --prefixed               gpt2: base keys start with "transformer." (as
 *                            GPT2LMHeadModel saves them); default: without,
 *                            as openai-community/gpt2 on the hub
 *   --no-base / --no-adapter skip one of the two
 *   --untrained              lora_B all zeros (PEFT's initialisation)
 *   --nan                    the first lora_B all NaN (for --check tests)
 *   --dora                   DoRA: use_dora true and a lora_magnitude_vector [out]
 *                            per module, values in [0.9, 1.1]
 *
 * Layouts: llama tensors are model.embed_tokens.weight [V,H], per layer
 * model.layers.N.{input_layernorm,post_attention_layernorm}.weight [H],
 * self_attn.{q,k,v,o}_proj.weight and mlp.{gate,up,down}_proj.weight
 * (nn.Linear [out,in]), then model.norm.weight [H] and lm_head.weight [V,H].
 * gpt2 tensors are wte [V,E], wpe [P,E], h.N.ln_1/ln_2.{weight,bias},
 * h.N.attn.c_attn [E,3E], h.N.attn.c_proj [E,E], h.N.mlp.c_fc [E,I],
 * h.N.mlp.c_proj [I,E] (Conv1D [in,out]) with biases, ln_f.  Adapter keys
 * are PEFT's: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight
 * [r,in], ...lora_B.weight [out,r]; gpt2: base_model.model.transformer.h.N...
 * with fan_in_fan_out true.
 *
 * Values: every tensor is drawn from its own xorshift64* stream seeded by
 * (seed, tensor name), so the output is the same bytes whatever the order
 * or size of writes.  Linear and embedding weights are uniform with std
 * 0.02; norm weights 1 ± 0.05; biases ± 0.02; lora_A is uniform in
 * ±1/sqrt(in) (PEFT's kaiming-uniform init); lora_B is nonzero and
 * scaled so that the RMS of scale·B·A is about 1% of the base weights'
 * (what trained adapters look like).  Tensors are generated and written
 * in chunks, so even LLaMA-7B shapes (--hidden 4096 --intermediate 11008
 * --heads 32 --kv-heads 32 --vocab 32000) use a few MB of memory.
 */
#include "internal.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define CHUNK (1u << 20) /* elements generated per write */

typedef struct opts {
    int gpt2;
    lora_dtype dtype, adtype;
    uint64_t layers, hidden, inter, heads, kv_heads, vocab, positions, rank;
    double alpha;
    char *targets[64];
    size_t n_targets;
    uint64_t seed;
    int prefixed, no_base, no_adapter, untrained, nan, dora;
} opts;

/* One tensor to generate: uniform in [center - bound, center + bound). */
typedef struct gen {
    char name[256];
    int ndim;
    uint64_t shape[2];
    double center, bound;
} gen;

static float *fbuf;
static unsigned char *ebuf;

static uint64_t mix(uint64_t x)
{
    /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t stream_seed(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    uint64_t s = mix(seed ^ mix(h));
    return s ? s : 1;
}

static int write_tensor(lora_stw *w, const gen *g, lora_dtype dt, uint64_t seed, lora_error *err)
{
    uint64_t n = g->ndim == 1 ? g->shape[0] : g->shape[0] * g->shape[1];
    uint64_t s = stream_seed(seed, g->name);
    unsigned esz = lora_dtype_bits(dt) / 8;
    /* u in [0,1) from the top 24 bits, mapped to [c-b, c+b) without libm */
    const float a = (float)(2.0 * g->bound / 16777216.0), c = (float)(g->center - g->bound);
    for (uint64_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? (size_t)(n - i) : CHUNK;
        for (size_t k = 0; k < m; k++) {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            uint64_t x = s * 0x2545F4914F6CDD1DULL;
            fbuf[k] = (float)(x >> 40) * a + c;
        }
        int rc = lora_encode_f32(dt, fbuf, ebuf, m);
        if (rc)
            return lora_seterr(err, rc, "%s: cannot encode %s", g->name, lora_dtype_name(dt));
        if ((rc = lora_stw_write(w, g->name, i * esz, ebuf, m * esz, err)))
            return rc;
    }
    return LORA_OK;
}

static int add(gen **v, size_t *n, size_t *cap, const char *name, uint64_t d0, uint64_t d1,
               double center, double bound)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        gen *p = realloc(*v, c * sizeof *p);
        if (!p)
            return -1;
        *v = p;
        *cap = c;
    }
    gen *g = &(*v)[(*n)++];
    snprintf(g->name, sizeof g->name, "%s", name);
    g->ndim = d1 ? 2 : 1;
    g->shape[0] = d0;
    g->shape[1] = d1;
    g->center = center;
    g->bound = bound;
    return 0;
}

static int write_file(const char *path, gen *g, size_t n, lora_dtype dt, uint64_t seed,
                      lora_error *err)
{
    lora_stw *w = NULL;
    int rc = lora_stw_new(path, &w, err);
    for (size_t i = 0; !rc && i < n; i++)
        rc = lora_stw_declare(w, g[i].name, dt, g[i].ndim, g[i].shape, err);
    if (!rc)
        rc = lora_stw_start(w, err);
    for (size_t i = 0; !rc && i < n; i++)
        rc = write_tensor(w, &g[i], dt, seed, err);
    if (rc) {
        lora_stw_abort(w);
        return rc;
    }
    return lora_stw_commit(w, err);
}

#define W_STD 0.02
#define U_BOUND(std) ((std) * 1.7320508075688772) /* uniform with that std */

/* A linear module: its base name (without ".weight"), in and out features. */
typedef struct lin {
    char name[200];
    uint64_t in, out;
} lin;

static size_t linears(const opts *o, lin *v, int hub)
{
    size_t n = 0;
    uint64_t H = o->hidden, hd = o->hidden / o->heads;
    for (uint64_t l = 0; l < o->layers; l++) {
        if (o->gpt2) {
            const char *p = hub ? "" : "transformer.";
            struct { const char *m; uint64_t in, out; } g[] = {
                {"attn.c_attn", H, 3 * H}, {"attn.c_proj", H, H},
                {"mlp.c_fc", H, o->inter}, {"mlp.c_proj", o->inter, H}};
            for (size_t i = 0; i < 4; i++) {
                snprintf(v[n].name, sizeof v[n].name, "%sh.%llu.%s", p, (unsigned long long)l,
                         g[i].m);
                v[n].in = g[i].in;
                v[n].out = g[i].out;
                n++;
            }
        } else {
            struct { const char *m; uint64_t in, out; } g[] = {
                {"self_attn.q_proj", H, o->heads * hd},  {"self_attn.k_proj", H, o->kv_heads * hd},
                {"self_attn.v_proj", H, o->kv_heads * hd}, {"self_attn.o_proj", o->heads * hd, H},
                {"mlp.gate_proj", H, o->inter},          {"mlp.up_proj", H, o->inter},
                {"mlp.down_proj", o->inter, H}};
            for (size_t i = 0; i < 7; i++) {
                snprintf(v[n].name, sizeof v[n].name, "model.layers.%llu.%s",
                         (unsigned long long)l, g[i].m);
                v[n].in = g[i].in;
                v[n].out = g[i].out;
                n++;
            }
        }
    }
    return n;
}

static int make_base(const opts *o, const char *dir, lora_error *err)
{
    gen *g = NULL;
    size_t n = 0, cap = 0;
    char nm[256];
    int bad = 0;
    uint64_t H = o->hidden;
    lin *lv = calloc(o->layers * 7 + 1, sizeof *lv);
    if (!lv)
        return lora_oom(err);
    size_t nl = linears(o, lv, !o->prefixed);
    const char *p = o->gpt2 && o->prefixed ? "transformer." : "";
    if (o->gpt2) {
        snprintf(nm, sizeof nm, "%swte.weight", p);
        bad |= add(&g, &n, &cap, nm, o->vocab, H, 0, U_BOUND(W_STD));
        snprintf(nm, sizeof nm, "%swpe.weight", p);
        bad |= add(&g, &n, &cap, nm, o->positions, H, 0, U_BOUND(0.01));
        for (uint64_t l = 0; l < o->layers; l++)
            for (int k = 1; k <= 2; k++) {
                snprintf(nm, sizeof nm, "%sh.%llu.ln_%d.weight", p, (unsigned long long)l, k);
                bad |= add(&g, &n, &cap, nm, H, 0, 1.0, 0.05);
                snprintf(nm, sizeof nm, "%sh.%llu.ln_%d.bias", p, (unsigned long long)l, k);
                bad |= add(&g, &n, &cap, nm, H, 0, 0, 0.02);
            }
        for (size_t i = 0; i < nl; i++) { /* Conv1D: [in, out] + bias [out] */
            snprintf(nm, sizeof nm, "%s.weight", lv[i].name);
            bad |= add(&g, &n, &cap, nm, lv[i].in, lv[i].out, 0, U_BOUND(W_STD));
            snprintf(nm, sizeof nm, "%s.bias", lv[i].name);
            bad |= add(&g, &n, &cap, nm, lv[i].out, 0, 0, 0.02);
        }
        snprintf(nm, sizeof nm, "%sln_f.weight", p);
        bad |= add(&g, &n, &cap, nm, H, 0, 1.0, 0.05);
        snprintf(nm, sizeof nm, "%sln_f.bias", p);
        bad |= add(&g, &n, &cap, nm, H, 0, 0, 0.02);
    } else {
        bad |= add(&g, &n, &cap, "model.embed_tokens.weight", o->vocab, H, 0, U_BOUND(W_STD));
        for (uint64_t l = 0; l < o->layers; l++) {
            snprintf(nm, sizeof nm, "model.layers.%llu.input_layernorm.weight",
                     (unsigned long long)l);
            bad |= add(&g, &n, &cap, nm, H, 0, 1.0, 0.05);
            snprintf(nm, sizeof nm, "model.layers.%llu.post_attention_layernorm.weight",
                     (unsigned long long)l);
            bad |= add(&g, &n, &cap, nm, H, 0, 1.0, 0.05);
        }
        for (size_t i = 0; i < nl; i++) { /* nn.Linear: [out, in] */
            snprintf(nm, sizeof nm, "%s.weight", lv[i].name);
            bad |= add(&g, &n, &cap, nm, lv[i].out, lv[i].in, 0, U_BOUND(W_STD));
        }
        bad |= add(&g, &n, &cap, "model.norm.weight", H, 0, 1.0, 0.05);
        bad |= add(&g, &n, &cap, "lm_head.weight", o->vocab, H, 0, U_BOUND(W_STD));
    }
    free(lv);
    int rc = bad ? lora_oom(err) : LORA_OK;
    char *path = NULL;
    if (!rc && asprintf(&path, "%s/model.safetensors", dir) < 0)
        rc = lora_oom(err);
    if (!rc)
        rc = write_file(path, g, n, o->dtype, o->seed, err);
    free(path);
    free(g);
    if (rc)
        return rc;

    /* config.json as transformers writes it for these architectures */
    const char *tdt = o->dtype == LORA_DT_F32 ? "float32"
                      : o->dtype == LORA_DT_F16 ? "float16" : "bfloat16";
    json_t *c;
    if (o->gpt2)
        c = json_pack("{s:[s], s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:f, s:f, s:f, s:f, "
                      "s:f, s:b, s:b, s:b, s:I, s:I, s:s, s:b}",
                      "architectures", "GPT2LMHeadModel", "model_type", "gpt2",
                      "activation_function", "gelu_new", "vocab_size", (json_int_t)o->vocab,
                      "n_positions", (json_int_t)o->positions, "n_ctx", (json_int_t)o->positions,
                      "n_embd", (json_int_t)H, "n_layer", (json_int_t)o->layers, "n_head",
                      (json_int_t)o->heads, "n_inner",
                      o->inter == 4 * H ? json_null() : json_integer((json_int_t)o->inter),
                      "layer_norm_epsilon", 1e-5,
                      "initializer_range", 0.02, "attn_pdrop", 0.0, "embd_pdrop", 0.0,
                      "resid_pdrop", 0.0, "scale_attn_weights", 1,
                      "scale_attn_by_inverse_layer_idx", 0, "reorder_and_upcast_attn", 0,
                      "bos_token_id", (json_int_t)(o->vocab - 1), "eos_token_id",
                      (json_int_t)(o->vocab - 1), "torch_dtype", tdt, "tie_word_embeddings", 1);
    else
        c = json_pack("{s:[s], s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:o, "
                      "s:b, s:b, s:b, s:f, s:s, s:I, s:I}",
                      "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_act",
                      "silu", "vocab_size", (json_int_t)o->vocab, "hidden_size", (json_int_t)H,
                      "intermediate_size", (json_int_t)o->inter, "num_hidden_layers",
                      (json_int_t)o->layers, "num_attention_heads", (json_int_t)o->heads,
                      "num_key_value_heads", (json_int_t)o->kv_heads, "head_dim",
                      (json_int_t)(H / o->heads), "max_position_embeddings",
                      (json_int_t)o->positions, "rms_norm_eps", 1e-5, "rope_theta", 10000.0,
                      "rope_scaling", json_null(), "tie_word_embeddings", 0, "attention_bias", 0,
                      "mlp_bias", 0, "initializer_range", 0.02, "torch_dtype", tdt,
                      "bos_token_id", (json_int_t)1, "eos_token_id", (json_int_t)2);
    char *s = c ? json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(c);
    if (!s || asprintf(&path, "%s/config.json", dir) < 0) {
        free(s);
        return lora_oom(err);
    }
    size_t len = strlen(s);
    s[len] = '\n'; /* json_dumps leaves room: replace the NUL, write len+1 */
    rc = lora_write_file_atomic(path, s, len + 1, 0644, err);
    free(s);
    free(path);
    return rc;
}

static int make_adapter(const opts *o, const char *dir, lora_error *err)
{
    lin *lv = calloc(o->layers * 7 + 1, sizeof *lv);
    gen *g = NULL;
    size_t n = 0, cap = 0;
    int bad = 0;
    if (!lv)
        return lora_oom(err);
    /* PEFT names modules from the model it wraps: GPT2LMHeadModel has
     * "transformer."; the base file may not (bind handles both) */
    size_t nl = linears(o, lv, 0);
    double scale = o->alpha / (double)o->rank;
    size_t used = 0;
    for (size_t i = 0; i < nl; i++) {
        int hit = 0;
        for (size_t t = 0; t < o->n_targets && !hit; t++)
            hit = lora_acfg_entry_matches(o->targets[t], lv[i].name);
        if (!hit)
            continue;
        used++;
        char nm[256];
        /* rms(s·B·A) = s·sqrt(r)·std(A)·std(B) = 1% of W_STD */
        double std_a = 1.0 / sqrt(3.0 * (double)lv[i].in);
        double std_b = 0.01 * W_STD / (scale * sqrt((double)o->rank) * std_a);
        snprintf(nm, sizeof nm, "base_model.model.%s.lora_A.weight", lv[i].name);
        bad |= add(&g, &n, &cap, nm, o->rank, lv[i].in, 0, 1.0 / sqrt((double)lv[i].in));
        snprintf(nm, sizeof nm, "base_model.model.%s.lora_B.weight", lv[i].name);
        bad |= add(&g, &n, &cap, nm, lv[i].out, o->rank, 0, o->untrained ? 0 : U_BOUND(std_b));
        if (o->nan && used == 1 && !bad)
            g[n - 1].center = NAN; /* every value NaN: bound * u + NaN */
        if (o->dora) {
            snprintf(nm, sizeof nm, "base_model.model.%s.lora_magnitude_vector", lv[i].name);
            bad |= add(&g, &n, &cap, nm, lv[i].out, 0, 1.0, 0.1);
        }
    }
    free(lv);
    if (bad) {
        free(g);
        return lora_oom(err);
    }
    if (!used) {
        free(g);
        return lora_seterr(err, LORA_EUSAGE, "--targets selects no module of this architecture");
    }
    char *path = NULL;
    int rc = LORA_OK;
    if (asprintf(&path, "%s/adapter_model.safetensors", dir) < 0)
        rc = lora_oom(err);
    if (!rc)
        rc = write_file(path, g, n, o->adtype, o->seed + 1, err);
    free(path);
    free(g);
    if (rc)
        return rc;

    json_t *tm = json_array();
    for (size_t t = 0; t < o->n_targets; t++)
        json_array_append_new(tm, json_string(o->targets[t]));
    json_t *c = json_pack(
        "{s:o, s:s, s:s, s:s, s:b, s:b, s:b, s:I, s:o, s:f, s:o, s:o, s:o, s:s, s:b, s:b, s:o}",
        "alpha_pattern", json_object(), "base_model_name_or_path",
        o->gpt2 ? "mkfixture/gpt2" : "mkfixture/llama", "bias", "none", "peft_type", "LORA",
        "fan_in_fan_out", o->gpt2, "inference_mode", 1, "init_lora_weights", 1, "r",
        (json_int_t)o->rank, "lora_alpha",
        o->alpha == floor(o->alpha) ? json_integer((json_int_t)o->alpha) : json_real(o->alpha),
        "lora_dropout", 0.0, "modules_to_save", json_null(), "rank_pattern", json_object(),
        "target_modules", tm, "task_type", "CAUSAL_LM", "use_dora", o->dora, "use_rslora", 0,
        "layers_to_transform", json_null());
    char *s = c ? json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(c);
    if (!s || asprintf(&path, "%s/adapter_config.json", dir) < 0) {
        free(s);
        return lora_oom(err);
    }
    size_t len = strlen(s);
    s[len] = '\n';
    rc = lora_write_file_atomic(path, s, len + 1, 0644, err);
    free(s);
    free(path);
    return rc;
}

/* mkdir -p */
static int mkdir_p(const char *path, lora_error *err)
{
    char *p = lora_strdup(path, err);
    if (!p)
        return LORA_EIO;
    for (char *q = p + 1;; q++) {
        if (*q != '/' && *q != '\0')
            continue;
        char c = *q;
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = lora_seterr_errno(err, LORA_EIO, errno, "mkdir %s", p);
            free(p);
            return rc;
        }
        *q = c;
        if (!c)
            break;
    }
    free(p);
    return LORA_OK;
}

static int parse_u64(const char *s, uint64_t *v, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *s == '-' || end == s || *end || x == 0 || x > max)
        return -1;
    *v = x;
    return 0;
}

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "mkfixture: %s\n", msg);
    fprintf(stderr, "usage: mkfixture llama|gpt2 OUTDIR [--dtype D] [--adapter-dtype D] "
                    "[--layers N] [--hidden H] [--intermediate I] [--heads N] [--kv-heads N] "
                    "[--vocab V] [--positions P] [--rank R] [--alpha A] [--targets a,b] "
                    "[--seed S] [--prefixed] [--no-base] [--no-adapter] [--untrained] [--nan] [--dora]\n"
                    "(the interface is documented at the top of tests/mkfixture.c)\n");
    return LORA_EUSAGE;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"dtype", 1, NULL, 'd'},  {"adapter-dtype", 1, NULL, 'D'}, {"layers", 1, NULL, 'l'},
        {"hidden", 1, NULL, 'H'}, {"intermediate", 1, NULL, 'I'},  {"heads", 1, NULL, 'n'},
        {"kv-heads", 1, NULL, 'k'}, {"vocab", 1, NULL, 'v'},       {"positions", 1, NULL, 'P'},
        {"rank", 1, NULL, 'r'},   {"alpha", 1, NULL, 'a'},         {"targets", 1, NULL, 't'},
        {"seed", 1, NULL, 's'},   {"prefixed", 0, NULL, 'x'},      {"no-base", 0, NULL, 'B'},
        {"no-adapter", 0, NULL, 'A'}, {"untrained", 0, NULL, 'Z'}, {"nan", 0, NULL, 'Q'}, {"dora", 0, NULL, 'O'},
        {NULL, 0, NULL, 0}};
    opts o = {.dtype = LORA_DT_F32, .adtype = LORA_DT_F32, .layers = 2, .hidden = 64,
              .heads = 4, .vocab = 256, .positions = 128, .rank = 8, .alpha = 16, .seed = 1};
    char *targets = NULL;
    int ch;
    const uint64_t big = 1ull << 24;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        uint64_t *u = NULL;
        switch (ch) {
        case 'd':
        case 'D': {
            lora_dtype d = lora_dtype_from_name(optarg);
            if (!lora_dtype_writable(d))
                return usage("dtype must be F32, F16 or BF16");
            *(ch == 'd' ? &o.dtype : &o.adtype) = d;
            break;
        }
        case 'l': u = &o.layers; break;
        case 'H': u = &o.hidden; break;
        case 'I': u = &o.inter; break;
        case 'n': u = &o.heads; break;
        case 'k': u = &o.kv_heads; break;
        case 'v': u = &o.vocab; break;
        case 'P': u = &o.positions; break;
        case 'r': u = &o.rank; break;
        case 's':
            if (parse_u64(optarg, &o.seed, UINT64_MAX))
                return usage("bad --seed");
            break;
        case 'a': {
            char *end;
            o.alpha = strtod(optarg, &end);
            if (end == optarg || *end || !(o.alpha > 0) || o.alpha > 1e6)
                return usage("bad --alpha");
            break;
        }
        case 't': targets = optarg; break;
        case 'x': o.prefixed = 1; break;
        case 'B': o.no_base = 1; break;
        case 'A': o.no_adapter = 1; break;
        case 'Z': o.untrained = 1; break;
        case 'Q': o.nan = 1; break;
        case 'O': o.dora = 1; break;
        default: return usage(NULL);
        }
        if (u && parse_u64(optarg, u, big))
            return usage("sizes must be integers from 1 to 2^24");
    }
    if (argc - optind != 2)
        return usage("need an architecture and an output folder");
    if (strcmp(argv[optind], "gpt2") == 0)
        o.gpt2 = 1;
    else if (strcmp(argv[optind], "llama") != 0)
        return usage("architecture must be llama or gpt2");
    const char *out = argv[optind + 1];
    if (!o.inter)
        o.inter = o.gpt2 ? 4 * o.hidden : 172;
    if (!o.kv_heads)
        o.kv_heads = o.heads > 1 ? o.heads / 2 : 1;
    if (o.hidden % o.heads || o.heads % o.kv_heads)
        return usage("heads must divide hidden, and kv-heads must divide heads");
    if (o.layers > 4096)
        return usage("at most 4096 layers");
    char *tl = strdup(targets ? targets : o.gpt2 ? "c_attn" : "q_proj,v_proj");
    if (!tl)
        return LORA_EIO;
    for (char *p = strtok(tl, ","); p; p = strtok(NULL, ","))
        if (o.n_targets < 64)
            o.targets[o.n_targets++] = p;
        else
            return usage("at most 64 --targets");
    if (!o.n_targets)
        return usage("empty --targets");

    lora_error err;
    lora_error_clear(&err);
    fbuf = malloc(CHUNK * sizeof *fbuf);
    ebuf = malloc(CHUNK * 4);
    char *bdir = NULL, *adir = NULL;
    int rc = !fbuf || !ebuf || asprintf(&bdir, "%s/base", out) < 0 ||
                     asprintf(&adir, "%s/adapter", out) < 0
                 ? lora_oom(&err)
                 : LORA_OK;
    if (!rc)
        rc = mkdir_p(out, &err);
    if (!rc && !o.no_base && !(rc = mkdir_p(bdir, &err)))
        rc = make_base(&o, bdir, &err);
    if (!rc && !o.no_adapter && !(rc = mkdir_p(adir, &err)))
        rc = make_adapter(&o, adir, &err);
    if (rc)
        fprintf(stderr, "mkfixture: %s\n", err.msg);
    free(bdir);
    free(adir);
    free(fbuf);
    free(ebuf);
    free(tl);
    return rc;
}
