/*
 * outpath.h - what -o OUT means, decided before any work (issue 19.3).
 */
#ifndef LORA_TOOLS_OUTPATH_H
#define LORA_TOOLS_OUTPATH_H

/* A tool writing one FILE (a merged .safetensors, a .gguf): "OUT/"
 * (or SLASH set: the tool trimmed the '/' it saw) or an existing folder OUT means the file NAME inside that folder (made
 * when OUT/ does not exist yet); *out then points to *owned (malloc'd,
 * free it).  Then, as for outpath_folder, the output must be
 * committable.  Returns 0, or an exit status (message printed). */
int outpath_file(const char **out, char **owned, int slash, const char *name, const char *prog);

/* A tool writing a FOLDER: OUT must not exist as anything but a folder,
 * and the folder it goes in must exist and be writable: refused before
 * any work.  Returns 0 or an exit status (message printed). */
int outpath_folder(const char *out, const char *prog);

/* lora-merge and lora-unmerge: the output has the input's form, a
 * folder for a folder or an .index.json INPUT (outpath_folder), else
 * one file (outpath_file, named after SHARD or INPUT). */
int outpath_checkpoint(const char **out, char **owned, int slash, const char *input,
                       const char *shard, const char *prog);

/* "OUT/" names the same output as "OUT": trailing slashes removed in
 * place (lora-merge then writes OUT.receipt, not OUT/.receipt). */
char *outpath_trim_slashes(char *s);

#endif
