/*
 * seckey.c - loading a minisign secret key in a tool (lora-pack,
 * lora-merge --sign-receipt): the password of an encrypted key from
 * LORA_PASSWORD_FILE or the terminal, never an argument.
 */
#include "config.h"
#include "lora.h"
#include "seckey.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

static int password_from_file(char *buf, size_t cap, lora_error *err)
{
    const char *path = getenv("LORA_PASSWORD_FILE");
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err->msg, sizeof err->msg, "LORA_PASSWORD_FILE %s: %s", path, strerror(errno));
        err->code = LORA_EINPUT;
        return err->code;
    }
    if (!fgets(buf, (int)cap, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return LORA_OK;
}

static int password_from_tty(const char *prompt, char *buf, size_t cap, lora_error *err)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err->msg, sizeof err->msg,
                 "a password is needed and there is no terminal: set LORA_PASSWORD_FILE");
        err->code = LORA_EUSAGE;
        return err->code;
    }
    struct termios old, quiet_tio;
    int have = tcgetattr(fd, &old) == 0;
    if (have) {
        quiet_tio = old;
        quiet_tio.c_lflag &= ~(tcflag_t)ECHO;
        quiet_tio.c_lflag |= ECHONL;
        tcsetattr(fd, TCSAFLUSH, &quiet_tio);
    }
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* the prompt is a courtesy; reading still works */
    }
    size_t n = 0;
    char c;
    while (n + 1 < cap && read(fd, &c, 1) == 1 && c != '\n')
        buf[n++] = c;
    buf[n] = '\0';
    if (have)
        tcsetattr(fd, TCSAFLUSH, &old);
    close(fd);
    buf[strcspn(buf, "\r")] = '\0';
    return LORA_OK;
}

int tool_get_password(int confirm, char *buf, size_t cap, lora_error *err)
{
    if (getenv("LORA_PASSWORD_FILE") && *getenv("LORA_PASSWORD_FILE"))
        return password_from_file(buf, cap, err);
    int rc = password_from_tty("Password: ", buf, cap, err);
    if (rc || !confirm)
        return rc;
    char again[PASSWORD_MAX];
    rc = password_from_tty("Password (one more time): ", again, sizeof again, err);
    if (!rc && strcmp(buf, again) != 0) {
        snprintf(err->msg, sizeof err->msg, "passwords don't match");
        err->code = rc = LORA_EUSAGE;
    }
    explicit_bzero(again, sizeof again);
    return rc;
}

int tool_load_seckey(const char *path, lora_seckey **sk, lora_error *err)
{
    char *text = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err->msg, sizeof err->msg, "%s: %s", path, strerror(errno));
        return err->code = errno == ENOENT ? LORA_EINPUT : LORA_EIO;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int enc = 0;
    int rc = lora_seckey_encrypted(buf, n, &enc, err);
    (void)text;
    if (rc) {
        explicit_bzero(buf, sizeof buf);
        char msg[LORA_ERROR_MAX];
        snprintf(msg, sizeof msg, "%s: %s", path, err->msg);
        memcpy(err->msg, msg, sizeof msg);
        return rc;
    }
    char pw[PASSWORD_MAX];
    if (enc && (rc = tool_get_password(0, pw, sizeof pw, err))) {
        explicit_bzero(buf, sizeof buf);
        return rc;
    }
    rc = lora_seckey_load(path, enc ? pw : NULL, sk, err);
    explicit_bzero(pw, sizeof pw);
    explicit_bzero(buf, sizeof buf);
    return rc;
}
