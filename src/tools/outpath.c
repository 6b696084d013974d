/*
 * outpath.c - the output named by -o, checked before the work starts:
 * a merge that runs for minutes and then fails to rename its result
 * onto a folder, or into a folder it may not write, wastes the run and
 * says "I/O error" about a mistake in the command line.  A trailing
 * slash or an existing folder means "write a folder" (issue 19.3).
 */
#include "outpath.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The folder OUT is committed in (renamed into): must exist, be a
 * folder and be writable. */
static int parent_ok(const char *out, const char *prog)
{
    char *dir = strdup(out);
    if (!dir) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return 4;
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = '\0';
    char *slash = strrchr(dir, '/');
    const char *parent = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int rc = 0;
    struct stat sb;
    int e = stat(parent, &sb) != 0 ? errno : S_ISDIR(sb.st_mode) ? 0 : ENOTDIR;
    if (e) {
        fprintf(stderr, "%s: %s: cannot write here: %s: %s\n", prog, out, parent, strerror(e));
        rc = e == ENOTDIR ? 3 : 4; /* a file where the folder should be: bad input */
    } else if (access(parent, W_OK | X_OK) != 0) {
        fprintf(stderr, "%s: %s: cannot write here: %s: %s\n", prog, out, parent,
                strerror(errno));
        rc = 4;
    }
    free(dir);
    return rc;
}

int outpath_folder(const char *out, const char *prog)
{
    struct stat sb;
    if (stat(out, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "%s: %s: exists and is not a folder (the output is a folder)\n", prog,
                out);
        return 2;
    }
    return parent_ok(out, prog);
}

int outpath_file(const char **out, char **owned, int slash, const char *name, const char *prog)
{
    *owned = NULL;
    size_t n = strlen(*out);
    int ends = n > 0 && (*out)[n - 1] == '/';
    slash = slash || ends;
    if (slash || is_dir(*out)) {
        if (!is_dir(*out)) {
            int rc = parent_ok(*out, prog);
            if (rc)
                return rc;
            if (mkdir(*out, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "%s: %s: %s\n", prog, *out, strerror(errno));
                return 4;
            }
        }
        const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        if (asprintf(owned, "%s%s%s", *out, ends ? "" : "/", base) < 0) {
            *owned = NULL;
            fprintf(stderr, "%s: out of memory\n", prog);
            return 4;
        }
        *out = *owned;
    }
    if (is_dir(*out)) {
        fprintf(stderr, "%s: %s: exists and is a folder (the output is a file)\n", prog, *out);
        return 2;
    }
    return parent_ok(*out, prog);
}

int outpath_checkpoint(const char **out, char **owned, int slash, const char *input,
                       const char *shard, const char *prog)
{
    *owned = NULL;
    size_t bl = strlen(input);
    int folder_in = !shard && (is_dir(input) || (bl > 11 && !strcmp(input + bl - 11, ".index.json")));
    return folder_in ? outpath_folder(*out, prog)
                     : outpath_file(out, owned, slash, shard ? shard : input, prog);
}

char *outpath_trim_slashes(char *s)
{
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}
