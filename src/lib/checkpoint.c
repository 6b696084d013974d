/*
 * checkpoint.c - a model checkpoint as the tools see it: one
 * .safetensors file, or the shards named by a
 * model.safetensors.index.json, with tensors looked up by name across
 * shards.
 *
 * Of the index only weight_map is trusted (formats.md §1: metadata
 * varies between writers, tied weights may be missing from it).  It is
 * validated before any shard is opened: an object mapping tensor names
 * to plain file names in the same folder (no path separators, no
 * ".."), so a hostile index cannot make us open files elsewhere.
 * Every shard is then opened and fully validated, and every tensor the
 * index places in a shard must really be there.  Tensors a shard holds
 * that the index omits are still listed; a name held by two shards is
 * refused, since a lookup could not tell which one is meant.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

/* Largest index file read (the Llama-3 405B index is about 2 MB). */
#define INDEX_MAX_BYTES (64u << 20)

typedef struct ck_entry {
    const lora_tensor *t;
    size_t shard;
} ck_entry;

struct lora_ckpt {
    char *dir;
    int sharded;
    size_t nsh;
    lora_st **sh;
    char **shname;
    size_t n;
    ck_entry *all;        /* shard by shard, file order */
    ck_entry **by_name;
};

/* ---- index ---- */

void lora_index_free(lora_index *ix)
{
    if (!ix)
        return;
    for (size_t i = 0; i < ix->n; i++)
        free(ix->tensor[i]);
    for (size_t i = 0; i < ix->nshards; i++)
        free(ix->shard[i]);
    free(ix->tensor);
    free(ix->shard_of);
    free(ix->shard);
    free(ix);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int plain_file_name(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return *s && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") && strcmp(s, ".");
}

typedef struct {
    const char *tensor, *shard;
} pair;

static int cmp_pair(const void *a, const void *b)
{
    return strcmp(((const pair *)a)->tensor, ((const pair *)b)->tensor);
}

/* As in safetensors.c: no terminal control characters from a hostile
 * file in our messages. */
static void defang(lora_error *err)
{
    if (!err)
        return;
    for (unsigned char *p = (unsigned char *)err->msg; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            p[0] = '?', p[1] = '?';
    }
}

static int parse_index(const char *json, size_t len, const char *name, lora_index **out,
                       lora_error *err);

int lora_index_parse(const char *json, size_t len, const char *name, lora_index **out,
                     lora_error *err)
{
    int rc = parse_index(json, len, name, out, err);
    if (rc)
        defang(err);
    return rc;
}

/* weight_map's entries as (tensor, shard) pairs, each shard a plain
 * file name in the index's folder. */
static int read_pairs(json_t *wm, const char *name, pair *pairs, lora_error *err)
{
    size_t k = 0;
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v)
    {
        if (!json_is_string(v))
            return lora_seterr(err, LORA_EINPUT,
                               "%s: not a valid index: weight_map entry \"%s\" is not a string",
                               name, key);
        if (!plain_file_name(json_string_value(v)))
            return lora_seterr(err, LORA_EINPUT,
                               "%s: not a valid index: tensor \"%s\" names shard \"%s\", which "
                               "is not a plain file name in the index's folder",
                               name, key, json_string_value(v));
        pairs[k].tensor = key;
        pairs[k].shard = json_string_value(v);
        k++;
    }
    return LORA_OK;
}

/* ix->shard: the N pairs' shard names, unique and sorted. */
static int unique_shards(lora_index *ix, const pair *pairs, size_t n, lora_error *err)
{
    const char **names = malloc(n * sizeof *names);
    if (!names)
        return lora_oom(err);
    for (size_t i = 0; i < n; i++)
        names[i] = pairs[i].shard;
    qsort(names, n, sizeof *names, cmp_str);
    int rc = LORA_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        if (ix->nshards && strcmp(ix->shard[ix->nshards - 1], names[i]) == 0)
            continue;
        if (!(ix->shard[ix->nshards] = strdup(names[i])))
            rc = lora_oom(err);
        else
            ix->nshards++;
    }
    free(names);
    return rc;
}

