/* seckey.h - secret keys and their passwords in the tools (seckey.c). */
#ifndef LORA_TOOLS_SECKEY_H
#define LORA_TOOLS_SECKEY_H
#include "lora.h"
#include <stddef.h>

#define PASSWORD_MAX 1024

/* The password from LORA_PASSWORD_FILE (first line) or the terminal;
 * confirm asks twice. */
int tool_get_password(int confirm, char *buf, size_t cap, lora_error *err);
/* Load a minisign secret key, asking for its password when encrypted. */
int tool_load_seckey(const char *path, lora_seckey **sk, lora_error *err);
#endif
