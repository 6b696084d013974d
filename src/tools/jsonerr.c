/*
 * jsonerr.c - with --json, a tool that fails prints one JSON object on
 * stdout naming the exit code, its class and the message, so that a
 * script parsing stdout learns why without scraping stderr.
 *
 * Why a stream wrapper instead of a call at every error site: the tools
 * report failures in many places (option parsing, the library's
 * messages, getopt), and any site that forgot the JSON call would break
 * the promise silently.  Here stderr is wrapped (glibc fopencookie): each
 * byte still goes to fd 2 at once, and the last "PROG: " line is kept;
 * stdout is wrapped to know whether a JSON document (a report, lora-pack
 * verify's own error) was already written.  on_exit sees the exit status
 * whether main returned or exit() was called.  Progress meters test
 * isatty(2), the fd, so they are unaffected.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "jsonerr.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *prog_name;
static char line[1024];      /* the stderr line being written */
static size_t line_len;
static char last[1024];      /* last complete "PROG: " line, prefix removed */
static int stdout_written;
static FILE *real_stdout;

static void take_line(void)
{
    line[line_len] = '\0';
    size_t p = strlen(prog_name);
    if (strncmp(line, prog_name, p) == 0 && strncmp(line + p, ": ", 2) == 0 &&
        strncmp(line + p + 2, "warning", 7) != 0)
        snprintf(last, sizeof last, "%s", line + p + 2);
    line_len = 0;
}

static ssize_t err_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(2, buf + done, n - done);
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n')
            take_line();
        else if (line_len < sizeof line - 1)
            line[line_len++] = buf[i];
    }
    return (ssize_t)n;
}

static ssize_t out_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie;
    if (n)
        stdout_written = 1;
    return (ssize_t)fwrite(buf, 1, n, real_stdout);
}

static int out_close(void *cookie)
{
    (void)cookie;
    return fflush(real_stdout);
}

static const char *exit_class(int status)
{
    switch (status) {
    case 1: return "check";
    case 2: return "usage";
    case 3: return "input";
    default: return "io";
    }
}

static void on_fail(int status, void *arg)
{
    (void)arg;
    if (status == 0)
        return;
    fflush(stdout);
    if (line_len)
        take_line();
    if (stdout_written)
        return;
    json_t *o = json_pack("{s:{s:i,s:s,s:s}}", "error", "exit", status, "class",
                          exit_class(status), "message", last[0] ? last : "failed");
    if (!o)
        return;
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        fprintf(real_stdout, "%s\n", s);
        fflush(real_stdout);
    }
    free(s);
    json_decref(o);
}

void lora_tool_json_errors(int argc, char **argv, const char *prog, char short_json)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        /* a cluster of short flags ("-cj"); stops at the first letter
         * that may take a value, as getopt would not see -j after it */
        if (short_json && argv[i][0] == '-' && argv[i][1] && argv[i][1] != '-')
            for (const char *c = argv[i] + 1; *c && strchr("csjtqhVfNu", *c); c++)
                if (*c == short_json)
                    json = 1;
    }
    if (!json)
        return;
    prog_name = prog;
    cookie_io_functions_t eio = {.write = err_write};
    cookie_io_functions_t oio = {.write = out_write, .close = out_close};
    FILE *e = fopencookie(NULL, "w", eio);
    FILE *o = fopencookie(NULL, "w", oio);
    if (!e || !o) {
        if (e)
            fclose(e);
        if (o)
            fclose(o);
        return;
    }
    setvbuf(e, NULL, _IONBF, 0);
    real_stdout = stdout;
    setvbuf(real_stdout, NULL, _IONBF, 0); /* o buffers; flush order at exit then cannot matter */
    stderr = e;
    stdout = o;
    on_exit(on_fail, NULL);
}
