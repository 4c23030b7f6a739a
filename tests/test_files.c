/* Files: JSON, safetensors (valid and hostile), model folders with errors,
   number conversions. Every error must name the file and the problem. */
#include "harness.h"
#include <sys/stat.h>

static void write_bytes(const char *path, const void *d, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(d, 1, n, f);
    fclose(f);
}

TEST(test_json_parse) {
    const char *good =
            "{\"a\": [1, 2.5e3, -0.5, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\", \"o\": {}}";
    peft_json *j;
    REQUIRE_OK(peft_json_parse(&j, good, strlen(good), "good"));
    const peft_json *a = peft_json_get(j, "a");
    CHECK(a && a->n_children == 6 && a->child->next->number == 2500.0, "array");
    CHECK(strcmp(peft_json_get(j, "s")->string, "x\xc3\xa9\xf0\x9f\x98\x80\n") == 0, "unicode escapes");
    peft_json_free(j);
    const char *bad[] = { "{\"a\": 1,}", "{\"a\" 1}", "[1, 2", "{\"a\": tru}",     "\"abc",
                          "{} x",        "[01]",      "[1.]",  "{\"a\": \"\\q\"}", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        peft_status s = peft_json_parse(&j, bad[i], strlen(bad[i]), "cfg.json");
        CHECK(s == PEFT_ERR_FORMAT, "'%s' must be rejected", bad[i]);
        CHECK(strstr(peft_last_error(), "cfg.json") && strstr(peft_last_error(), "line"),
              "error must name the source and position: %s", peft_last_error());
    }
    char deep[600];
    memset(deep, '[', 300); memset(deep + 300, ']', 300);
    CHECK(peft_json_parse(&j, deep, 600, "deep") == PEFT_ERR_FORMAT, "nesting limit");
}

TEST(test_f16_bf16) {
    struct { uint16_t h; float f;
    } f16[] = { { 0x3C00, 1.0f },          { 0xC000, -2.0f },       { 0x7BFF, 65504.0f },
                { 0x0001, 5.9604645e-8f }, { 0x3555, 0.33325195f }, { 0x0000, 0.0f } };
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) {
        CHECK(peft_f16_to_f32(f16[i].h) == f16[i].f, "f16 %04x", f16[i].h);
        CHECK(peft_f32_to_f16(f16[i].f) == f16[i].h, "to f16 %g", f16[i].f);
    }
    CHECK(peft_f32_to_f16(1.0f / 3.0f) == 0x3555, "f16 round to nearest");
    CHECK(peft_f32_to_f16(1e6f) == 0x7C00, "f16 overflow to inf");
    CHECK(peft_bf16_to_f32(0x3F80) == 1.0f && peft_f32_to_bf16(1.0f) == 0x3F80, "bf16 one");
    CHECK(peft_f32_to_bf16(1.00390625f) == 0x3F80, "bf16 ties to even (down)");
    CHECK(peft_f32_to_bf16(1.01171875f) == 0x3F82, "bf16 ties to even (up)");
    /* every f16 value round-trips */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;   /* NaNs */
        if (peft_f32_to_f16(peft_f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK(bad == 0, "%d f16 values do not round-trip", bad);
}

TEST(test_safetensors_roundtrip) {
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", th_tmpdir());
    float a[6] = { 1, -2, 3.5f, 0, 1e-3f, -7 };
    uint16_t b[4] = { 0x3C00, 0x4000, 0xBC00, 0 };
    peft_st_write_item items[2] = { { "a.weight", PEFT_DT_F32, 2, { 2, 3 }, a },
                                    { "b", PEFT_DT_F16, 1, { 4 }, b } };
    const char *meta[2] = { "format", "pt" };
    REQUIRE_OK(peft_st_write(path, items, 2, meta, 1));
    peft_safetensors st;
    REQUIRE_OK(peft_st_open(&st, path));
    CHECK(st.n == 2 && st.n_meta == 1 && strcmp(st.meta_vals[0], "pt") == 0, "entries/metadata");
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = hn << 8 | st.file[i];
    CHECK(hn % 8 == 0, "header padded to 8 bytes");
    float out[6];
    REQUIRE_OK(peft_st_read_f32(&st, peft_st_find(&st, "a.weight"), out, 6));
    CHECK(memcmp(out, a, sizeof a) == 0, "f32 data");
    REQUIRE_OK(peft_st_read_f32(&st, peft_st_find(&st, "b"), out, 4));
    CHECK(out[0] == 1 && out[1] == 2 && out[2] == -1 && out[3] == 0, "f16 data");
    peft_st_close(&st);
    struct stat sb;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(stat(tmp, &sb) != 0, "no temp file left behind");
}

/* Builds a safetensors file from a literal header and data size. */
static peft_status open_crafted(const char *header, size_t data_len, size_t claim_len) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad.safetensors", th_tmpdir());
    size_t hn = strlen(header);
    unsigned char *buf = calloc(1, 8 + hn + data_len);
    uint64_t cl = claim_len ? claim_len : hn;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(cl >> (8 * i));
    memcpy(buf + 8, header, hn);
    write_bytes(path, buf, 8 + hn + data_len);
    free(buf);
    peft_safetensors st;
    peft_status s = peft_st_open(&st, path);
    if (s == PEFT_OK) peft_st_close(&st);
    else
        CHECK(strstr(peft_last_error(), "bad.safetensors"), "error must name the file: %s",
              peft_last_error());
    return s;
}

