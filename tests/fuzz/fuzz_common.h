/* Shared by the libFuzzer targets (fuzz_readers.c) and their seed maker
   (make_seeds.c): the tiny model every folder seed belongs to, and the
   splitting of one fuzz input into the files of a folder. */
#ifndef PEFT_FUZZ_COMMON_H
#define PEFT_FUZZ_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* parts of one input are separated by this marker */
#define FUZZ_SEP "|@PART@|"
#define FUZZ_SEP_LEN 8

static inline void fuzz_tiny_config(peft_config *c) {
    peft_config_preset(c, "tiny");
    c->dim = 16; c->hidden_dim = 32; c->n_layers = 2; c->n_heads = 2; c->n_kv_heads = 1;
    c->head_dim = 8; c->vocab_size = 32; c->max_seq_len = 64;
}

/* a per-process scratch folder, emptied of the given names */
static inline const char *fuzz_dir(void) {
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/peft-fuzz-%d", (int)getpid());
        mkdir(dir, 0755);
    }
    return dir;
}

/* the input cut at FUZZ_SEP into at most n parts, written to dir/names[i]
   (a missing part: the file is absent); returns the number of parts */
static inline int fuzz_write_parts(const uint8_t *data, size_t size, const char *const *names, int n) {
    const char *dir = fuzz_dir();
    char path[256];
    int k = 0;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        remove(path);
    }
    while (k < n && pos <= size) {
        size_t end = pos;
        while (end + FUZZ_SEP_LEN <= size && memcmp(data + end, FUZZ_SEP, FUZZ_SEP_LEN)) end++;
        if (end + FUZZ_SEP_LEN > size) end = size;
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        FILE *f = fopen(path, "wb");
        if (!f) return k;
        if (end > pos) fwrite(data + pos, 1, end - pos, f);
        fclose(f);
        k++;
        if (end == size) break;
        pos = end + FUZZ_SEP_LEN;
    }
    return k;
}
#endif
