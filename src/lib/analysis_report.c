/*
 * analysis_report.c - lora_analyze: runs the Section 7 analyses of
 * analysis.c over the modules of an adapter (optionally only some of
 * them) and renders them for lora-inspect as JSON or text, plus the φ
 * heat maps as one SVG file (one panel per module).  Output is
 * deterministic: modules in name order, numbers printed with fixed
 * formats.
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* A growing text buffer. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) LORA_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap : 256);
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* XML-escaped copy of s into b. */
static void sb_xml(sbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': sb_printf(b, "&amp;"); break;
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        default: sb_printf(b, "%c", *s);
        }
    }
}

static int name_matches(const char *want, const char *name)
{
    size_t n = strlen(name), w = strlen(want);
    if (strcmp(want, name) == 0)
        return 1;
    return n > w && name[n - w - 1] == '.' && strcmp(name + n - w, want) == 0;
}

static int selected(const lora_analysis_opts *o, const char *name)
{
    if (!o->modules)
        return 1;
    for (const char *const *p = o->modules; *p; p++)
        if (name_matches(*p, name))
            return 1;
    return 0;
}

static const lora_module *find_module(const lora_adapter *ad, const char *name)
{
    for (size_t i = 0; i < ad->n_modules; i++)
        if (strcmp(ad->modules[i].name, name) == 0)
            return &ad->modules[i];
    return NULL;
}

/* Heat-map colour for φ in [0, 1]: white to dark blue, like the paper. */
static void phi_colour(double v, char out[8])
{
    if (!(v >= 0))
        v = 0;
    if (v > 1)
        v = 1;
    int r = (int)lround(255 - v * (255 - 8)), g = (int)lround(255 - v * (255 - 48)),
        b = (int)lround(255 - v * (255 - 107));
    snprintf(out, 8, "#%02x%02x%02x", r, g, b);
}

typedef struct phi_panel {
    const char *name;
    double *phi;
    uint64_t ni, nj;
} phi_panel;

static int write_svg(const char *path, const phi_panel *p, size_t n, const char *n1,
                     const char *n2, lora_error *err)
{
    const int cols = n < 4 ? (int)n : 4, panel = 220, pad = 40;
    int rows = (int)((n + 3) / 4);
    sbuf b = {0};
    int W = cols * (panel + pad) + pad, H = rows * (panel + pad + 30) + pad + 30;
    sb_printf(&b,
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
              "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
              "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
              "<text x=\"%d\" y=\"20\" font-size=\"13\">&#966;(i, j) = "
              "&#8214;U_i&#7488;U_j&#8214;&#178;/min(i, j): rows i = top-i right-singular "
              "directions of A in ",
              W, H, W, H, pad);
    sb_xml(&b, n1);
    sb_printf(&b, ", columns j in ");
    sb_xml(&b, n2);
    sb_printf(&b, " (white 0, blue 1)</text>\n");
    for (size_t k = 0; k < n; k++) {
        int x0 = pad + (int)(k % 4) * (panel + pad), y0 = pad + 30 + (int)(k / 4) * (panel + pad + 30);
        uint64_t mx = p[k].ni > p[k].nj ? p[k].ni : p[k].nj;
        double cell = mx ? (double)panel / (double)mx : panel;
        sb_printf(&b, "<g>\n<text x=\"%d\" y=\"%d\">", x0, y0 - 6);
        sb_xml(&b, p[k].name);
        sb_printf(&b, "</text>\n");
        for (uint64_t i = 0; i < p[k].ni; i++)
            for (uint64_t j = 0; j < p[k].nj; j++) {
                char col[8];
                double v = p[k].phi[i * p[k].nj + j];
                phi_colour(v, col);
                sb_printf(&b,
                          "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                          "fill=\"%s\"><title>i=%llu j=%llu &#966;=%.4f</title></rect>\n",
                          x0 + (double)j * cell, y0 + (double)i * cell, cell, cell, col,
                          (unsigned long long)(i + 1), (unsigned long long)(j + 1), v);
            }
        sb_printf(&b,
                  "<rect x=\"%d\" y=\"%d\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" "
                  "stroke=\"#444\"/>\n</g>\n",
                  x0, y0, cell * (double)p[k].nj, cell * (double)p[k].ni);
    }
    sb_printf(&b, "</svg>\n");
    if (b.oom) {
        free(b.s);
        return lora_oom(err);
    }
    int rc = lora_write_file_atomic(path, b.s, b.len, 0644, err);
    free(b.s);
    return rc;
}

static json_t *jarray_d(const double *x, uint64_t n)
{
    json_t *a = json_array();
    for (uint64_t i = 0; i < n; i++)
        json_array_append_new(a, json_real(x[i]));
    return a;
}