/* ix->tensor sorted by name, and ix->shard_of each one's shard. */
static int index_tensors(lora_index *ix, pair *pairs, size_t n, lora_error *err)
{
    qsort(pairs, n, sizeof *pairs, cmp_pair);
    for (size_t i = 0; i < n; i++) {
        char *t = strdup(pairs[i].tensor);
        if (!t)
            return lora_oom(err);
        ix->tensor[ix->n++] = t;
        char **f = bsearch(&pairs[i].shard, ix->shard, ix->nshards, sizeof *ix->shard, cmp_str);
        ix->shard_of[i] = (size_t)(f - ix->shard);
    }
    return LORA_OK;
}

/* The weight_map object of ROOT, naming at least one tensor. */
static int weight_map(json_t *root, const char *name, json_t **wm, lora_error *err)
{
    if (!json_is_object(root))
        return lora_seterr(err, LORA_EINPUT, "%s: not a valid index: not a JSON object", name);
    *wm = json_object_get(root, "weight_map");
    if (!json_is_object(*wm))
        return lora_seterr(err, LORA_EINPUT,
                           "%s: not a valid index: no \"weight_map\" object", name);
    if (json_object_size(*wm) == 0)
        return lora_seterr(err, LORA_EINPUT, "%s: not a valid index: weight_map names no tensors",
                           name);
    return LORA_OK;
}

static lora_index *index_new(size_t n)
{
    lora_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    ix->tensor = calloc(n, sizeof *ix->tensor);
    ix->shard_of = calloc(n, sizeof *ix->shard_of);
    ix->shard = calloc(n, sizeof *ix->shard);
    if (!ix->tensor || !ix->shard_of || !ix->shard) {
        lora_index_free(ix);
        return NULL;
    }
    return ix;
}

static int parse_index(const char *json, size_t len, const char *name, lora_index **out,
                       lora_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (json_error_code(&je) == json_error_out_of_memory)
            return lora_oom(err);
        return lora_seterr(err, LORA_EINPUT, "%s: not a valid index: %s (line %d)", name,
                           je.text, je.line);
    }
    json_t *wm = NULL;
    lora_index *ix = NULL;
    pair *pairs = NULL;
    size_t n = 0;
    int rc = weight_map(root, name, &wm, err);
    if (!rc) {
        n = json_object_size(wm);
        ix = index_new(n);
        pairs = calloc(n, sizeof *pairs);
        if (!ix || !pairs)
            rc = lora_oom(err);
    }
    if (!rc)
        rc = read_pairs(wm, name, pairs, err);
    if (!rc)
        rc = unique_shards(ix, pairs, n, err);
    if (!rc)
        rc = index_tensors(ix, pairs, n, err);
    free(pairs);
    json_decref(root);
    if (rc) {
        lora_index_free(ix);
        return rc;
    }
    *out = ix;
    return LORA_OK;
}

/* ---- checkpoint ---- */

void lora_ckpt_close(lora_ckpt *ck)
{
    if (!ck)
        return;
    for (size_t i = 0; i < ck->nsh; i++) {
        lora_st_close(ck->sh[i]);
        free(ck->shname[i]);
    }
    free(ck->sh);
    free(ck->shname);
    free(ck->all);
    free(ck->by_name);
    free(ck->dir);
    free(ck);
}

static char *join(const char *dir, const char *name, lora_error *err)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) {
        lora_oom(err);
        return NULL;
    }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int cmp_entry_name(const void *a, const void *b)
{
    const ck_entry *x = *(ck_entry *const *)a, *y = *(ck_entry *const *)b;
    return strcmp(x->t->name, y->t->name);
}

static const ck_entry *find_entry(const lora_ckpt *ck, const char *name)
{
    size_t lo = 0, hi = ck->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ck->by_name[mid]->t->name, name);
        if (c == 0)
            return ck->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Shards are open: list every tensor, refuse names held twice. */