TEST(test_safetensors_hostile) {
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0) == PEFT_OK,
          "valid control case");
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, 0) ==
                  PEFT_ERR_FORMAT,
          "truncated data");
    CHECK(strstr(peft_last_error(), "outside") != NULL, "truncation explained: %s", peft_last_error());
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1u << 20) ==
                  PEFT_ERR_FORMAT,
          "header length lies");
    CHECK(strstr(peft_last_error(), "header length") != NULL, "lie explained: %s", peft_last_error());
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0) ==
                  PEFT_ERR_FORMAT,
          "shape vs bytes");
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       12, 0) == PEFT_ERR_FORMAT,
          "overlap");
    CHECK(strstr(peft_last_error(), "overlap") != NULL, "overlap explained: %s", peft_last_error());
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, 0) ==
                  PEFT_ERR_FORMAT,
          "hole");
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, 0) ==
                  PEFT_ERR_FORMAT,
          "trailing bytes");
    CHECK(open_crafted("{\"__metadata__\":{\"a\":1}}", 0, 0) == PEFT_ERR_FORMAT, "non-string metadata");
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, 0) ==
                  PEFT_ERR_FORMAT,
          "malformed header JSON");
    CHECK(open_crafted("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, 0) ==
                  PEFT_ERR_FORMAT,
          "negative dim");
    CHECK(open_crafted("[1,2]", 0, 0) == PEFT_ERR_FORMAT, "header not an object");
    /* found by tests/fuzz: more metadata pairs than top-level keys, and a repeated __metadata__ */
    CHECK(open_crafted(
                  "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"},\"__metadata__\":{\"d\":\"4\"}}",
                  0, 0) == PEFT_OK,
          "many metadata pairs: %s", peft_last_error());
    char path[512];
    snprintf(path, sizeof path, "%s/tiny.safetensors", th_tmpdir());
    write_bytes(path, "abc", 3);
    peft_safetensors st;
    CHECK(peft_st_open(&st, path) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "too short"),
          "3-byte file: %s", peft_last_error());
    CHECK(peft_st_open(&st, "/nonexistent/x.safetensors") == PEFT_ERR_IO, "missing file");
}

/* Copies a fixture folder so a test can damage the copy. */
static void copy_fixture(const char *name, const char *dst) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s/%s' '%s'", dst, th_fixtures(), name, dst);
    if (system(cmd) != 0) fprintf(stderr, "copy failed: %s\n", cmd);
}

TEST(test_model_load_errors) {
    char dir[512], path[600];
    peft_model *m;
    snprintf(dir, sizeof dir, "%s/broken", th_tmpdir());

    /* truncated weights */
    copy_fixture("llama_mha", dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unsigned char *d; size_t n;
    REQUIRE_OK(peft_read_file(path, &d, &n));
    write_bytes(path, d, n - 100);
    free(d);
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "model.safetensors"),
          "truncated weights: %s", peft_last_error());

    /* config that disagrees with the tensors */
    copy_fixture("llama_mha", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE_OK(peft_read_file(path, &d, &n));
    char *txt = (char *)d, *p = strstr(txt, "\"intermediate_size\": 64");
    REQUIRE(p, "fixture config layout");
    memcpy(p, "\"intermediate_size\": 96", 23);
    write_bytes(path, txt, n);
    free(d);
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_SHAPE && strstr(peft_last_error(), "gate_proj") &&
          strstr(peft_last_error(), "model.safetensors"), "shape mismatch: %s", peft_last_error());

    /* malformed config.json */
    write_bytes(path, "{\"hidden_size\": 32,, }", 22);
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "config.json"),
          "malformed JSON: %s", peft_last_error());

    /* unknown configuration values */
    const char *cfgs[] = {
        "{\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"vocab_size\":64,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":2}}",
        "{\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"vocab_size\":64,\"hidden_act\":\"gelu\"}",
        "{\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"num_key_value_heads\":3,\"vocab_size\":64}",
        "{\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":2,\"vocab_size\":64}",
        "{\"hidden_size\":32.5,\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
        "\"vocab_size\":64}",
        "{\"model_type\":\"gpt2\",\"hidden_size\":32,\"intermediate_size\":64,\"num_hidden_layers\":2,\"num_"
        "attention_heads\":4,\"vocab_size\":64}",
    };
    const char *words[] = { "yarn",        "gelu", "num_key_value_heads", "num_attention_heads",
                            "hidden_size", "gpt2" };
    for (int i = 0; i < 6; i++) {
        write_bytes(path, cfgs[i], strlen(cfgs[i]));
        peft_status s = peft_model_load(&m, dir);
        CHECK((s == PEFT_ERR_CONFIG || s == PEFT_ERR_UNSUPPORTED) &&
                      strstr(peft_last_error(), "config.json") && strstr(peft_last_error(), words[i]),
              "config case %d: %s", i, peft_last_error());
    }

    /* missing tensor */
    copy_fixture("llama_mha", dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    float one = 1;
    peft_st_write_item it = { "model.embed_tokens.weight", PEFT_DT_F32, 1, { 1 }, &one };
    REQUIRE_OK(peft_st_write(path, &it, 1, NULL, 0));
    CHECK(peft_model_load(&m, dir) != PEFT_OK && strstr(peft_last_error(), "model.safetensors"),
          "missing tensor: %s", peft_last_error());

    /* no weights at all */
    remove(path);
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_IO && strstr(peft_last_error(), "model.safetensors"),
          "no weights: %s", peft_last_error());
    CHECK(peft_model_load(&m, "/nonexistent-model") == PEFT_ERR_IO, "no folder");
}