/* Every --module name must name something. */
static int check_module_names(const lora_adapter *ad, const lora_analysis_opts *o,
                              lora_error *err)
{
    for (const char *const *p = o->modules; p && *p; p++) {
        int hit = 0;
        for (size_t i = 0; i < ad->n_modules && !hit; i++)
            hit = name_matches(*p, ad->modules[i].name);
        if (!hit)
            return lora_seterr(err, LORA_EUSAGE, "--module %s: no such module in %s", *p,
                               ad->path);
    }
    return LORA_OK;
}

/* --spectrum: the singular values of each selected module's dW. */
static int analyze_spectrum(lora_adapter *ad, const lora_analysis_opts *o, json_t *root,
                            sbuf *t, lora_error *err)
{
    json_t *arr = json_array();
    json_object_set_new(root, "spectrum", arr);
    sb_printf(t, "Spectrum of each module's dW (singular values, descending)\n");
    sb_printf(t, "%-44s %4s %6s %6s %8s %11s  %s\n", "module", "r", "rank90", "rank99",
              "stable", "||dW||_F", "singular values");
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        if (!selected(o, m->name))
            continue;
        lora_spectrum sp;
        int rc = lora_spectrum_module(m, &sp, err);
        if (rc)
            return rc;
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(m->name));
        json_object_set_new(e, "r", json_integer((json_int_t)m->r));
        json_object_set_new(e, "singular_values", jarray_d(sp.S, sp.k));
        json_object_set_new(e, "norm", json_real(sp.norm));
        json_object_set_new(e, "rank90", json_integer((json_int_t)sp.rank90));
        json_object_set_new(e, "rank99", json_integer((json_int_t)sp.rank99));
        json_object_set_new(e, "stable_rank", json_real(sp.stable_rank));
        json_array_append_new(arr, e);
        sb_printf(t, "%-44s %4llu %6llu %6llu %8.3f %11.4e ", m->name, (unsigned long long)m->r,
                  (unsigned long long)sp.rank90, (unsigned long long)sp.rank99, sp.stable_rank,
                  sp.norm);
        for (uint64_t k = 0; k < sp.k && k < 8; k++)
            sb_printf(t, " %.3e", sp.S[k]);
        sb_printf(t, "%s\n", sp.k > 8 ? " ..." : "");
        lora_spectrum_free(&sp);
    }
    return LORA_OK;
}

/* One module's phi panel, as JSON (into arr) and as a table. */
static void print_panel(const phi_panel *pp, json_t *arr, sbuf *t)
{
    json_t *e = json_object(), *rows = json_array();
    json_object_set_new(e, "name", json_string(pp->name));
    json_object_set_new(e, "r1", json_integer((json_int_t)pp->ni));
    json_object_set_new(e, "r2", json_integer((json_int_t)pp->nj));
    for (uint64_t a = 0; a < pp->ni; a++)
        json_array_append_new(rows, jarray_d(pp->phi + a * pp->nj, pp->nj));
    json_object_set_new(e, "phi", rows);
    json_array_append_new(arr, e);
    sb_printf(t, "%s\n", pp->name);
    sb_printf(t, "  i\\j");
    for (uint64_t b = 0; b < pp->nj; b++)
        sb_printf(t, " %6llu", (unsigned long long)(b + 1));
    sb_printf(t, "\n");
    for (uint64_t a = 0; a < pp->ni; a++) {
        sb_printf(t, "%5llu", (unsigned long long)(a + 1));
        for (uint64_t b = 0; b < pp->nj; b++)
            sb_printf(t, " %6.3f", pp->phi[a * pp->nj + b]);
        sb_printf(t, "\n");
    }
}

/* --compare: subspace similarity of the modules two adapters share,
 * and the SVG of the panels when asked. */
static int analyze_compare(lora_adapter *ad, const lora_analysis_opts *o, json_t *root,
                           sbuf *t, lora_error *err)
{
    json_t *cmp = json_object(), *arr = json_array();
    json_object_set_new(cmp, "other", json_string(o->other->path ? o->other->path : ""));
    json_object_set_new(cmp, "modules", arr);
    json_object_set_new(root, "compare", cmp);
    phi_panel *panels = calloc(ad->n_modules + 1, sizeof *panels);
    size_t n_panels = 0;
    if (!panels)
        return lora_oom(err);
    sb_printf(t, "%sSubspace similarity phi(i, j) of the A matrices' top right-singular "
                 "directions\n(this adapter: rows i; %s: columns j)\n",
              t->len ? "\n" : "", o->other->path ? o->other->path : "other");
    int rc = LORA_OK;
    for (size_t i = 0; i < ad->n_modules && rc == LORA_OK; i++) {
        const lora_module *m = &ad->modules[i];
        const lora_module *m2 = find_module(o->other, m->name);
        if (!m2 || !selected(o, m->name))
            continue;
        phi_panel *pp = &panels[n_panels];
        if ((rc = lora_module_phi(m, m2, &pp->phi, &pp->ni, &pp->nj, err)) != LORA_OK)
            break;
        pp->name = m->name;
        n_panels++;
        print_panel(pp, arr, t);
    }
    if (rc == LORA_OK && n_panels == 0)
        rc = lora_seterr(err, LORA_EINPUT, "%s and %s have no module in common%s", ad->path,
                         o->other->path, o->modules ? " (among those --module names)" : "");
    if (rc == LORA_OK && o->svg_path)
        rc = write_svg(o->svg_path, panels, n_panels, ad->path ? ad->path : "",
                       o->other->path ? o->other->path : "", err);
    for (size_t i = 0; i < n_panels; i++)
        free(panels[i].phi);
    free(panels);
    return rc;
}

