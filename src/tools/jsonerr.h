/*
 * jsonerr.h - the --json error object every tool prints on failure.
 * See jsonerr.c and lora(7), section "JSON errors".
 */
#ifndef LORA_TOOLS_JSONERR_H
#define LORA_TOOLS_JSONERR_H

/* Call first thing in main.  When ARGV holds --json (before a "--"),
 * (or -SHORT_JSON when not 0: -j in lora-inspect and lora-convert)
 * a failing exit (status != 0) that wrote nothing on stdout prints
 * {"error":{"exit":N,"class":"check|usage|input|io","message":"..."}}
 * on stdout; the message is the last "PROG: " line written on stderr,
 * which still receives every human message unchanged. */
void lora_tool_json_errors(int argc, char **argv, const char *prog, char short_json);

#endif
