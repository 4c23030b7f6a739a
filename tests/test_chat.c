/* End of sequence from the model's files, chat templates and chat data, against
   transformers (fixtures: tools/ref/make_chat_fixtures.py). */
#include "harness.h"
#include <sys/stat.h>

/* th_tmpdir()/name/ holding the fixture folder's files, plus tokenizer.json copied
   from tests/fixtures/hf_tok/<tok> when tok is not NULL; its path */
static const char *chat_folder(const char *name, const char *fixture, const char *tok) {
    static char dir[700];
    char src[900], dst[900];
    snprintf(dir, sizeof dir, "%s/%s", th_tmpdir(), name);
    mkdir(dir, 0755);
    static const char *const files[] = { "tokenizer.json",
                                         "tokenizer_config.json",
                                         "config.json",
                                         "model.safetensors",
                                         "generation_config.json",
                                         "data.json",
                                         NULL };
    for (int i = 0; files[i]; i++) {
        snprintf(src, sizeof src, "%s/chat/%s/%s", th_fixtures(), fixture, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        FILE *f = fopen(src, "rb");
        if (!f) continue;
        fclose(f);
        th_truncated_copy(src, dst, 0);
    }
    if (tok) {
        snprintf(src, sizeof src, "%s/hf_tok/%s", th_fixtures(), tok);
        snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
        th_truncated_copy(src, dst, 0);
    }
    return dir;
}

/* Every conversation of each family: ids and loss masks equal transformers'
   apply_chat_template on the real template strings (SmolLM2-Instruct's ChatML,
   LLaMA-2-chat's, LLaMA-3-Instruct's, an Alpaca one) and the assistant-only rule;
   the same conversations loaded as chat data carry the same masks. */
TEST(test_chat_templates_match_transformers) {
    static const struct { const char *name, *tok; int family; } fam[] = {
        { "chatml", "gpt2.json", PEFT_CHAT_CHATML }, { "llama2", "sp.json", PEFT_CHAT_LLAMA2 },
        { "llama3", NULL, PEFT_CHAT_LLAMA3 }, { "alpaca", "sp.json", PEFT_CHAT_ALPACA },
    };
    for (int f = 0; f < 4; f++) {
        const char *dir = chat_folder(fam[f].name, fam[f].name, fam[f].tok);
        peft_tokenizer t;
        REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
        CHECK(t.chat == fam[f].family, "%s: recognised as family %d", fam[f].name, t.chat);
        char exp[600], data[800];
        snprintf(exp, sizeof exp, "%s/chat/%s/expected.jsonl", th_fixtures(), fam[f].name);
        snprintf(data, sizeof data, "%s/chat.jsonl", dir);
        FILE *jl = fopen(data, "w");
        unsigned char *buf;
        size_t n;
        REQUIRE_OK(peft_read_file(exp, &buf, &n));
        int convs = 0, ids_ok = 0, mask_ok = 0, n_train = 0, masks[16][512], lens[16];
        for (char *line = (char *)buf, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            size_t len = next ? (size_t)(next - line) : strlen(line);
            if (next) *next++ = 0;
            peft_json *j;
            REQUIRE_OK(peft_json_parse(&j, line, len, exp));
            const peft_json *msgs = peft_json_get(j, "messages"), *want = peft_json_get(j, "ids");
            const peft_json *wmask = peft_json_get(j, "mask"),
                            *gen = peft_json_get(j, "add_generation_prompt");
            peft_chat_message m[8];
            int k = 0;
            for (const peft_json *x = msgs->child; x && k < 8; x = x->next, k++) {
                m[k].role = peft_json_get(x, "role")->string;
                m[k].content = peft_json_get(x, "content")->string;
            }
            int ids[512];
            unsigned char mask[512];
            int got = peft_chat_encode(&t, 0, m, k, gen->number != 0, ids, mask, 512),
                same = got == want->n_children;
            int i = 0, msame = same;
            for (const peft_json *x = want->child; x && same; x = x->next, i++)
                same = ids[i] == (int)x->number;
            i = 0;
            for (const peft_json *x = wmask->child; x && msame; x = x->next, i++)
                msame = mask[i] == (int)x->number;
            CHECK(same, "%s conversation %d: %d ids, transformers %d (%s)", fam[f].name, convs, got,
                  want->n_children, got < 0 ? peft_last_error() : "ids differ");
            CHECK(msame, "%s conversation %d: the loss mask differs", fam[f].name, convs);
            ids_ok += same;
            mask_ok += msame;
            /* finished conversations (last turn the assistant's) become chat data */
            if (gen->number == 0 && n_train < 16) {
                fprintf(jl, "{\"messages\": %.*s}\n",
                        (int)(strstr(line, ", \"add_generation_prompt\"") - line - 13), line + 13);
                i = 0;
                for (const peft_json *x = wmask->child; x && i < 512; x = x->next, i++)
                    masks[n_train][i] = (int)x->number;
                lens[n_train++] = i;
            }
            convs++;
            peft_json_free(j);
        }
        fclose(jl);
        CHECK(convs >= 6 && ids_ok == convs && mask_ok == convs, "%s: %d/%d ids, %d/%d masks equal",
              fam[f].name, ids_ok, convs, mask_ok, convs);
        peft_dataset d;
        REQUIRE_OK(peft_dataset_load(&d, data, &t, 4096));
        CHECK(d.n == n_train && n_train >= 3, "%s: %d chat examples of %d", fam[f].name, d.n, n_train);
        for (int e = 0; e < d.n && e < n_train; e++) {
            int same = d.start[e + 1] - d.start[e] == lens[e];
            for (int i = 0; same && i < lens[e]; i++) same = d.loss[d.start[e] + i] == masks[e][i];
            CHECK(same, "%s: chat example %d: loss positions differ from the mask", fam[f].name, e);
            int tok[512], tgt[512], L = peft_dataset_batch(&d, &e, 1, 512, 0, tok, tgt), wrong = 0;
            for (int i = 0; i < L; i++) wrong += (tgt[i] != -100) != (masks[e][i + 1] == 1);
            CHECK(L == lens[e] - 1 && !wrong, "%s: chat example %d: %d targets misplaced", fam[f].name, e,
                  wrong);
        }
        peft_dataset_free(&d);
        free(buf);
        peft_tokenizer_free(&t);
    }
}

/* Templates that are not recognised, missing ones and roles out of order fail
   with a message naming the file or the message; --chat-template's names. */
TEST(test_chat_template_errors) {
    CHECK(peft_chat_detect("{{ messages }}") == -1, "an unknown template is recognised");
    CHECK(peft_chat_detect("{{ bos_token + '[INST] ' + m + ' [/INST]' }}") == -1,
          "Mistral's [INST] taken for LLaMA-2");
    CHECK(peft_chat_detect("<|start_header_id|>..<|end_header_id|> Cutting Knowledge Date") == -1,
          "LLaMA-3.1 taken for 3");
    CHECK(peft_chat_detect(NULL) == PEFT_CHAT_NONE, "no template");
    CHECK(peft_chat_family("chatml") == PEFT_CHAT_CHATML && peft_chat_family("llama3") == PEFT_CHAT_LLAMA3 &&
          peft_chat_family("alpaca") == PEFT_CHAT_ALPACA && peft_chat_family("llama2") == PEFT_CHAT_LLAMA2 &&
          peft_chat_family("jinja") == -1, "family names");
    const char *dir = chat_folder("chat_unknown", "chatml", "gpt2.json");
    char cfg[800];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(cfg, "w");
    REQUIRE(f, "write %s", cfg);
    fputs("{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{% for m in messages %}{{ m.content }}{% "
          "endfor %}\"}",
          f);
    fclose(f);
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    peft_chat_message m[2] = { { "user", "hi" }, { "assistant", "yo" } };
    int ids[256];
    CHECK(peft_chat_encode(&t, 0, m, 2, 0, ids, NULL, 256) < 0 &&
              strstr(peft_last_error(), "tokenizer_config.json") &&
              strstr(peft_last_error(), "--chat-template"),
          "unknown template: %s", peft_last_error());
    CHECK(peft_chat_encode(&t, PEFT_CHAT_CHATML, m, 2, 0, ids, NULL, 256) > 0,
          "--chat-template chatml overrides: %s", peft_last_error());
    peft_tokenizer_free(&t);
    f = fopen(cfg, "w");
    fputs("{\"eos_token\": \"<|im_end|>\"}", f);
    fclose(f);
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    CHECK(peft_chat_encode(&t, 0, m, 2, 0, ids, NULL, 256) < 0 &&
              strstr(peft_last_error(), "no chat_template") && strstr(peft_last_error(), "--chat-template"),
          "no template: %s", peft_last_error());
    peft_chat_message bad[2] = { { "user", "hi" }, { "tool", "x" } };
    CHECK(peft_chat_encode(&t, PEFT_CHAT_CHATML, bad, 2, 0, ids, NULL, 256) < 0 &&
              strstr(peft_last_error(), "tool"),
          "a tool role: %s", peft_last_error());
    peft_chat_message twice[2] = { { "user", "hi" }, { "user", "again" } };
    CHECK(peft_chat_encode(&t, PEFT_CHAT_LLAMA2, twice, 2, 0, ids, NULL, 256) < 0,
          "LLaMA-2 takes user/assistant by turns");
    /* chat data with a key the format does not have, and an eos_token not in the vocabulary */
    const char *p = th_tmp_text(
        "chat_bad.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\", \"weight\": 0}]}\n");
    peft_dataset d;
    t.chat = PEFT_CHAT_CHATML;
    CHECK(peft_dataset_load(&d, p, &t, 64) != PEFT_OK && strstr(peft_last_error(), "weight") &&
          strstr(peft_last_error(), "chat_bad.jsonl"), "message key: %s", peft_last_error());
    peft_tokenizer_free(&t);
    /* chat_template.jinja beside tokenizer_config.json (transformers 5 saves it so) wins over its key */
    char src[700], jinja[800];
    snprintf(src, sizeof src, "%s/chat/chatml/tokenizer_config.json", th_fixtures());
    snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", dir);
    peft_json *cj;
    REQUIRE_OK(peft_json_load(&cj, src));
    f = fopen(jinja, "w");
    fputs(peft_json_get(cj, "chat_template")->string, f);
    fclose(f);
    peft_json_free(cj);
    f = fopen(cfg, "w");
    fputs("{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{{ messages }}\"}", f);
    fclose(f);
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    CHECK(t.chat == PEFT_CHAT_CHATML && t.chat_default_system && strstr(t.chat_default_system, "SmolLM") &&
          strstr(t.config_path, "chat_template.jinja"), "chat_template.jinja: family %d", t.chat);
    peft_tokenizer_free(&t);
    remove(jinja);
    f = fopen(cfg, "w");
    fputs("{\"eos_token\": {\"content\": \"<|nope|>\", \"special\": true}}", f);
    fclose(f);
    CHECK(peft_tokenizer_load(&t, dir, 0) != PEFT_OK && strstr(peft_last_error(), "eos_token") &&
          strstr(peft_last_error(), "tokenizer_config.json"), "unknown eos_token: %s", peft_last_error());
}

/* The EOS appended to Alpaca examples is the tokenizer's eos_token (<|im_end|>,
   id 2, from tokenizer_config.json), not the text-guessed <|endoftext|> (id 0):
   on a tiny SmolLM2-style model the first-step loss of 4 records equals the
   Stanford recipe's in transformers, and the wrong EOS gives the recipe's other
   number. Without tokenizer_config.json, config.json's eos_token_id is taken. */
TEST(test_eos_from_model_files) {
    const char *dir = chat_folder("smol", "smol", "gpt2.json");
    char path[900];
    snprintf(path, sizeof path, "%s/chat/smol/expected.json", th_fixtures());
    peft_json *ref;
    REQUIRE_OK(peft_json_load(&ref, path));
    double want = peft_json_get(ref, "loss")->number,
           want_wrong = peft_json_get(ref, "loss_wrong_eos")->number;
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    CHECK(m->cfg.n_eos == 1 && m->cfg.eos_ids[0] == 2, "config.json eos ids");
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, dir, m->cfg.vocab_size));
    CHECK(t.eos_id == 2 && t.eos_from == PEFT_EOS_TOKENIZER_CONFIG, "eos %d from %d", t.eos_id, t.eos_from);
    snprintf(path, sizeof path, "%s/data.json", dir);
    double loss[2];
    for (int pass = 0; pass < 2; pass++) {
        if (pass) t.eos_id = 0;                          /* what the token's text suggested */
        peft_dataset d;
        REQUIRE_OK(peft_dataset_load(&d, path, &t, 4096));
        REQUIRE(d.n == 4, "%d examples", d.n);
        if (!pass) {
            int e = 0, same = 1;
            for (const peft_json *x = peft_json_get(ref, "ids")->child; x; x = x->next, e++) {
                int i = 0;
                same &= d.start[e + 1] - d.start[e] == x->n_children;
                for (const peft_json *y = x->child; y && same; y = y->next, i++)
                    same = d.ids[d.start[e] + i] == (int)y->number;
            }
            CHECK(same, "ids differ from the Stanford recipe with the tokenizer's eos_token");
        }
        int idx[4] = { 0, 1, 2, 3 }, tok[4 * 256], tgt[4 * 256];
        int L = peft_dataset_batch(&d, idx, 4, 256, 2, tok, tgt);
        peft_graph *g = peft_graph_new();
        peft_tensor *l = peft_model_loss(m, g, tok, tgt, 4, L);
        loss[pass] = l ? l->data[0] : NAN;
        peft_graph_free(g);
        peft_dataset_free(&d);
    }
    CHECK(fabs(loss[0] - want) < 1e-5 * fabs(want), "first-step loss %.6f, transformers %.6f", loss[0], want);
    CHECK(fabs(loss[1] - want_wrong) < 1e-5 * fabs(want_wrong) && fabs(loss[1] - want) > 1e-3,
          "with <|endoftext|>: %.6f, transformers %.6f", loss[1], want_wrong);
    /* a completion that already ends with the EOS text keeps one EOS, as TRL's add_eos */
    t.eos_id = 2;
    const char *p2 = th_tmp_text("eos_twice.jsonl", "{\"prompt\": \"Hi\", \"completion\": \"Yo<|im_end|>\"}\n"
                                 "{\"prompt\": \"Hi\", \"completion\": \"Yo\"}\n");
    peft_dataset d2;
    REQUIRE_OK(peft_dataset_load(&d2, p2, &t, 64));
    int64_t e0 = d2.start[1], e1 = d2.start[2] - d2.start[1];
    CHECK(d2.n == 2 && e0 == e1 && d2.ids[e0 - 1] == 2 && d2.ids[e0 - 2] != 2,
          "one EOS at the end: %lld vs %lld ids", (long long)e0, (long long)e1);
    peft_dataset_free(&d2);
    peft_tokenizer_free(&t);
    /* no tokenizer_config.json: the guess by text (<|endoftext|>) gives way to config.json's id */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    remove(path);
    REQUIRE_OK(peft_tokenizer_load(&t, dir, m->cfg.vocab_size));
    CHECK(t.eos_id == 0 && t.eos_from == PEFT_EOS_GUESSED, "guessed eos %d", t.eos_id);
    peft_tokenizer_use_config_eos(&t, &m->cfg);
    CHECK(t.eos_id == 2 && t.eos_from == PEFT_EOS_CONFIG, "config.json eos %d", t.eos_id);
    peft_tokenizer_free(&t);
    peft_model_free(m);
    peft_json_free(ref);
}