static int build_table(lora_ckpt *ck, const char *what, lora_error *err)
{
    size_t n = 0;
    for (size_t s = 0; s < ck->nsh; s++)
        n += lora_st_count(ck->sh[s]);
    ck->all = calloc(n ? n : 1, sizeof *ck->all);
    ck->by_name = calloc(n ? n : 1, sizeof *ck->by_name);
    if (!ck->all || !ck->by_name)
        return lora_oom(err);
    for (size_t s = 0; s < ck->nsh; s++)
        for (size_t i = 0; i < lora_st_count(ck->sh[s]); i++) {
            ck->all[ck->n].t = lora_st_tensor(ck->sh[s], i);
            ck->all[ck->n].shard = s;
            ck->by_name[ck->n] = &ck->all[ck->n];
            ck->n++;
        }
    qsort(ck->by_name, ck->n, sizeof *ck->by_name, cmp_entry_name);
    for (size_t i = 1; i < ck->n; i++)
        if (strcmp(ck->by_name[i - 1]->t->name, ck->by_name[i]->t->name) == 0) {
            lora_seterr(err, LORA_EINPUT, "%s: tensor \"%s\" is in two shards, %s and %s",
                        what, ck->by_name[i]->t->name, ck->shname[ck->by_name[i - 1]->shard],
                        ck->shname[ck->by_name[i]->shard]);
            defang(err);
            return LORA_EINPUT;
        }
    return LORA_OK;
}

static int open_single(lora_ckpt *ck, const char *file, const char *base, lora_error *err)
{
    ck->sh = calloc(1, sizeof *ck->sh);
    ck->shname = calloc(1, sizeof *ck->shname);
    if (!ck->sh || !ck->shname)
        return lora_oom(err);
    ck->shname[0] = lora_strdup(base, err);
    if (!ck->shname[0])
        return LORA_EIO;
    /* counted before the open so that lora_ckpt_close frees the name
     * when the open fails (lora_st_close takes NULL) */
    ck->nsh = 1;
    /* an unquantized GGUF model: its tensors under Hugging Face names
     * (gguf_checkpoint.c) */
    int rc = lora_gguf_is_file(file) ? lora_gguf_st_open(file, &ck->sh[0], err)
                                     : lora_st_open(file, &ck->sh[0], err);
    if (rc)
        return rc;
    return build_table(ck, file, err);
}

static int open_index(lora_ckpt *ck, const char *file, lora_error *err)
{
    char *text;
    size_t len;
    int rc = lora_read_file(file, INDEX_MAX_BYTES, &text, &len, err);
    if (rc)
        return rc;
    lora_index *ix;
    rc = lora_index_parse(text, len, file, &ix, err);
    free(text);
    if (rc)
        return rc;
    ck->sharded = 1;
    ck->sh = calloc(ix->nshards, sizeof *ck->sh);
    ck->shname = calloc(ix->nshards, sizeof *ck->shname);
    if (!ck->sh || !ck->shname) {
        rc = lora_oom(err);
        goto out;
    }
    for (size_t s = 0; s < ix->nshards; s++) {
        ck->shname[s] = ix->shard[s];
        ix->shard[s] = NULL;
        ck->nsh++;
        char *p = join(ck->dir, ck->shname[s], err);
        if (!p) {
            rc = LORA_EIO;
            goto out;
        }
        struct stat sb;
        if (stat(p, &sb) != 0 && errno == ENOENT) {
            rc = lora_seterr(err, LORA_EINPUT, "%s: shard %s is missing (no file %s)", file,
                             ck->shname[s], p);
            free(p);
            goto out;
        }
        rc = lora_st_open(p, &ck->sh[s], err);
        free(p);
        if (rc) {
            lora_err_prefix(err, "%s: shard %s", file, ck->shname[s]);
            goto out;
        }
    }
    rc = build_table(ck, file, err);
    if (rc)
        goto out;
    for (size_t i = 0; i < ix->n; i++) {
        size_t s = ix->shard_of[i];
        if (!lora_st_find(ck->sh[s], ix->tensor[i])) {
            const ck_entry *e = find_entry(ck, ix->tensor[i]);
            if (e)
                rc = lora_seterr(err, LORA_EINPUT,
                                 "%s: the index puts tensor \"%s\" in shard %s, which does "
                                 "not hold it (it is in %s)",
                                 file, ix->tensor[i], ck->shname[s], ck->shname[e->shard]);
            else
                rc = lora_seterr(err, LORA_EINPUT,
                                 "%s: the index puts tensor \"%s\" in shard %s, which does "
                                 "not hold it",
                                 file, ix->tensor[i], ck->shname[s]);
            defang(err);
            goto out;
        }
    }
out:
    lora_index_free(ix);
    return rc;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* A folder without safetensors: name the weights it does hold (a GGUF
 * or PyTorch checkpoint), so that the user knows to convert them. */
static int no_safetensors(const char *path, lora_error *err)
{
    static const char *const kinds[][2] = {
        {".gguf", "a GGUF file (llama.cpp's format)"},
        {".bin", "PyTorch weights"},
        {".pt", "PyTorch weights"},
        {".pth", "PyTorch weights"},
        {".ckpt", "a checkpoint in another format"},
        {".npz", "NumPy arrays"},
    };
    DIR *d = opendir(path);
    char found[256] = "";
    const char *what = NULL;
    struct dirent *de;
    while (d && !what && (de = readdir(d)))
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && !what; i++)
            if (ends_with(de->d_name, kinds[i][0])) {
                snprintf(found, sizeof found, "%s", de->d_name);
                what = kinds[i][1];
            }
    if (d)
        closedir(d);
    if (what) {
        lora_seterr(err, LORA_EINPUT,
                    "%s: no model.safetensors or model.safetensors.index.json in this folder; "
                    "it holds %s, %s: %s",
                    path, found, what,
                    ends_with(found, ".gguf")
                        ? "give that file itself (lora-merge and lora-unmerge read unquantized "
                          "GGUF models), or convert it to safetensors"
                        : "lora-tools read safetensors, convert it first");
        defang(err);
        return LORA_EINPUT;
    }
    return lora_seterr(err, LORA_EINPUT,
                       "%s: no model.safetensors or model.safetensors.index.json in this folder",
                       path);
}