/* --base: how much each module's dW amplifies directions of W. */
static int analyze_amplification(lora_adapter *ad, const lora_analysis_opts *o, json_t *root,
                                 sbuf *t, lora_error *err)
{
    int rc = lora_adapter_bind(ad, o->base, err);
    if (rc)
        return rc;
    json_t *arr = json_array();
    json_object_set_new(root, "amplification", arr);
    sb_printf(t, "%sAmplification of W by dW (||U^T W V||_F for the top-r directions "
                 "U, V of dW, of W, of random)\n",
              t->len ? "\n" : "");
    sb_printf(t, "%-44s %4s %11s %11s %11s %11s %11s %9s\n", "module", "r", "||W||_F",
              "||dW||_F", "dW dirs", "W dirs", "random", "factor");
    for (size_t i = 0; i < ad->n_modules; i++) {
        const lora_module *m = &ad->modules[i];
        if (!selected(o, m->name))
            continue;
        const lora_tensor *w = lora_ckpt_find(o->base, m->target, NULL);
        if (!w)
            return lora_seterr(err, LORA_EINPUT, "%s: base has no tensor %s", m->name, m->target);
        if (lora_ckpt_permuted_heads(o->base, w)) /* rows in llama.cpp's order */
            return lora_seterr(err, LORA_EINPUT, "%s: base tensor %s of a GGUF base has its rows "
                               "permuted by llama.cpp's converter: the amplification needs the "
                               "Hugging Face checkpoint", m->name, m->target);
        if (m->magnitude) /* DoRA also rescales each row of W0 + dW: dW alone is not its update */
            return lora_seterr(err, LORA_EINPUT, "%s: a DoRA module: the amplification of W by "
                               "dW does not describe it (DoRA rescales every output row too)",
                               m->name);
        lora_amplification a;
        if ((rc = lora_module_amplification(m, w, &a, err)) != LORA_OK)
            return rc;
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(m->name));
        json_object_set_new(e, "r", json_integer((json_int_t)a.r));
        json_object_set_new(e, "norm_w", json_real(a.norm_w));
        json_object_set_new(e, "norm_dw", json_real(a.norm_dw));
        json_object_set_new(e, "proj_dw", json_real(a.proj_dw));
        json_object_set_new(e, "proj_w", json_real(a.proj_w));
        json_object_set_new(e, "proj_random", json_real(a.proj_random));
        json_object_set_new(e, "factor", json_real(a.factor));
        json_array_append_new(arr, e);
        sb_printf(t, "%-44s %4llu %11.4e %11.4e %11.4e %11.4e %11.4e %9.3f\n", m->name,
                  (unsigned long long)a.r, a.norm_w, a.norm_dw, a.proj_dw, a.proj_w,
                  a.proj_random, a.factor);
    }
    return LORA_OK;
}

/* The report as JSON (ROOT) or as the tables in T, into *text. */
static int render(json_t *root, int json, sbuf *t, char **text, lora_error *err)
{
    if (json) {
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        size_t n = s ? strlen(s) : 0;
        *text = s ? malloc(n + 2) : NULL;
        if (*text) {
            memcpy(*text, s, n);
            memcpy(*text + n, "\n", 2);
        }
        free(s);
        return *text ? LORA_OK : lora_oom(err);
    }
    if (t->oom)
        return lora_oom(err);
    *text = t->s ? t->s : strdup("");
    t->s = NULL;
    return *text ? LORA_OK : lora_oom(err);
}

int lora_analyze(lora_adapter *ad, const lora_analysis_opts *o, int json, char **text,
                 lora_error *err)
{
    *text = NULL;
    int rc = check_module_names(ad, o, err);
    if (rc)
        return rc;
    json_t *root = json_object();
    sbuf t = {0};
    if (!root)
        return lora_oom(err);
    json_object_set_new(root, "adapter", json_string(ad->path ? ad->path : ""));
    if (o->spectrum)
        rc = analyze_spectrum(ad, o, root, &t, err);
    if (rc == LORA_OK && o->other)
        rc = analyze_compare(ad, o, root, &t, err);
    if (rc == LORA_OK && o->base)
        rc = analyze_amplification(ad, o, root, &t, err);
    if (rc == LORA_OK)
        rc = render(root, json, &t, text, err);
    free(t.s);
    json_decref(root);
    return rc;
}