/* eos_token_id lists (config.json and generation_config.json, as LLaMA-3-Instruct
   ships them) keep every id and generation stops at any; generation_config.json's
   sampling keys are read, those without effect listed, wrong types refused. */
TEST(test_eos_lists_and_generation_config) {
    const char *dir = chat_folder("smol_eos", "smol", "gpt2.json");
    char path[900];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unsigned char *cj;
    size_t n;
    REQUIRE_OK(peft_read_file(path, &cj, &n));
    char *at = strstr((char *)cj, "\"eos_token_id\": 2");
    REQUIRE(at, "config.json has eos_token_id 2");
    FILE *f = fopen(path, "w");
    fprintf(f, "%.*s\"eos_token_id\": [2, 22]%s", (int)(at - (char *)cj), (char *)cj,
            at + strlen("\"eos_token_id\": 2"));
    fclose(f);
    free(cj);
    peft_config c;
    REQUIRE_OK(peft_config_load(&c, path));
    CHECK(c.n_eos == 2 && c.eos_ids[0] == 2 && c.eos_ids[1] == 22 && c.eos_id == 2, "eos list %d: %d %d",
          c.n_eos, c.eos_ids[0], c.eos_ids[1]);
    const char *g1 = th_tmp_text(
        "gen1.json", "{\"bos_token_id\": 1, \"eos_token_id\": [2, 7, 9], \"pad_token_id\": 2, "
                     "\"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.9, \"max_new_tokens\": 12, "
                     "\"repetition_penalty\": 1.1, \"num_beams\": 1, \"min_new_tokens\": 3, "
                     "\"transformers_version\": \"4.42.3\"}");
    peft_generation_config gc;
    REQUIRE_OK(peft_generation_config_load(&gc, g1));
    CHECK(gc.n_eos == 3 && gc.eos_ids[2] == 9 && gc.do_sample == 1 && fabsf(gc.temperature - 0.6f) < 1e-7f &&
              fabsf(gc.top_p - 0.9f) < 1e-7f && gc.top_k == 50 && gc.max_new_tokens == 12 && gc.pad_id == 2 &&
              gc.bos_id == 1 && fabsf(gc.repetition_penalty - 1.1f) < 1e-7f,
          "generation_config fields");
    CHECK(!strcmp(gc.unused, "min_new_tokens"), "keys without effect: '%s'", gc.unused);
    const char *g2 = th_tmp_text("gen2.json", "{\"eos_token_id\": \"two\"}");
    CHECK(peft_generation_config_load(&gc, g2) != PEFT_OK && strstr(peft_last_error(), "eos_token_id") &&
          strstr(peft_last_error(), "gen2.json"), "bad eos: %s", peft_last_error());
    const char *g3 = th_tmp_text("gen3.json", "{\"num_beams\": 4}");
    REQUIRE_OK(peft_generation_config_load(&gc, g3));
    CHECK(!strcmp(gc.unused, "num_beams"), "beam search is listed as not applied: '%s'", gc.unused);
    /* generation stops at the second id of a list as at the first */
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    int prompt[3] = { 5, 6, 7 }, out[16], out2[16];
    peft_graph *g = peft_graph_new();
    peft_sampler s = { 0.0f, 1.0f, 0, 0, 1.0f, NULL, 0 };
    int k = peft_generate(m, g, prompt, 3, 16, -1, &s, out, NULL, NULL);
    REQUIRE(k == 16, "%d tokens without a stop", k);
    int stop[2] = { 799, out[3] }, first = 0;
    while (out[first] != out[3]) first++;
    s.stop = stop;
    s.n_stop = 2;
    int k2 = peft_generate(m, g, prompt, 3, 16, -1, &s, out2, NULL, NULL);
    CHECK(k2 == first + 1 && out2[first] == out[3], "stopped after %d tokens, at the second stop id (%d)", k2,
          first + 1);
    peft_graph_free(g);
    peft_model_free(m);
}