TEST(test_sharded_index) {
    /* split the mha fixture into two shards with an index, as HF does */
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/sharded", th_tmpdir());
    copy_fixture("llama_mha", dir);
    peft_model *ref, *m;
    REQUIRE_OK(peft_model_load(&ref, dir));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    remove(path);
    int half = ref->n_params / 2;
    peft_st_write_item *items = calloc(ref->n_params, sizeof *items);
    char idx[8192] = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
    for (int i = 0; i < ref->n_params; i++) {
        peft_tensor *p = ref->params[i];
        items[i].name = p->name; items[i].dtype = PEFT_DT_F32; items[i].ndim = p->ndim;
        memcpy(items[i].shape, p->shape, sizeof p->shape); items[i].data = p->data;
        snprintf(idx + strlen(idx), sizeof idx - strlen(idx), "%s\"%s\": \"model-%05d-of-00002.safetensors\"",
                 i ? ", " : "", p->name, i < half ? 1 : 2);
    }
    strcat(idx, "}}");
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    REQUIRE_OK(peft_st_write(path, items, half, NULL, 0));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    REQUIRE_OK(peft_st_write(path, items + half, ref->n_params - half, NULL, 0));
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    write_bytes(path, idx, strlen(idx));
    REQUIRE_OK(peft_model_load(&m, dir));
    for (int i = 0; i < ref->n_params; i++)
        CHECK(memcmp(ref->params[i]->data, m->params[i]->data, sizeof(float) * ref->params[i]->n) == 0, "%s",
              ref->params[i]->name);
    peft_model_free(m);
    peft_model_free(ref);
    free(items);
}

/* The LLaMA-2 tokenizer (llama2.c's tokenizer.bin from ../shared/data, skipped
   where absent) encodes 230 strings exactly as the sentencepiece package does
   with tokenizer.model (tools/ref/make_tokenizer_fixtures.py), and decoding
   gives sentencepiece's text back. */
TEST(test_tokenizer_llama2_matches_sentencepiece) {
    SHARED_OR_SKIP(path, "llama2c/tokenizer.bin");
    char fx[512];
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load_llama2c(&t, path, 32000));
    snprintf(fx, sizeof fx, "%s/sp_llama2.jsonl", th_fixtures());
    unsigned char *d; size_t n;
    REQUIRE_OK(peft_read_file(fx, &d, &n));
    int lines = 0, enc_ok = 0, dec_ok = 0;
    for (char *line = (char *)d, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, fx) != PEFT_OK) {
            CHECK(0, "fixture line: %s", peft_last_error());
            break;
        }
        const char *text = peft_json_get(j, "text")->string;
        const peft_json *want = peft_json_get(j, "ids");
        int ids[4096], k = peft_tokenizer_encode(&t, text, 0, 0, ids, 4096), same = k == want->n_children;
        int i = 0;
        for (const peft_json *x = want->child; x && same; x = x->next, i++) same = ids[i] == (int)x->number;
        enc_ok += same;
        if (!same) CHECK(0, "encode '%s': %d ids, sentencepiece %d", text, k, want->n_children);
        char out[8192] = "", b[8];
        for (i = 0; i < k; i++) {
            const char *piece = peft_tokenizer_decode(&t, i ? ids[i - 1] : 1, ids[i], b);
            strncat(out, piece, sizeof out - strlen(out) - 1);
        }
        dec_ok += strcmp(out, peft_json_get(j, "decoded")->string) == 0;
        lines++;
        peft_json_free(j);
    }
    CHECK(lines >= 200 && enc_ok == lines, "encode: %d of %d strings equal sentencepiece", enc_ok, lines);
    CHECK(dec_ok == lines, "decode: %d of %d round trips equal sentencepiece's", dec_ok, lines);
    free(d);
    peft_tokenizer_free(&t);
}

/* Alpaca data as the Stanford recipe tokenizes it (fixture from transformers'
   LlamaTokenizer, tools/ref/make_alpaca_fixture.py): ids and the loss mask
   of every record equal, and a batch shifts them into inputs and targets. */