int lora_ckpt_open(const char *path, lora_ckpt **out, lora_error *err)
{
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lora_seterr_path(err, errno, LORA_PATH_EACCES_INPUT, path);
    lora_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck)
        return lora_oom(err);
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        ck->dir = lora_strdup(path, err);
        if (!ck->dir) {
            rc = LORA_EIO;
            goto fail;
        }
        char *single = join(path, "model.safetensors", err);
        char *index = join(path, "model.safetensors.index.json", err);
        if (!single || !index)
            rc = LORA_EIO;
        else if (is_file(single))
            rc = open_single(ck, single, "model.safetensors", err);
        else if (is_file(index))
            rc = open_index(ck, index, err);
        else
            rc = no_safetensors(path, err);
        free(single);
        free(index);
    } else {
        const char *slash = strrchr(path, '/');
        const char *base = slash ? slash + 1 : path;
        size_t dl = slash ? (size_t)(slash - path) : 1;
        ck->dir = malloc(dl + 1);
        if (!ck->dir) {
            rc = lora_oom(err);
            goto fail;
        }
        if (slash) {
            memcpy(ck->dir, path, dl);
            if (dl == 0) /* "/x.safetensors" */
                ck->dir[dl++] = '/';
        } else {
            ck->dir[0] = '.';
        }
        ck->dir[dl] = '\0';
        if (ends_with(path, ".json"))
            rc = open_index(ck, path, err);
        else
            rc = open_single(ck, path, base, err);
    }
    if (rc)
        goto fail;
    *out = ck;
    return LORA_OK;
fail:
    lora_ckpt_close(ck);
    return rc;
}

const char *lora_ckpt_dir(const lora_ckpt *ck)
{
    return ck->dir;
}
int lora_ckpt_is_sharded(const lora_ckpt *ck)
{
    return ck->sharded;
}
size_t lora_ckpt_shard_count(const lora_ckpt *ck)
{
    return ck->nsh;
}
lora_st *lora_ckpt_shard(const lora_ckpt *ck, size_t i)
{
    return i < ck->nsh ? ck->sh[i] : NULL;
}
const char *lora_ckpt_shard_name(const lora_ckpt *ck, size_t i)
{
    return i < ck->nsh ? ck->shname[i] : NULL;
}
size_t lora_ckpt_count(const lora_ckpt *ck)
{
    return ck->n;
}

const lora_tensor *lora_ckpt_tensor(const lora_ckpt *ck, size_t i, size_t *shard)
{
    if (i >= ck->n)
        return NULL;
    if (shard)
        *shard = ck->all[i].shard;
    return ck->all[i].t;
}

const lora_tensor *lora_ckpt_find(const lora_ckpt *ck, const char *name, size_t *shard)
{
    const ck_entry *e = find_entry(ck, name);
    if (!e)
        return NULL;
    if (shard)
        *shard = e->shard;
    return e->t;
}