/* Added tokens' flags (lstrip, rstrip, single_word, normalized) as `tokenizers`
   applies them: a Phi-3-style tokenizer (<|user|> with rstrip takes the newline
   after it) and a byte-level one with every flag; ids equal tokenizers' for each
   fixture string (tools/ref/make_added_tokens_fixture.py). */
TEST(test_added_token_flags_match_tokenizers) {
    static const char *const names[] = { "phi3", "flags" };
    for (int f = 0; f < 2; f++) {
        char path[600];
        snprintf(path, sizeof path, "%s/added_tokens/%s.json", th_fixtures(), names[f]);
        peft_tokenizer t;
        REQUIRE_OK(peft_tokenizer_load(&t, path, 0));
        snprintf(path, sizeof path, "%s/added_tokens/%s.jsonl", th_fixtures(), names[f]);
        unsigned char *buf;
        size_t n;
        REQUIRE_OK(peft_read_file(path, &buf, &n));
        int lines = 0, ok = 0;
        for (char *line = (char *)buf, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            size_t len = next ? (size_t)(next - line) : strlen(line);
            if (next) next++;
            peft_json *j;
            REQUIRE_OK(peft_json_parse(&j, line, len, path));
            const char *text = peft_json_get(j, "text")->string;
            const peft_json *want = peft_json_get(j, "ids");
            int ids[512], k = peft_tokenizer_encode(&t, text, 0, 0, ids, 512), same = k == want->n_children,
                          i = 0;
            for (const peft_json *x = want->child; x && same; x = x->next, i++)
                same = ids[i] == (int)x->number;
            if (!same) {
                char got[512] = "";
                for (i = 0; i < k && strlen(got) < 480; i++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ids[i]);
                CHECK(0, "%s: \"%s\": ids%s differ from tokenizers'", names[f], text, got);
            }
            ok += same;
            lines++;
            peft_json_free(j);
        }
        CHECK(lines >= 40 && ok == lines, "%s: %d of %d strings equal tokenizers'", names[f], ok, lines);
        free(buf);
        peft_tokenizer_free(&t);
    }
    /* a flag that is not a boolean, a key tokenizers does not write */
    const char *bad[2] = { "{\"id\": 3, \"content\": \"<x>\", \"rstrip\": 1}",
                           "{\"id\": 3, \"content\": \"<x>\", \"strip\": true}" };
    for (int b = 0; b < 2; b++) {
        char text[1024];
        snprintf(text, sizeof text,
                 "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": "
                 "[\"a b\"]}, \"added_tokens\": [%s], \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
                 bad[b]);
        const char *p = th_tmp_text(b ? "added_bad2.json" : "added_bad1.json", text);
        peft_tokenizer t;
        CHECK(peft_tokenizer_load(&t, p, 0) != PEFT_OK && strstr(peft_last_error(), b ? "strip" : "rstrip") &&
              strstr(peft_last_error(), "added_bad"), "bad added token %d: %s", b, peft_last_error());
    }
}

