/*
 * sigbus.h - the tools' handler for SIGBUS (tools only, not liblora).
 */
#ifndef LORA_TOOLS_SIGBUS_H
#define LORA_TOOLS_SIGBUS_H

/* Install, first thing in main, a SIGBUS handler that removes the
 * temporaries liblora has open (lora_tmp_remove_all), prints
 * "PROG: an input file shrank or became unreadable while being read
 * (SIGBUS); nothing was written" and exits with 4 (LORA_EIO). */
void lora_tool_sigbus(const char *prog);

#endif
