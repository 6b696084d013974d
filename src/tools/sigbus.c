/*
 * sigbus.c - turn SIGBUS into a clean exit for every tool.
 *
 * liblora reads safetensors inputs through mmap.  When such a file is
 * truncated (or its disk fails) while mapped, touching a page past the
 * new end raises SIGBUS, which would kill the tool with a core dump and
 * no word.  The handler here instead removes liblora's temporary files
 * (outputs go through temporaries and a rename, so no final name is
 * ever partial), says what happened and exits 4.  Only
 * async-signal-safe calls: write(2), unlink/rmdir through
 * lora_tmp_remove_all, _exit(2).  The library installs no handler: a
 * program embedding liblora decides for itself.
 */
#include "sigbus.h"

#include "lora.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char msg[256];
static size_t msglen;

static void on_sigbus(int sig)
{
    (void)sig;
    lora_tmp_remove_all();
    ssize_t w = write(STDERR_FILENO, msg, msglen);
    (void)w;
    _exit(LORA_EIO);
}

void lora_tool_sigbus(const char *prog)
{
    int n = snprintf(msg, sizeof msg,
                     "%s: an input file shrank or became unreadable while being read (SIGBUS); "
                     "nothing was written\n",
                     prog);
    msglen = n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}