/* tokenizer_config.json as LlamaTokenizer checkpoints ship it (add_bos_token false,
   add_eos_token true, an AddedToken eos_token, padding_side, legacy, ...): ids equal
   transformers' tokenizer(text)["input_ids"] (transformers 5 lets tokenizer.json's
   post_processor decide, so BOS and no EOS), and the two keys that disagree with it are
   named; no other key is. Fixtures: tools/ref/make_tok_config_fixtures.py. */
TEST(test_tok_config_keys_match_transformers) {
    const char *dir = chat_folder("tok_config", "tok_config", "sp.json");
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    CHECK(t.eos_id == 2 && t.eos_from == PEFT_EOS_TOKENIZER_CONFIG, "eos_token object: id %d", t.eos_id);
    CHECK(strstr(t.unused, "add_bos_token (") && strstr(t.unused, "add_eos_token ("), "named: '%s'",
          t.unused);
    int n_named = 1;
    for (const char *c = t.unused; *c; c++) n_named += *c == ',';
    CHECK(n_named == 2, "only add_bos_token and add_eos_token are named: '%s'", t.unused);
    char exp[600];
    snprintf(exp, sizeof exp, "%s/chat/tok_config/expected.jsonl", th_fixtures());
    unsigned char *buf;
    size_t n;
    REQUIRE_OK(peft_read_file(exp, &buf, &n));
    int lines = 0, same_n = 0;
    for (char *line = (char *)buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) *next++ = 0;
        peft_json *j;
        REQUIRE_OK(peft_json_parse(&j, line, len, exp));
        const peft_json *want = peft_json_get(j, "ids");
        int ids[512];
        int got = peft_tokenizer_encode(&t, peft_json_get(j, "text")->string, 1, 0, ids, 512);
        int same = got == want->n_children, i = 0;
        for (const peft_json *x = want->child; x && same; x = x->next, i++) same = ids[i] == (int)x->number;
        CHECK(same, "line %d: %d ids, transformers %d", lines, got, want->n_children);
        same_n += same;
        lines++;
        peft_json_free(j);
    }
    free(buf);
    CHECK(lines == 40 && same_n == lines, "%d/%d strings tokenize as transformers", same_n, lines);
    peft_tokenizer_free(&t);
}