TEST(test_alpaca_dataset_matches_stanford_recipe) {
    SHARED_OR_SKIP(path, "llama2c/tokenizer.bin");
    char fx[512], exp[512];
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load_llama2c(&t, path, 32000));
    snprintf(fx, sizeof fx, "%s/alpaca/data.json", th_fixtures());
    /* tokenizer.bin = sentencepiece */
    snprintf(exp, sizeof exp, "%s/alpaca/expected_sp.jsonl", th_fixtures());
    peft_dataset d;
    REQUIRE_OK(peft_dataset_load(&d, fx, &t, 4096));
    unsigned char *buf; size_t n;
    REQUIRE_OK(peft_read_file(exp, &buf, &n));
    int rec = 0;
    for (char *line = (char *)buf, *next; line && *line; line = next, rec++) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        REQUIRE_OK(peft_json_parse(&j, line, len, exp));
        const peft_json *ids = peft_json_get(j, "ids"), *labels = peft_json_get(j, "labels");
        REQUIRE(rec < d.n, "dataset has %d examples", d.n);
        int64_t k = d.start[rec + 1] - d.start[rec];
        CHECK(k == ids->n_children, "record %d: %lld ids, transformers %d", rec, (long long)k,
              ids->n_children);
        int i = 0, same = k == ids->n_children, masked = 0;
        for (const peft_json *x = ids->child; x && same; x = x->next, i++)
            same = d.ids[d.start[rec] + i] == (int)x->number;
        for (const peft_json *x = labels->child; x; x = x->next) masked += x->number == -100;
        CHECK(same, "record %d: ids differ from the Stanford recipe", rec);
        CHECK(d.n_masked[rec] == masked, "record %d: %d masked, recipe %d", rec, d.n_masked[rec], masked);
        /* the batch of this one record: targets are the recipe's labels shifted by one */
        int tok[4096], tgt[4096], L = peft_dataset_batch(&d, &rec, 1, 4096, 0, tok, tgt);
        CHECK(L == k - 1, "batch length %d", L);
        i = 0;
        for (const peft_json *x = labels->child; x; x = x->next, i++)
            if (i >= 1 && i - 1 < L) CHECK(tgt[i - 1] == (int)x->number, "record %d target %d", rec, i - 1);
        peft_json_free(j);
    }
    CHECK(rec == d.n && rec == 6, "%d records, dataset %d", rec, d.n);
    /* split and order */
    peft_dataset held;
    REQUIRE_OK(peft_dataset_split(&d, &held, 2, 7));
    CHECK(d.n == 4 && held.n == 2, "split 4 + 2");
    int o1[10], o2[10];
    peft_dataset_order(10, 3, 1, o1);
    peft_dataset_order(10, 3, 1, o2);
    CHECK(!memcmp(o1, o2, sizeof o1), "same order for the same seed and epoch");
    peft_dataset_order(10, 3, 2, o2);
    CHECK(memcmp(o1, o2, sizeof o1), "a new order each epoch");
    peft_dataset_free(&held);
    peft_dataset_free(&d);
    free(buf);
    peft_tokenizer_free(&t);
}

/* Data files that lie: each gets an error naming the file and what is wrong. */
TEST(test_dataset_errors) {
    const char *cases[][2] = {
        { "bad1.jsonl", "{\"instruction\": \"x\"}\n" },
        { "bad2.jsonl", "{\"instruction\": \"x\", \"output\": 3}\n" },
        { "bad3.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{not json\n" },
        { "bad4.json", "{\"instruction\": \"x\", \"output\": \"y\"}" },
        { "bad5.jsonl", "{\"foo\": \"bar\"}\n" },
        { "bad6.jsonl", "\n\n" },
    };
    peft_tokenizer t;
    memset(&t, 0, sizeof t);
    char *pieces[300];
    float scores[300];
    int sorted[300];
    for (int i = 0; i < 259; i++) {                 /* a byte-level toy vocabulary */
        pieces[i] = malloc(16);
        if (i < 3) snprintf(pieces[i], 16, "<%d>", i);
        else snprintf(pieces[i], 16, "<0x%02X>", (unsigned)(i - 3) & 0xFFu);
        scores[i] = 0;
    }
    t.pieces = pieces;
    t.scores = scores;
    t.n = 259;
    t.max_len = 6;
    t.sorted = sorted;
    t.bos_id = 1;
    t.eos_id = 2;
    for (int i = 0; i < 259; i++) sorted[i] = i;
    for (int i = 0; i < 258; i++)
        for (int j = 0; j + 1 < 259 - i; j++)
            if (strcmp(pieces[sorted[j]], pieces[sorted[j + 1]]) > 0) {
                int x = sorted[j];
                sorted[j] = sorted[j + 1];
                sorted[j + 1] = x;
            }
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *path = th_tmp_text(cases[c][0], cases[c][1]);
        peft_dataset d;
        peft_status s = peft_dataset_load(&d, path, &t, 64);
        CHECK(s != PEFT_OK, "%s: accepted", cases[c][0]);
        CHECK(strstr(peft_last_error(), cases[c][0]) != NULL, "%s: error does not name the file: %s",
              cases[c][0], peft_last_error());
    }
    /* a good file with the toy vocabulary: prompt/completion masked, text not */
    const char *path = th_tmp_text("good.jsonl",
                                   "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n\n{\"text\": \"xyz\"}\n");
    peft_dataset d;
    CHECK_OK(peft_dataset_load(&d, path, &t, 64));
    CHECK(d.n == 2 && d.n_masked[0] == 1 + 2 && d.n_masked[1] == 1, "masks %d %d", d.n_masked[0],
          d.n_masked[1]);
    peft_dataset_free(&d);
    for (int i = 0; i < 259; i++) free(pieces[i]);
}

