/*
 * progress.h - the one progress line the tools share (lora-merge,
 * lora-unmerge, lora-eval): on standard error only, only when it is a
 * terminal and -q was not given; first drawn once the work has taken a
 * second, so quick runs print nothing; then at most five times a second,
 * rewritten in place with '\r'; ended with a newline.  No colour, no
 * other escape sequences (so NO_COLOR has nothing to turn off).
 */
#ifndef LORA_TOOLS_PROGRESS_H
#define LORA_TOOLS_PROGRESS_H

#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef struct tool_progress {
    int on;          /* stderr is a terminal and not -q */
    int shown;       /* a line is on the screen (needs its newline) */
    double start, last;
} tool_progress;

static inline double tool_progress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void tool_progress_init(tool_progress *p, int quiet)
{
    p->on = !quiet && isatty(2);
    p->shown = 0;
    p->start = p->last = tool_progress_now();
}

/* Whether to draw the line now; final: the work is complete (drawn if
 * a line is already showing, so that it ends at 100%). */
static inline int tool_progress_due(tool_progress *p, int final)
{
    if (!p->on)
        return 0;
    double t = tool_progress_now();
    if (!p->shown) {
        if (final || t - p->start < 1.0)
            return 0;
    } else if (!final && t - p->last < 0.2) {
        return 0;
    }
    p->last = t;
    p->shown = 1;
    return 1;
}

/* End the line (before a message, or when the work is done). */
static inline void tool_progress_end(tool_progress *p)
{
    if (p->shown)
        fputc('\n', stderr);
    p->shown = 0;
}

#endif