/* Unknown keys are named (tokenizer_config.json and config.json), a key that cannot be
   honoured fails with its name: added_tokens_decoder disagreeing with tokenizer.json,
   attention_dropout > 0. Every key LlamaConfig.to_dict() writes is known. */
TEST(test_tok_config_unknown_and_refused_keys) {
    const char *dir = chat_folder("tok_config_keys", "tok_config", "sp.json");
    char path[900];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f, "%s", path);
    fprintf(f, "{\"eos_token\": \"</s>\", \"my_unknown_key\": 1, \"legacy\": true, "
               "\"additional_special_tokens\": [\"<s>\", {\"content\": \"</s>\"}]}");
    fclose(f);
    peft_tokenizer t;
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    CHECK(!strcmp(t.unused, "my_unknown_key"), "unknown tokenizer_config.json key named: '%s'", t.unused);
    peft_tokenizer_free(&t);
    f = fopen(path, "w");
    REQUIRE(f, "%s", path);
    fprintf(f, "{\"additional_special_tokens\": [\"<tool>\"]}");
    fclose(f);
    REQUIRE_OK(peft_tokenizer_load(&t, dir, 0));
    CHECK(strstr(t.unused, "additional_special_tokens ("), "a special token not in tokenizer.json: '%s'",
          t.unused);
    peft_tokenizer_free(&t);
    f = fopen(path, "w");
    REQUIRE(f, "%s", path);
    fprintf(f, "{\"added_tokens_decoder\": {\"2\": {\"content\": \"<eos>\", \"special\": true}}}");
    fclose(f);
    CHECK(peft_tokenizer_load(&t, dir, 0) != PEFT_OK && strstr(peft_last_error(), "added_tokens_decoder") &&
              strstr(peft_last_error(), "tokenizer_config.json"),
          "a disagreeing added_tokens_decoder is refused by name: %s", peft_last_error());
    f = fopen(path, "w");                                 /* a vocabulary piece written with its "▁" */
    REQUIRE(f, "%s", path);
    fprintf(f, "{\"added_tokens_decoder\": {\"450\": {\"content\": \"\xE2\x96\x81Hello\"}}}");
    fclose(f);
    REQUIRE(peft_tokenizer_load(&t, dir, 0) == PEFT_OK, "\"\xE2\x96\x81Hello\" is id 450: %s",
            peft_last_error());
    peft_tokenizer_free(&t);
    peft_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    REQUIRE_OK(peft_config_load(&c, path));
    CHECK(c.unused[0] == 0, "LlamaConfig's own keys are all known: '%s'", c.unused);
    unsigned char *cj;
    size_t n;
    REQUIRE_OK(peft_read_file(path, &cj, &n));
    const char *extra = th_tmp_text("config_extra.json", "");
    f = fopen(extra, "w");
    REQUIRE(f, "%s", extra);
    fprintf(f, "{\"my_extra_key\": [1], %s", (char *)cj + 1);
    fclose(f);
    REQUIRE_OK(peft_config_load(&c, extra));
    CHECK(!strcmp(c.unused, "my_extra_key"), "unknown config.json key named: '%s'", c.unused);
    f = fopen(extra, "w");
    REQUIRE(f, "%s", extra);
    char *ad = strstr((char *)cj, "\"attention_dropout\": 0.0");
    REQUIRE(ad, "config.json has attention_dropout 0.0");
    fprintf(f, "%.*s\"attention_dropout\": 0.1%s", (int)(ad - (char *)cj), (char *)cj,
            ad + strlen("\"attention_dropout\": 0.0"));
    fclose(f);
    CHECK(peft_config_load(&c, extra) != PEFT_OK && strstr(peft_last_error(), "attention_dropout"),
          "attention_dropout 0.1 is refused by name: %s", peft_last_error());
    free(cj);
}