/* One tokenizer.json against the ids `tokenizers` gave for every fixture
   string (with and without the post-processor's BOS) and its decoding.
   Returns the number of strings checked; *also_sp counts those equal to a
   second id list (sentencepiece's), when given. */
static int check_hf_tokenizer(const char *json, const char *expect, const char *sp_expect, int *also_sp) {
    peft_tokenizer t;
    if (peft_tokenizer_load(&t, json, 0) != PEFT_OK) {
        CHECK(0, "%s: %s", json, peft_last_error());
        return 0;
    }
    unsigned char *d, *sd = NULL;
    size_t n, sn;
    if (peft_read_file(expect, &d, &n) != PEFT_OK) {
        CHECK(0, "%s", expect);
        peft_tokenizer_free(&t);
        return 0;
    }
    if (sp_expect && peft_read_file(sp_expect, &sd, &sn) != PEFT_OK) sd = NULL;
    char *sp_line = (char *)sd;
    int lines = 0, bad = 0;
    for (char *line = (char *)d, *next; line && *line; line = next, lines++) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, expect) != PEFT_OK) { CHECK(0, "%s", peft_last_error()); break; }
        const char *text = peft_json_get(j, "text")->string;
        const char *keys[2] = { "ids", "ids_special" };
        for (int k = 0; k < 2; k++) {
            const peft_json *want = peft_json_get(j, keys[k]);
            int ids[4096], c = peft_tokenizer_encode(&t, text, k, 0, ids, 4096), same = c == want->n_children,
                           i = 0;
            for (const peft_json *x = want->child; x && same; x = x->next, i++)
                same = ids[i] == (int)x->number;
            if (!same && bad++ < 5)
                CHECK(0, "%s: %s of '%s': %d ids, tokenizers %d", json, keys[k], text, c, want->n_children);
            if (k == 0) {
                char out[8192] = "", b[8];
                for (i = 0; i < c; i++)
                    strncat(out, peft_tokenizer_decode(&t, i ? ids[i - 1] : t.bos_id, ids[i], b),
                            sizeof out - strlen(out) - 1);
                const char *dec = peft_json_get(j, "decoded")->string;
                if (strcmp(out, dec) && bad++ < 5)
                    CHECK(0, "%s: decode of '%s' gives '%s', tokenizers '%s'", json, text, out, dec);
                if (sp_line && *sp_line) {                 /* the same string's sentencepiece ids */
                    char *snext = strchr(sp_line, '\n');
                    peft_json *sj;
                    if (peft_json_parse(&sj, sp_line, snext ? (size_t)(snext - sp_line) : strlen(sp_line),
                                        sp_expect) == PEFT_OK) {
                        const peft_json *w = peft_json_get(sj, "ids");
                        int eq = w->n_children == c;
                        i = 0;
                        for (const peft_json *x = w->child; x && eq; x = x->next, i++)
                            eq = ids[i] == (int)x->number;
                        *also_sp += eq;
                        peft_json_free(sj);
                    }
                    sp_line = snext ? snext + 1 : NULL;
                }
            }
        }
        peft_json_free(j);
    }
    CHECK(bad == 0, "%s: %d mismatches", json, bad);
    free(d); free(sd);
    peft_tokenizer_free(&t);
    return lines;
}

/* tokenizer.json in both flavours (small ones trained with the real
   libraries: tools/ref/make_hf_tokenizer_fixtures.py, and the hub's legacy
   SentencePiece form from transformers 4.46: make_hf_legacy_fixtures.py)
   equal `tokenizers` on 253 strings; where build/ref holds the LLaMA-2
   tokenizer.json files converted by transformers (not committed: 3.6 MB),
   those too, and the legacy one equals sentencepiece on every string. */
TEST(test_hf_tokenizers_match_tokenizers) {
    const char *names[4] = { "sp", "sp_legacy", "llama3", "gpt2" };
    for (int k = 0; k < 4; k++) {
        char json[512], exp[512];
        snprintf(json, sizeof json, "%s/hf_tok/%s.json", th_fixtures(), names[k]);
        snprintf(exp, sizeof exp, "%s/hf_tok/%s.jsonl", th_fixtures(), names[k]);
        int dummy = 0, lines = check_hf_tokenizer(json, exp, NULL, &dummy);
        CHECK(lines >= 250, "%s: %d strings", names[k], lines);
    }
    FILE *f = fopen("build/ref/llama2-tokenizer.json", "rb");
    if (f) {
        fclose(f);
        char sp[512];
        snprintf(sp, sizeof sp, "%s/sp_llama2.jsonl", th_fixtures());
        int same_as_sp = 0, lines = check_hf_tokenizer("build/ref/llama2-tokenizer.json",
                                                       "build/ref/llama2-hf.jsonl", sp, &same_as_sp);
        printf("      LLaMA-2 tokenizer.json (transformers 5): %d strings equal tokenizers; %d of them also "
               "equal sentencepiece\n",
               lines, same_as_sp);
    }
    if ((f = fopen("build/ref/llama2-legacy-tokenizer.json", "rb"))) {
        fclose(f);
        char sp[512];
        snprintf(sp, sizeof sp, "%s/sp_llama2.jsonl", th_fixtures());
        int same_as_sp = 0, lines = check_hf_tokenizer("build/ref/llama2-legacy-tokenizer.json",
                                                       "build/ref/llama2-legacy-hf.jsonl", sp, &same_as_sp);
        CHECK(lines >= 200 && same_as_sp == lines,
              "legacy LLaMA-2 tokenizer.json: %d of %d strings equal sentencepiece", same_as_sp, lines);
        printf("      LLaMA-2 tokenizer.json (transformers 4.46, as on the hub): %d strings equal tokenizers "
               "and sentencepiece\n",
               same_as_sp);
    }
    /* files that lie */
    const char *bad[][2] = {
        { "t1.json", "{\"model\": {\"type\": \"Unigram\"}}" },
        { "t2.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}" },
        { "t3.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                     "\"pre_tokenizer\": {\"type\": \"Whitespace\"}}" },
        { "t4.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                     "\"normalizer\": {\"type\": \"NFKC\"}}" },
        { "t7.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                     "\"normalizer\": {\"type\": \"Prepend\", \"prepend\": \"x\"}}" },
        { "t8.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                     "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", "
                     "\"prepend\": \"\xE2\x96\x81\"}]}}" },
        { "t5.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [3]}}" },
        { "t6.json", "{\"model\": " },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *path = th_tmp_text(bad[i][0], bad[i][1]);
        peft_tokenizer t;
        CHECK(peft_tokenizer_load(&t, path, 0) != PEFT_OK && strstr(peft_last_error(), bad[i][0]), "%s: %s",
              bad[i][0], peft_last_error());
    }
}

/* Replaces the first `from` in a file by `to`; 1 = done. */
static int edit_file(const char *path, const char *from, const char *to) {
    unsigned char *d;
    size_t n;
    if (peft_read_file(path, &d, &n) != PEFT_OK) return 0;
    char *at = strstr((char *)d, from);
    if (at) {
        FILE *f = fopen(path, "wb");
        fwrite(d, 1, (size_t)(at - (char *)d), f);
        fputs(to, f);
        fputs(at + strlen(from), f);
        fclose(f);
    }
    free(d);
    return at != NULL;
}

/* Hostile files (issue 14): every number read from JSON is range-checked
   before it becomes an integer; sizes are checked before allocating; a BOM is
   skipped; a folder is not a file. Each case fails with a message naming the
   file and the problem, and nothing crashes (the suite runs under ASan+UBSan). */