#include <stdarg.h>
#include <sys/wait.h>

/* An unknown key in config.json and in tokenizer_config.json: `peft generate` names both on
   stderr and still runs; attention_dropout 0.1 stops it with the key's name. */
TEST(test_cli_unknown_config_keys_named) {
    static char out[1 << 14];
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (!probe) SKIP("%s not built", th_peft_bin());
    fclose(probe);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/cli_keys", th_tmpdir());
    th_sh("rm -rf %s && mkdir -p %s && cp %s/chat/smol/* %s/ && cp %s/hf_tok/gpt2.json %s/tokenizer.json",
            dir, dir, th_fixtures(), dir, th_fixtures(), dir);
    th_sh("sed -i 's/^{/{\"my_cfg_key\": 1, /' %s/config.json && sed -i 's/^{/{\"my_tok_key\": 1, /' "
            "%s/tokenizer_config.json",
            dir, dir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "generate --model %s --tokenizer %s/tokenizer.json --prompt Hi --max-new 2",
             dir, dir);
    int rc = th_run_peft(out, sizeof out, "%s", cmd);
    CHECK(rc == 0 && strstr(out, "warning") && strstr(out, "my_cfg_key") && strstr(out, "my_tok_key"),
          "rc %d: %s", rc, out);
    th_sh("sed -i 's/^{/{\"attention_dropout\": 0.1, /' %s/config.json", dir);
    rc = th_run_peft(out, sizeof out, "%s", cmd);
    CHECK(rc != 0 && strstr(out, "attention_dropout"), "rc %d: %s", rc, out);
}