TEST(test_hostile_files) {
    char dir[512], path[700];
    peft_model *m;
    /* a tokenizer.json vocabulary id of 6666666666 (a fuzzer's find: it wrapped to pieces[INT_MIN]) */
    snprintf(path, sizeof path, "%s/tok_hostile.json", th_tmpdir());
    char cmd[1600];
    snprintf(cmd, sizeof cmd, "cp %s/hf_tok/gpt2.json %s", th_fixtures(), path);
    REQUIRE(system(cmd) == 0, "setup");
    REQUIRE(edit_file(path, "\"<|im_start|>\": 1,", "\"<|im_start|>\": 6666666666,"), "fixture layout");
    peft_tokenizer tok;
    CHECK(peft_tokenizer_load(&tok, path, 1000) == PEFT_ERR_FORMAT &&
          strstr(peft_last_error(), "6666666666") && strstr(peft_last_error(), "tok_hostile.json"),
          "vocab id 6666666666: %s", peft_last_error());
    REQUIRE(edit_file(path, "6666666666,", "-1,"), "edit");
    CHECK(peft_tokenizer_load(&tok, path, 1000) == PEFT_ERR_FORMAT, "vocab id -1: %s", peft_last_error());

    /* config.json: eos_token_id [1e20]; dimensions near 2^31 (the parameter count went negative) */
    snprintf(dir, sizeof dir, "%s/hostile_model", th_tmpdir());
    copy_fixture("llama_mha", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(edit_file(path, "\"eos_token_id\": 2,", "\"eos_token_id\": [1e20],"), "fixture layout");
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_CONFIG && strstr(peft_last_error(), "eos_token_id"),
          "eos [1e20]: %s", peft_last_error());
    REQUIRE(edit_file(path, "[1e20]", "[2, 64]"), "edit");
    REQUIRE_OK(peft_model_load(&m, dir));                 /* the first of a list, within the vocabulary */
    peft_model_free(m);
    REQUIRE(edit_file(path, "[2, 64]", "[64]"), "edit");
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_CONFIG && strstr(peft_last_error(), "eos_token_id"),
          "eos 64 of 64: %s", peft_last_error());
    REQUIRE(edit_file(path, "[64]", "2"), "edit");
    const char *dims[][2] = { { "\"hidden_size\": 32,", "\"hidden_size\": 2147483520," },
                              { "\"intermediate_size\": 64,", "\"intermediate_size\": 2000000000," },
                              { "\"vocab_size\": 64", "\"vocab_size\": 2147483647" },
                              { "\"num_hidden_layers\": 2,", "\"num_hidden_layers\": 1000000000," },
                              { "\"max_position_embeddings\": 64,", "\"max_position_embeddings\": -5," } };
    for (int i = 0; i < 5; i++) {
        REQUIRE(edit_file(path, dims[i][0], dims[i][1]), "edit %d", i);
        peft_config c;
        CHECK(peft_config_load(&c, path) == PEFT_ERR_CONFIG && strstr(peft_last_error(), "config.json"),
              "%s: %s", dims[i][1], peft_last_error());
        REQUIRE(edit_file(path, dims[i][1], dims[i][0]), "undo %d", i);
    }
    /* a 625-byte config claiming 667M parameters next to a 101 KB weights file fails before
       allocating: the weight file is too small for what the config describes */
    REQUIRE(edit_file(path, "\"hidden_size\": 32,", "\"hidden_size\": 4096,"), "edit");
    REQUIRE(edit_file(path, "\"intermediate_size\": 64,", "\"intermediate_size\": 11008,"), "edit");
    REQUIRE(edit_file(path, "\"head_dim\": 8,", "\"head_dim\": 1024,"), "edit");
    REQUIRE(edit_file(path, "\"vocab_size\": 64", "\"vocab_size\": 32000"), "edit");
    peft_config big;
    REQUIRE_OK(peft_config_load(&big, path));
    CHECK(peft_config_param_count(&big) > 600000000, "%lld parameters",
          (long long)peft_config_param_count(&big));
    CHECK(peft_model_load(&m, dir) == PEFT_ERR_SHAPE && strstr(peft_last_error(), "model.safetensors") &&
          strstr(peft_last_error(), "bytes of weights"),
          "667M-parameter config, 101 KB weights: %s", peft_last_error());

    /* adapter_config.json: layers_to_transform [1e20] */
    snprintf(dir, sizeof dir, "%s/hostile_adapter", th_tmpdir());
    copy_fixture("peft_lora_qv", dir);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    REQUIRE(edit_file(path, "\"layers_to_transform\": null", "\"layers_to_transform\": [1e20]"), "fixture "
                                                                                                 "layout");
    snprintf(path, sizeof path, "%s/llama_gqa", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    CHECK(peft_adapter_load(m, dir) != PEFT_OK && strstr(peft_last_error(), "layers_to_transform") &&
          strstr(peft_last_error(), "adapter_config.json"),
          "layers_to_transform [1e20]: %s", peft_last_error());
    peft_model_free(m);

    /* a folder where a file belongs: no "no memory for 9223372036854775807 bytes" */
    unsigned char *d;
    size_t n;
    CHECK(peft_read_file(th_tmpdir(), &d, &n) == PEFT_ERR_IO && strstr(peft_last_error(), "is a directory"),
          "folder: %s", peft_last_error());
    peft_json *j;
    CHECK(peft_json_load(&j, th_tmpdir()) == PEFT_ERR_IO && strstr(peft_last_error(), "is a directory"),
          "json folder: %s", peft_last_error());
}

/* A UTF-8 byte order mark before JSON (Windows editors write one) is skipped, as
   Python's datasets does: JSON, JSONL data and config.json read the same with it. */
TEST(test_json_bom) {
    const char *bom = "\xEF\xBB\xBF{\"a\": [1, 2]}";
    peft_json *j;
    REQUIRE_OK(peft_json_parse(&j, bom, strlen(bom), "bom.json"));
    CHECK(peft_json_get(j, "a") && peft_json_get(j, "a")->n_children == 2, "BOM object");
    peft_json_free(j);
    CHECK(peft_json_parse(&j, "\xEF\xBB", 2, "half.json") == PEFT_ERR_FORMAT, "half a BOM is not JSON");
    /* config.json with a BOM loads */
    char dir[512], path[700], cmd[1600];
    snprintf(dir, sizeof dir, "%s/bom_model", th_tmpdir());
    copy_fixture("llama_mha", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE(edit_file(path, "{", "\xEF\xBB\xBF{"), "edit");
    peft_model *m;
    CHECK_OK(peft_model_load(&m, dir));
    if (m) peft_model_free(m);
    /* Alpaca .json and .jsonl records with a BOM give the same examples as without */
    peft_tokenizer tok;
    snprintf(path, sizeof path, "%s/hf_tok/gpt2.json", th_fixtures());
    REQUIRE_OK(peft_tokenizer_load(&tok, path, 800));
    const char *names[2] = { "bom_data.json", "bom_data.jsonl" };
    const char *texts[2] = { "[{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi there.\"}]\n",
                             "{\"prompt\": \"Say hi.\", \"completion\": \" Hi there.\"}\n{\"text\": \"Hello "
                             "world.\"}\n" };
    for (int k = 0; k < 2; k++) {
        char plain[700], with[700];
        snprintf(with, sizeof with, "%s", th_tmp_text(names[k], texts[k]));
        snprintf(cmd, sizeof cmd, "plain_%s", names[k]);
        snprintf(plain, sizeof plain, "%s", th_tmp_text(cmd, texts[k]));
        REQUIRE(edit_file(with, texts[k][0] == '[' ? "[" : "{",
                          texts[k][0] == '[' ? "\xEF\xBB\xBF[" : "\xEF\xBB\xBF{"),
                "edit");
        peft_dataset a, b;
        REQUIRE_OK(peft_dataset_load(&a, plain, &tok, 256));
        REQUIRE_OK(peft_dataset_load(&b, with, &tok, 256));
        CHECK(a.n == b.n && a.n_tokens == b.n_tokens &&
                      !memcmp(a.ids, b.ids, sizeof(int) * (size_t)a.n_tokens),
              "%s: %d/%d examples, %lld/%lld tokens", names[k], a.n, b.n, (long long)a.n_tokens,
              (long long)b.n_tokens);
        peft_dataset_free(&a);
        peft_dataset_free(&b);
    }
    peft_tokenizer_free(&tok);
}

/* peft_st_open_header: the header alone, checked against the file's size. */
TEST(test_safetensors_header_only) {
    char path[700], dir[512];
    snprintf(path, sizeof path, "%s/llama_mha/model.safetensors", th_fixtures());
    peft_safetensors st;
    REQUIRE_OK(peft_st_open_header(&st, path));
    CHECK(st.n == 21 && st.data == NULL && st.file_size > 100000, "%d entries of a %zu-byte file", st.n,
          st.file_size);
    CHECK(peft_st_find(&st, "model.norm.weight") != NULL, "entries named");
    peft_st_close(&st);
    snprintf(dir, sizeof dir, "%s/hdr_trunc.safetensors", th_tmpdir());
    REQUIRE(th_truncated_copy(path, dir, 11000), "truncated copy");
    snprintf(path, sizeof path, "%s", dir);
    CHECK(peft_st_open_header(&st, path) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "truncated"),
          "truncated: %s", peft_last_error());
    CHECK(peft_st_open_header(&st, th_tmpdir()) == PEFT_ERR_IO, "a folder");
}

/* An example longer than max_len is cut (and counted as cut); one whose targets all lie
   past max_len is dropped (and counted as dropped): the counts follow from the full
   examples' lengths and prompt lengths, whatever max_len. */
TEST(test_dataset_counts_cut_and_dropped) {
    char tp[512], fx[512];
    snprintf(tp, sizeof tp, "%s/hf_tok/gpt2.json", th_fixtures());
    snprintf(fx, sizeof fx, "%s/alpaca/data.json", th_fixtures());
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, tp, 0));
    peft_dataset full;
    REQUIRE_OK(peft_dataset_load(&full, fx, &t, 1 << 20));
    CHECK(full.n_truncated == 0 && full.n_dropped == 0, "whole: %d cut, %d dropped", full.n_truncated,
          full.n_dropped);
    int64_t shortest_prompt = 1 << 30, longest = 0;
    for (int i = 0; i < full.n; i++) {
        int64_t len = full.start[i + 1] - full.start[i];
        if (full.n_masked[i] < shortest_prompt) shortest_prompt = full.n_masked[i];
        if (len > longest) longest = len;
    }
    int cases[3] = { (int)shortest_prompt + 1, (int)(shortest_prompt + longest) / 2, (int)longest - 1 };
    for (int c = 0; c < 3; c++) {
        int max_len = cases[c], cut = 0, dropped = 0;
        for (int i = 0; i < full.n; i++) {
            int64_t len = full.start[i + 1] - full.start[i], n = len < max_len ? len : max_len;
            if (full.n_masked[i] >= n) dropped++;
            else cut += len > max_len;
        }
        peft_dataset d;
        peft_status s = peft_dataset_load(&d, fx, &t, max_len);
        if (dropped == full.n) {
            CHECK(s != PEFT_OK && strstr(peft_last_error(), "dropped"), "all dropped: %s", peft_last_error());
            continue;
        }
        REQUIRE_OK(s);
        CHECK(d.n == full.n - dropped && d.n_dropped == dropped && d.n_truncated == cut,
              "max_len %d: %d kept, %d dropped, %d cut; expected %d, %d, %d", max_len, d.n, d.n_dropped,
              d.n_truncated, full.n - dropped, dropped, cut);
        CHECK(cut > 0 || c == 0, "max_len %d cuts nothing", max_len);
        peft_dataset_free(&d);
    }
    peft_dataset_free(&full);
    peft_tokenizer_free(&t);
}
