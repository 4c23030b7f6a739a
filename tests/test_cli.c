/* The command line tool, run as a user would: exit codes, messages, files. */
#include "harness.h"
#include <unistd.h>

static const char *bin(void) { return th_peft_bin(); }

TEST(test_cli) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);

    CHECK(th_run_peft(out, sizeof out, "info --preset llama-7b") == 0 && strstr(out, "6,738,415,616"),
          "info llama-7b: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info %s/llama_mha", th_fixtures()) == 0 && strstr(out, "24,736"),
          "info folder: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info --preset nope") == 1 && strstr(out, "nope"),
          "unknown preset: %s", out);
    const char *cmds[] = { "info", "logits", "train", "merge", "quantize", "bench", "generate" };
    for (int i = 0; i < 7; i++)
        CHECK(th_run_peft(out, sizeof out, "%s --help", cmds[i]) == 0 && strstr(out, "usage: peft"),
              "%s --help", cmds[i]);
    CHECK(th_run_peft(out, sizeof out, "frobnicate") == 2, "unknown command exits 2");
    CHECK(th_run_peft(out, sizeof out, "train --preset tiny --data x --bogus 1") == 2,
          "unknown flag exits 2");

    /* logits of the first fixture sequence equal transformers' */
    char ref[512], lpath[512];
    snprintf(ref, sizeof ref, "%s/llama_mha/ref.safetensors", th_fixtures());
    snprintf(lpath, sizeof lpath, "%s/logits.f32", th_tmpdir());
    float *tok, *logits; long nt, nl;
    REQUIRE(th_read_ref(ref, "tokens", &tok, &nt) && th_read_ref(ref, "logits", &logits, &nl), "fixture");
    char ids[256] = "";
    int T = (int)(nt / 2);
    for (int t = 0; t < T; t++)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", t ? "," : "", (int)tok[t]);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --tokens %s --out %s", th_fixtures(), ids,
                      lpath) == 0,
          "logits: %s", out);
    unsigned char *d; size_t n;
    REQUIRE_OK(peft_read_file(lpath, &d, &n));
    CHECK(n == (size_t)T * 64 * 4, "logits file is [T, vocab] float32: %zu bytes", n);
    if (n == (size_t)T * 64 * 4)
        CHECK(th_rel_err_f((float *)d, logits, T * 64) < 1e-4, "CLI logits vs transformers");
    free(d); free(tok); free(logits);
    CHECK(th_run_peft(out, sizeof out, "logits --model /no/such/model --tokens 1 --out %s", lpath) == 1 &&
                  strstr(out, "/no/such/model"),
          "missing model: %s", out);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --tokens 1,999 --out %s", th_fixtures(),
                      lpath) == 1 &&
                  strstr(out, "999"),
          "token out of range: %s", out);

    /* a truncated weight file is reported by name */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/cli_broken", th_tmpdir());
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s/llama_mha %s && truncate -s 5000 %s/model.safetensors",
             dir, th_fixtures(), dir, dir);
    REQUIRE(system(cmd) == 0, "setup");
    CHECK(th_run_peft(out, sizeof out, "logits --model %s --tokens 1,2 --out %s", dir, lpath) == 1 &&
                  strstr(out, "model.safetensors"),
          "truncated: %s", out);

    /* training from a token file prints a falling loss and saves a loadable model */
    char data[512], saved[512];
    snprintf(data, sizeof data, "%s/ids.txt", th_tmpdir());
    FILE *f = fopen(data, "w");
    for (int i = 0; i < 400; i++) fprintf(f, "%d ", (i * 7) % 23);
    fclose(f);
    snprintf(saved, sizeof saved, "%s/trained", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
                      "train --model %s/llama_mha --data %s --steps 30 --batch 2 --seq 16 --lr 1e-2 --out %s",
                      th_fixtures(), data, saved) == 0 &&
                  strstr(out, "step   30/30"),
          "train: %s", out);
    const char *first = strstr(out, "loss "), *last = NULL;
    for (const char *p = first; p; p = strstr(p + 1, "loss ")) last = p;
    if (first && last)
        CHECK(atof(last + 5) < 0.5 * atof(first + 5), "CLI training loss %s -> %s", first + 5, last + 5);
    peft_model *m;
    CHECK_OK(peft_model_load(&m, saved));
    if (m) peft_model_free(m);
    CHECK(th_run_peft(out, sizeof out, "train --preset tiny --data %s --method lora-x", data) == 2,
          "unknown method exits 2");

    /* methods from the command line */
    CHECK(th_run_peft(out, sizeof out, "info --preset llama-7b --method lora --lora-r 8") == 0 &&
                  strstr(out, "4,194,304"),
          "info lora: %s", out);
    CHECK(th_run_peft(out, sizeof out,
                      "info --preset llama-7b --method adapter-v1 --adapter-len 10 --adapter-layers 30") ==
                          0 &&
                  strstr(out, "1,229,760"),
          "info adapter-v1: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info --preset llama-7b --method excitor") == 0 &&
                  strstr(out, "7,619,520"),
          "info excitor: %s", out);
    CHECK(th_run_peft(out, sizeof out, "info --preset tiny --method lora --lora-r x") == 2 &&
                  strstr(out, "lora_r"),
          "bad flag value: %s", out);
    char adir[512], mdir[512], l1[512], l2[512];
    snprintf(adir, sizeof adir, "%s/cli_lora", th_tmpdir());
    snprintf(mdir, sizeof mdir, "%s/cli_merged", th_tmpdir());
    snprintf(l1, sizeof l1, "%s/l1.f32", th_tmpdir());
    snprintf(l2, sizeof l2, "%s/l2.f32", th_tmpdir());
    CHECK(th_run_peft(
                  out, sizeof out,
                  "train --model %s/llama_mha --data %s --steps 5 --batch 2 --seq 8 --lr 1e-2 --method lora "
                  "--lora-targets q,v,down --out %s",
                  th_fixtures(), data, adir) == 0,
          "train lora: %s", out);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --adapter %s --tokens 1,2,3,4 --out %s",
                      th_fixtures(), adir, l1) == 0,
          "logits with adapter: %s", out);
    CHECK(th_run_peft(out, sizeof out, "merge --model %s/llama_mha --adapter %s --out %s", th_fixtures(),
                      adir, mdir) == 0,
          "merge: %s", out);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s --tokens 1,2,3,4 --out %s", mdir, l2) == 0,
          "logits merged: %s", out);
    unsigned char *d1, *d2; size_t n1, n2;
    if (peft_read_file(l1, &d1, &n1) == PEFT_OK && peft_read_file(l2, &d2, &n2) == PEFT_OK) {
        CHECK(n1 == n2 && th_rel_err_f((float *)d2, (float *)d1, (long)(n1 / 4)) < 1e-5,
              "merged model logits differ from adapter logits");
        free(d1); free(d2);
    } else CHECK(0, "logits files missing");
    /* bench: QLoRA's bits per frozen parameter, and paged AdamW's memory */
    CHECK(th_run_peft(out, sizeof out,
                      "bench --preset stories15m --method qlora --batch 1 --seq 8 --steps 1") == 0 &&
                  strstr(out, "bits/frozen lin  4.127"),
          "bench qlora: %s", out);
    double rss[2] = { 0, 0 };
    const char *optims[2] = { "adamw", "paged --optim-budget-mb 4" };
    for (int k = 0; k < 2; k++) {
        CHECK(th_run_peft(out, sizeof out,
                          "bench --preset stories15m --method full --batch 1 --seq 8 --steps 1 --optim %s",
                          optims[k]) == 0,
              "bench %s: %s", optims[k], out);
        const char *p = strstr(out, "peak RSS MB");
        rss[k] = p ? atof(p + 11) : 0;
    }
    /* the 116 MB of fp32 AdamW state mostly leaves RSS when paged */
    CHECK(rss[0] > 0 && rss[1] > 0 && rss[1] < rss[0] - 50, "peak RSS: plain %.1f MB, paged %.1f MB", rss[0],
          rss[1]);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_gqa --adapter %s --tokens 1,2 --out %s",
                      th_fixtures(), adir, l1) == 1 &&
                  strstr(out, "adapter_model.safetensors"),
          "adapter for another base: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --preset tiny --data /no/file --steps 1 --no-save") == 1 &&
                  strstr(out, "/no/file"),
          "missing data: %s", out);
    {   /* a prompt longer than the model's positions is refused, not silently empty */
        char ids[400] = "1";
        for (int i = 1; i < 70; i++) strcat(ids, ",3");
        CHECK(th_run_peft(out, sizeof out, "generate --model %s/llama_gqa --tokens %s", th_fixtures(), ids) ==
                              1 &&
                      strstr(out, "70 tokens"),
              "long prompt: %s", out);
    }

    /* generate: greedy ids from a llama2.c model equal run.c's (when ../shared/data is there) */
    if (th_shared()) {
        char want[512] = "";
        snprintf(ref, sizeof ref, "%s/stories260K_greedy40.txt", th_fixtures());
        FILE *wf = fopen(ref, "r");
        if (wf && fgets(want, sizeof want, wf)) {
            CHECK(th_run_peft(
                          out, sizeof out,
                          "generate --model %s/llama2c/stories260K.bin --tokens 1 --max-new 40 --print-ids",
                          th_shared()) == 0 &&
                          strcmp(out, want) == 0,
                  "generate --print-ids: '%s' vs run.c '%s'", out, want);
        }
        if (wf) fclose(wf);
        CHECK(th_run_peft(out, sizeof out, "generate --model %s/llama2c/stories260K.bin --prompt hi",
                          th_shared()) == 2,
              "--prompt without --tokenizer exits 2");
    }
}

/* One source of defaults: every recipe value results.json marks "paper" is
   the method's registry default (peft_method_get(kind)->defaults), and
   every one marked "trainer" is peft_trainer_defaults()'s; the demo's own
   table states only what it scales. */
static void demo_recipe_is_registry(const peft_json *m) {
    const peft_json *rc = peft_json_get(m, "recipe");
    const peft_json *src = rc ? peft_json_get(rc, "source") : NULL;
    const peft_json *name = rc ? peft_json_get(rc, "method") : NULL;
    peft_method_kind kind;
    REQUIRE(src && name && name->type == PEFT_JSON_STRING &&
            peft_method_parse(name->string, &kind) == PEFT_OK,
            "results.json: a recipe without its method or value sources");
    const peft_method_recipe *d = &peft_method_get(kind)->defaults;
    peft_trainer_opts t = peft_trainer_defaults();
    const char *fields[3] = { "weight_decay", "beta2", "max_grad_norm" };
    const float paper[3] = { d->weight_decay, d->beta2, d->max_grad_norm };
    const float trainer[3] = { t.weight_decay, t.beta2, t.max_grad_norm };
    for (int i = 0; i < 3; i++) {
        const peft_json *s = peft_json_get(src, fields[i]), *v = peft_json_get(rc, fields[i]);
        REQUIRE(s && v && s->type == PEFT_JSON_STRING && v->type == PEFT_JSON_NUMBER, "recipe %s: %s",
                name->string, fields[i]);
        int is_paper = !strcmp(s->string, "paper"), is_trainer = !strcmp(s->string, "trainer");
        CHECK(is_paper || is_trainer, "recipe %s: %s is %s, not the paper's (the registry's)", name->string,
              fields[i], s->string);
        float want = is_paper ? paper[i] : trainer[i];
        CHECK(fabs(v->number - want) < 1e-6, "recipe %s: %s %g, its %s value is %g", name->string, fields[i],
              v->number, s->string, want);
    }
    const peft_json *sched = peft_json_get(rc, "schedule"), *ss = peft_json_get(src, "schedule");
    static const char *const names[3] = { "constant", "cosine", "linear" };
    CHECK(sched && ss && !strcmp(ss->string, "paper") && d->schedule >= 0 && d->schedule < 3 &&
          !strcmp(sched->string, names[d->schedule]),
          "recipe %s: its schedule is not the registry's", name->string);
}

/* `make demo`'s program, shortened (--quick: a few steps per phase, two
   seeds, a subset of the test items): it must run through and write its
   files, with a row per method in the JSON carrying its spread over the
   seeds, bands in loss.svg and error bars in tradeoff.svg; and its zero-init
   row must say that every method's step-0 logits equal the base's, bit for
   bit (a gate or B matrix not initialised to zero turns a "yes" into "NO"). */
TEST(test_demo_quick) {
    static char out[1 << 16];
    const char *demo = getenv("PEFT_DEMO");
    if (!demo) demo = "build/demo";
    FILE *probe = fopen(demo, "rb");
    if (!probe) SKIP("%s not built", demo);
    fclose(probe);
    char dir[512], cmd[1200];
    snprintf(dir, sizeof dir, "%s/demo", th_tmpdir());
    snprintf(cmd, sizeof cmd, "%s --quick --threads 1 --out %s 2>&1", demo, dir);
    FILE *p = popen(cmd, "r");
    REQUIRE(p, "popen");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 0, "demo failed: %s", out);
    const char *files[5] = { "results.md", "results.json", "loss.svg", "tradeoff.svg", "accuracy.svg" };
    for (int i = 0; i < 5; i++) {
        char path[700];
        unsigned char *d; size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        REQUIRE_OK(peft_read_file(path, &d, &len));
        CHECK(len > 100, "%s is too small", path);
        if (i >= 2) CHECK(strstr((char *)d, "<svg") && strstr((char *)d, "</svg>"), "%s is not an SVG", path);
        if (i == 2 || i == 4) CHECK(strstr((char *)d, "<polygon"), "%s has no band", path);
        if (i == 3) CHECK(strstr((char *)d, "<path"), "%s has no error bars", path);
        if (i == 1) {
            peft_json *j;
            CHECK_OK(peft_json_parse(&j, (char *)d, len, path));
            const peft_json *ms = j ? peft_json_get(j, "methods") : NULL;
            CHECK(ms && ms->n_children == 6, "results.json must list the six methods");
            for (const peft_json *m = ms ? ms->child : NULL; m; m = m->next) {
                const peft_json *em = peft_json_get(m, "exact_match");
                const peft_json *seeds = em ? peft_json_get(em, "seeds") : NULL;
                const peft_json *z = peft_json_get(m, "step0_logits_equal_base");
                CHECK(em && peft_json_get(em, "mean") && peft_json_get(em, "sd") && seeds &&
                      seeds->n_children == 2, "results.json: a method without its exact match over 2 seeds");
                CHECK(z && z->type == PEFT_JSON_BOOL && z->number != 0,
                      "results.json: a method's step-0 logits differ from the base's");
                demo_recipe_is_registry(m);
            }
            peft_json_free(j);
        }
        free(d);
    }
    CHECK(strstr(out, "qlora") && strstr(out, "excitor") && strstr(out, "[5/5]"), "demo output: %s", out);
    const char *z = strstr(out, "step-0 logits == base, bit for bit:");
    CHECK(z && strstr(z, "adapter-v1 yes") && strstr(z, "excitor yes"), "zero-init row: %s", out);
    CHECK(z && (!strstr(z, " NO") || strstr(z, " NO") > strchr(z, '\n')), "zero-init row: %s", out);
}

static int exists(const char *p) { FILE *f = fopen(p, "rb"); if (f) fclose(f); return f != NULL; }

static int same_file(const char *a, const char *b) {
    unsigned char *x, *y;
    size_t nx, ny;
    if (peft_read_file(a, &x, &nx) != PEFT_OK) return 0;
    if (peft_read_file(b, &y, &ny) != PEFT_OK) { free(x); return 0; }
    int same = nx == ny && !memcmp(x, y, nx);
    free(x); free(y);
    return same;
}

/* `peft train` as a user runs it on an Alpaca file (tokenized by a
   byte-level tokenizer.json fixture): the log, the plot, the
   resolved config; a run killed (SIGKILL) after step 4 and resumed from its
   checkpoint at step 3 ends with the same adapter bytes as one that never
   stopped; --config with the written train_config.json repeats the run. */
TEST(test_train_alpaca_kill_resume) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char tokp[700], model[512], data[512];
    /* a byte-level tokenizer.json, 800 ids */
    snprintf(tokp, sizeof tokp, "%s/hf_tok/gpt2.json", th_fixtures());
    snprintf(model, sizeof model, "%s/tiny800", th_tmpdir());
    snprintf(data, sizeof data, "%s/alpaca/data.json", th_fixtures());
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.vocab_size = 800;
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.max_seq_len = 256;
    peft_model *m;
    REQUIRE_OK(peft_model_new(&m, &c, 1, 1));
    REQUIRE_OK(peft_model_save(m, model));
    peft_model_free(m);
    const char *common = "--method lora --lora-dropout 0.1 --batch 2 --seq 192 --max-steps 8 --save-every 3 "
                         "--lr 1e-2 --seed 5";
    char a[512], b[512], cdir[512], fa[700], fb[700];
    snprintf(a, sizeof a, "%s/run_a", th_tmpdir());
    snprintf(b, sizeof b, "%s/run_b", th_tmpdir());
    snprintf(cdir, sizeof cdir, "%s/run_c", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out, "train --model %s --tokenizer %s --data %s %s --out %s", model, tokp,
                      data, common, a) == 0,
          "uninterrupted run: %s", out);
    CHECK(strstr(out, "6 examples") != NULL, "examples: %s", out);
    char cmd[4000];
    snprintf(cmd, sizeof cmd,
             "PEFT_CRASH_AFTER_STEP=4 %s train --model %s --tokenizer %s --data %s %s --out %s > /dev/null "
             "2>&1",
             bin(), model, tokp, data, common, b);
    int st = system(cmd);
    CHECK(st != 0, "the killed run must not exit cleanly");
    snprintf(fb, sizeof fb, "%s/checkpoint-3/trainer.safetensors", b);
    CHECK(exists(fb), "checkpoint-3 written before the kill");
    snprintf(fb, sizeof fb, "%s/adapter_model.safetensors", b);
    CHECK(!exists(fb), "the killed run left no final adapter");
    CHECK(th_run_peft(out, sizeof out, "train --resume %s", b) == 0 && strstr(out, "resuming from") &&
                  strstr(out, "step 3"),
          "resume: %s", out);
    snprintf(fa, sizeof fa, "%s/adapter_model.safetensors", a);
    CHECK(same_file(fa, fb), "resumed adapter differs from the uninterrupted one");
    /* the log: one JSON object per line, steps 1..8 once each after the resume */
    snprintf(fb, sizeof fb, "%s/log.jsonl", b);
    unsigned char *lg;
    size_t ln;
    int steps_seen = 0, bad = 0;
    if (peft_read_file(fb, &lg, &ln) == PEFT_OK) {
        for (char *line = (char *)lg, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            size_t len = next ? (size_t)(next - line) : strlen(line);
            if (next) next++;
            peft_json *j;
            if (peft_json_parse(&j, line, len, fb) != PEFT_OK) { bad++; continue; }
            const peft_json *s = peft_json_get(j, "step");
            if (s && peft_json_get(j, "loss")) steps_seen += (int)s->number;
            peft_json_free(j);
        }
        free(lg);
    }
    CHECK(!bad && steps_seen == 36, "log.jsonl: %d bad lines, step sum %d (want 1+..+8 = 36)", bad,
          steps_seen);
    snprintf(fb, sizeof fb, "%s/loss.svg", b);
    unsigned char *svg;
    size_t sn;
    CHECK(peft_read_file(fb, &svg, &sn) == PEFT_OK && sn > 100 && strstr((char *)svg, "<svg") &&
                  strstr((char *)svg, "</svg>"),
          "loss.svg");
    if (sn) free(svg);
    /* the written config repeats the run */
    snprintf(fa, sizeof fa, "%s/train_config.json", a);
    CHECK(th_run_peft(out, sizeof out, "train --config %s --out %s", fa, cdir) == 0, "--config: %s", out);
    snprintf(fa, sizeof fa, "%s/adapter_model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/adapter_model.safetensors", cdir);
    CHECK(same_file(fa, fb), "--config train_config.json did not repeat the run");
    /* the same with 8-bit AdamW states and the paged optimizer */
    const char *optims[2] = { "8bit", "paged" };
    for (int k = 0; k < 2; k++) {
        snprintf(a, sizeof a, "%s/run_a_%s", th_tmpdir(), optims[k]);
        snprintf(b, sizeof b, "%s/run_b_%s", th_tmpdir(), optims[k]);
        CHECK(th_run_peft(out, sizeof out, "train --model %s --tokenizer %s --data %s %s --optim %s --out %s",
                          model, tokp, data, common, optims[k], a) == 0,
              "%s run: %s", optims[k], out);
        snprintf(cmd, sizeof cmd,
                 "PEFT_CRASH_AFTER_STEP=7 %s train --model %s --tokenizer %s --data %s %s --optim %s --out "
                 "%s > /dev/null 2>&1",
                 bin(), model, tokp, data, common, optims[k], b);
        CHECK(system(cmd) != 0, "killed");
        CHECK(th_run_peft(out, sizeof out, "train --resume %s", b) == 0 && strstr(out, "step 6"),
              "%s resume: %s", optims[k], out);
        snprintf(fa, sizeof fa, "%s/adapter_model.safetensors", a);
        snprintf(fb, sizeof fb, "%s/adapter_model.safetensors", b);
        CHECK(same_file(fa, fb), "%s: resumed adapter differs", optims[k]);
    }
    /* bad settings are named */
    CHECK(th_run_peft(out, sizeof out, "train --config %s",
                      th_tmp_text("bad_config.json", "{\"lora_rank\": 8}")) == 1 &&
                  strstr(out, "lora_rank") && strstr(out, "bad_config.json"),
          "unknown config key: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --resume %s/nothing_here", th_tmpdir()) == 1 &&
                  strstr(out, "nothing_here"),
          "resume nothing: %s", out);
}

/* `peft export --format gguf`: the file's header, keys and tensor table as
   llama.cpp reads them (tools/ref/check_gguf.py checks the same files with
   the gguf package, values included: tests/fixtures/gguf_check.txt). */
static uint64_t rd64(const unsigned char **p) { uint64_t v; memcpy(&v, *p, 8); *p += 8; return v; }
static uint32_t rd32(const unsigned char **p) { uint32_t v; memcpy(&v, *p, 4); *p += 4; return v; }

TEST(test_export_gguf) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char path[512];
    snprintf(path, sizeof path, "%s/a.gguf", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
                      "export --model %s/llama_gqa --adapter %s/peft_lora_qv --format gguf --out %s",
                      th_fixtures(), th_fixtures(), path) == 0,
          "export: %s", out);
    unsigned char *d;
    size_t n;
    REQUIRE_OK(peft_read_file(path, &d, &n));
    const unsigned char *p = d;
    CHECK(n > 64 && !memcmp(p, "GGUF", 4), "magic");
    p += 4;
    CHECK(rd32(&p) == 3, "version 3");
    uint64_t nt = rd64(&p), nkv = rd64(&p);
    CHECK(nt == 8 && nkv == 6, "%llu tensors, %llu keys", (unsigned long long)nt, (unsigned long long)nkv);
    int seen = 0;
    float alpha = 0;
    for (uint64_t i = 0; i < nkv && p < d + n; i++) {
        uint64_t kl = rd64(&p);
        char key[128] = "";
        memcpy(key, p, kl < 127 ? kl : 127);
        p += kl;
        uint32_t type = rd32(&p);
        if (type == 8) {
            uint64_t vl = rd64(&p);
            char val[128] = "";
            memcpy(val, p, vl < 127 ? vl : 127);
            p += vl;
            if (!strcmp(key, "general.type")) seen += !strcmp(val, "adapter");
            if (!strcmp(key, "adapter.type")) seen += !strcmp(val, "lora");
            if (!strcmp(key, "general.architecture")) seen += !strcmp(val, "llama");
        } else if (type == 6) { memcpy(&alpha, p, 4); p += 4; }
        else if (type == 4) p += 4;
    }
    CHECK(seen == 3 && alpha == 8.0f, "keys: %d of 3, alpha %g (PEFT's lora_alpha 8)", seen, alpha);
    uint64_t t0 = rd64(&p);
    char first[64] = "";
    memcpy(first, p, t0 < 63 ? t0 : 63);
    p += t0;
    uint32_t nd = rd32(&p);
    uint64_t ne0 = rd64(&p), ne1 = rd64(&p);
    CHECK(!strcmp(first, "blk.0.attn_q.weight.lora_a") && nd == 2 && ne0 == 48 && ne1 == 4,
          "first tensor %s [%llu, %llu]", first, (unsigned long long)ne0, (unsigned long long)ne1);
    free(d);
    CHECK(th_run_peft(out, sizeof out,
                      "export --model %s/llama_gqa --adapter %s/peft_adaption_prompt --format gguf --out %s",
                      th_fixtures(), th_fixtures(), path) == 1 &&
                  strstr(out, "LoRA only"),
          "non-LoRA to gguf: %s", out);
    CHECK(th_run_peft(out, sizeof out, "export --adapter %s/peft_lora_qv --format onnx --out %s",
                      th_fixtures(), path) == 2,
          "bad format");
}

/* The examples that need no demo base run to the end and print what they
   teach (lora_math: the merged model's logits, the rank of the update;
   quickstart: an adapter saved), from a scratch folder. */
TEST(test_examples_run) {
    static char out[1 << 16];
    const char *dir = getenv("PEFT_EXAMPLES");
    if (!dir) dir = "build/examples";
    const char *names[2] = { "lora_math", "quickstart" },
               *expect[2] = { "rounding noise", "adapter_model.safetensors" };
    for (int i = 0; i < 2; i++) {
        char exe[1200], cwd[512] = "", cmd[2000];
        if (dir[0] != '/' && !getcwd(cwd, sizeof cwd)) SKIP("no working directory");
        snprintf(exe, sizeof exe, "%s%s%s/%s", cwd, cwd[0] ? "/" : "", dir, names[i]);
        FILE *probe = fopen(exe, "rb");
        if (!probe) SKIP("examples/%s not built", names[i]);
        fclose(probe);
        snprintf(cmd, sizeof cmd, "cd '%s' && '%s' 2>&1", th_tmpdir(), exe);
        FILE *p = popen(cmd, "r");
        REQUIRE(p, "popen");
        size_t n = fread(out, 1, sizeof out - 1, p);
        out[n] = 0;
        int st = pclose(p);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(out, expect[i]), "%s: exit %d: %s", names[i],
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
    }
}

/* ---- issue 13/14: hostile inputs, absurd flags, usable output folders ---- */

/* Copies src to dst with one metadata value replaced (a hostile checkpoint). */
static int rewrite_meta(const char *src, const char *dst, const char *key, const char *val) {
    peft_safetensors st;
    if (peft_st_open(&st, src) != PEFT_OK) return 0;
    peft_st_write_item *it = calloc((size_t)st.n + 1, sizeof *it);
    const char **meta = calloc((size_t)st.n_meta * 2 + 2, sizeof *meta);
    for (int i = 0; it && i < st.n; i++) {
        it[i].name = st.entries[i].name;
        it[i].dtype = st.entries[i].dtype;
        it[i].ndim = st.entries[i].ndim;
        memcpy(it[i].shape, st.entries[i].shape, sizeof it[i].shape);
        it[i].data = st.data + st.entries[i].offset;
    }
    for (int i = 0; meta && i < st.n_meta; i++) {
        meta[2 * i] = st.meta_keys[i];
        meta[2 * i + 1] = strcmp(st.meta_keys[i], key) ? st.meta_vals[i] : val;
    }
    int ok = it && meta && peft_st_write(dst, it, st.n, meta, st.n_meta) == PEFT_OK;
    free(it); free(meta);
    peft_st_close(&st);
    return ok;
}

/* Copies a safetensors file without the tensor `drop` (NULL: none) and with an extra
   1-element tensor `add` (NULL: none). */
static int rewrite_tensors(const char *src, const char *dst, const char *drop, const char *add) {
    peft_safetensors st;
    if (peft_st_open(&st, src) != PEFT_OK) return 0;
    peft_st_write_item *it = calloc((size_t)st.n + 2, sizeof *it);
    static const float one = 1.0f;
    int n = 0;
    for (int i = 0; it && i < st.n; i++) {
        if (drop && !strcmp(st.entries[i].name, drop)) continue;
        it[n].name = st.entries[i].name;
        it[n].dtype = st.entries[i].dtype;
        it[n].ndim = st.entries[i].ndim;
        memcpy(it[n].shape, st.entries[i].shape, sizeof it[n].shape);
        it[n++].data = st.data + st.entries[i].offset;
    }
    if (it && add) {
        it[n].name = add;
        it[n].dtype = PEFT_DT_F32;
        it[n].ndim = 1;
        it[n].shape[0] = 1;
        it[n++].data = &one;
    }
    int ok = it && peft_st_write(dst, it, n, NULL, 0) == PEFT_OK;
    free(it);
    peft_st_close(&st);
    return ok;
}

/* Replaces the first `from` within the first `limit` bytes of a file by `to` of the same length. */
static int patch_bytes(const char *path, const char *from, const char *to, size_t limit) {
    unsigned char *d;
    size_t n, k = strlen(from);
    if (strlen(to) != k || peft_read_file(path, &d, &n) != PEFT_OK) return 0;
    int done = 0;
    for (size_t i = 0; i + k <= n && i + k <= limit && !done; i++)
        if (!memcmp(d + i, from, k)) { memcpy(d + i, to, k); done = 1; }
    if (done) done = peft_write_file_atomic(path, d, n) == PEFT_OK;
    free(d);
    return done;
}

/* the tiny byte-level model of the resume test (vocab 800) with its tokenizer files */
static void make_tok_model(const char *dir) {
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.vocab_size = 800;
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.max_seq_len = 256; c.eos_id = 0; c.bos_id = 0;
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 3) != PEFT_OK || peft_model_save(m, dir) != PEFT_OK) {
        fprintf(stderr, "model\n");
        return;
    }
    peft_model_free(m);
    th_sh("cp %s/hf_tok/gpt2.json %s/tokenizer.json && echo '{\"eos_token\": \"<|endoftext|>\"}' > "
       "%s/tokenizer_config.json && "
       "echo '{\"eos_token_id\": 0}' > %s/generation_config.json",
       th_fixtures(), dir, dir, dir);
}

/* Token ids from every source are range-checked; --tokens prints text when the
   folder has a tokenizer; merge, quantize and full fine-tuning write folders that
   carry the tokenizer files. */
TEST(test_cli_token_ids_and_folders) {
    static char out[1 << 16], ids_out[1 << 12];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char base[512], small[512], data[600], lora[512], merged[512], quant[512], full[512], f1[700], f2[700];
    snprintf(base, sizeof base, "%s/tokm", th_tmpdir());
    make_tok_model(base);
    /* a tokenizer with more tokens than the model's vocabulary: today's "prints nothing, exit 0" */
    snprintf(small, sizeof small, "%s/tok_small_vocab", th_tmpdir());
    th_sh("rm -rf %s && cp -r %s/llama_mha %s && cp %s/tokenizer.json %s/", small, th_fixtures(), small, base,
       small);
    CHECK(th_run_peft(out, sizeof out, "generate --model %s --prompt 'Hello world' --max-new 4", small) ==
                          1 &&
                  strstr(out, "outside the model's vocabulary") && strstr(out, "vocab_size 64"),
          "prompt ids past vocab_size: %s", out);
    CHECK(th_run_peft(out, sizeof out, "generate --model %s --tokens 1,2,64", small) == 2,
          "--tokens past vocab_size: %s", out);
    snprintf(data, sizeof data, "%s", th_tmp_text("ids_past_vocab.txt", "1 2 3 64 5 6"));
    CHECK(th_run_peft(out, sizeof out, "train --model %s/llama_mha --data %s --steps 1 --no-save",
                      th_fixtures(), data) == 1 &&
                  strstr(out, "64") && strstr(out, "ids_past_vocab.txt"),
          "id file past vocab_size: %s", out);

    /* --tokens with a folder that has tokenizer.json prints the text of the ids it generates */
    CHECK(th_run_peft(ids_out, sizeof ids_out,
                      "generate --model %s --tokens 10,20,30 --max-new 6 --print-ids", base) == 0,
          "ids: %s", ids_out);
    CHECK(th_run_peft(out, sizeof out, "generate --model %s --tokens 10,20,30 --max-new 6", base) == 0,
          "text: %s", out);
    peft_tokenizer tok;
    snprintf(f1, sizeof f1, "%s/tokenizer.json", base);
    REQUIRE_OK(peft_tokenizer_load(&tok, f1, 800));
    char want[1024] = "", b8[8];
    int prev = 30;
    for (char *p = ids_out; *p;) {
        char *end;
        long id = strtol(p, &end, 10);
        if (end == p) break;
        if (id != 0) strcat(want, peft_tokenizer_decode(&tok, prev, (int)id, b8));
        prev = (int)id;
        p = end;
    }
    peft_tokenizer_free(&tok);
    CHECK(want[0] && strncmp(out, want, strlen(want)) == 0, "--tokens text '%s', the ids decode to '%s'", out,
          want);

    /* merge, quantize and full fine-tuning: folders usable alone, the chat
       template that transformers saves beside tokenizer_config.json included */
    snprintf(f1, sizeof f1, "%s/chat_template.jinja", base);
    FILE *jf = fopen(f1, "w");
    REQUIRE(jf, "cannot write %s", f1);
    fputs("{% for m in messages %}{{ m['content'] }}{% endfor %}", jf);
    fclose(jf);
    snprintf(data, sizeof data, "%s/alpaca/data.json", th_fixtures());
    snprintf(lora, sizeof lora, "%s/tokm_lora", th_tmpdir());
    snprintf(merged, sizeof merged, "%s/tokm_merged", th_tmpdir());
    snprintf(quant, sizeof quant, "%s/tokm_q4", th_tmpdir());
    snprintf(full, sizeof full, "%s/tokm_full", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
              "train --model %s --data %s --method lora --max-steps 2 --batch 2 --seq 192 --out %s", base,
              data, lora) == 0,
          "lora: %s", out);
    CHECK(th_run_peft(out, sizeof out, "merge --model %s --adapter %s --out %s", base, lora, merged) == 0,
          "merge: %s", out);
    CHECK(th_run_peft(out, sizeof out, "quantize --model %s --out %s", base, quant) == 0, "quantize: %s",
          out);
    CHECK(th_run_peft(out, sizeof out,
                      "train --model %s --data %s --max-steps 2 --batch 2 --seq 192 --out %s", base, data,
                      full) == 0,
          "full: %s", out);
    const char *made[3] = { merged, quant, full },
               *files[4] = { "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                             "chat_template.jinja" };
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 4; k++) {
            snprintf(f1, sizeof f1, "%s/%s", base, files[k]);
            snprintf(f2, sizeof f2, "%s/%s", made[i], files[k]);
            CHECK(same_file(f1, f2), "%s has no copy of %s", made[i], files[k]);
        }
    CHECK(th_run_peft(out, sizeof out, "generate --model %s --prompt 'Hello' --max-new 3", merged) == 0 &&
          strstr(out, "Hello"),
          "generate on the merged folder without --tokenizer: %s", out);
    /* merging again replaces the folder whole: nothing left beside it */
    CHECK(th_run_peft(out, sizeof out, "merge --model %s --adapter %s --out %s/", base, lora, merged) == 0,
          "merge again: %s", out);
    snprintf(f1, sizeof f1, "%s.tmp", merged);
    snprintf(f2, sizeof f2, "%s.old", merged);
    CHECK(!exists(f1) && !exists(f2), "merge left %s or %s", f1, f2);
    /* ... but a folder that is not a model's is not replaced */
    CHECK(th_run_peft(out, sizeof out, "merge --model %s --adapter %s --out %s", base, lora, th_tmpdir()) ==
                          1 &&
                  strstr(out, "no model folder has"),
          "merge over a foreign folder: %s", out);
    CHECK(exists(base), "the foreign folder is intact");
    /* a user's notes.txt, data.json or README.md beside a merged model: refused, and kept */
    const char *mine[3] = { "notes.txt", "data.json", "README.md" };
    for (int i = 0; i < 3; i++) {
        snprintf(f1, sizeof f1, "%s/%s", merged, mine[i]);
        FILE *f = fopen(f1, "w");
        REQUIRE(f, "%s", f1);
        fputs("precious\n", f);
        fclose(f);
        CHECK(th_run_peft(out, sizeof out, "merge --model %s --adapter %s --out %s", base, lora, merged) ==
                              1 &&
                      strstr(out, mine[i]),
              "merge over a folder holding %s: %s", mine[i], out);
        CHECK(th_run_peft(out, sizeof out, "quantize --model %s --out %s", base, merged) == 1 &&
                      strstr(out, mine[i]),
              "quantize over a folder holding %s: %s", mine[i], out);
        CHECK(exists(f1), "%s was deleted", f1);
        remove(f1);
    }
}

/* A corpus of hostile checkpoints and configs and of absurd flags (issue 14):
   each exits 1 (bad file) or 2 (usage) with a message, never crashes, never
   trains silently wrong. */
TEST(test_cli_hostile_and_absurd) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char data[600], run1[512], ck[700], orig[700], dir[512], path[700];
    snprintf(data, sizeof data, "%s/hostile_ids.txt", th_tmpdir());
    FILE *f = fopen(data, "w");
    REQUIRE(f, "data");
    for (int i = 0; i < 400; i++) fprintf(f, "%d ", (i * 7) % 23);
    fclose(f);
    char model[600];
    snprintf(model, sizeof model, "--model %s/llama_mha", th_fixtures());

    /* absurd flags: usage errors, exit 2, before any work */
    const char *absurd[] = {
        "--epochs 1000000000", "--max-steps 1000000000",         "--grad-accum 1000000000",
        "--threads 100000",    "--method lora --lora-dropout 2", "--method lora --lora-r x",
        "--method nope"
    };
    for (int i = 0; i < 7; i++)
        CHECK(th_run_peft(out, sizeof out, "train %s --data %s --batch 2 --seq 16 --no-save %s", model, data,
                  absurd[i]) == 2 &&
              strstr(out, "peft"),
              "%s: %s", absurd[i], out);
    CHECK(th_run_peft(out, sizeof out,
              "train %s --data %s --batch 2 --seq 16 --no-save --method lora --lora-layers 7", model,
              data) == 1 &&
          strstr(out, "layer 7") && strstr(out, "2 layers"),
          "--lora-layers 7 of 2: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --config %s --no-save", th_tmpdir()) == 1 &&
          strstr(out, "is a directory"), "--config DIR: %s", out);

    /* --out: required (or --no-save), a non-empty one refused unless --overwrite */
    snprintf(run1, sizeof run1, "%s/hostile_run", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out, "train %s --data %s --batch 2 --seq 16 --steps 2", model, data) == 2 &&
          strstr(out, "--no-save"),
          "no --out: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train %s --data %s --batch 2 --seq 16 --steps 2 --no-save", model,
                      data) == 0,
          "--no-save: %s", out);
    CHECK(th_run_peft(out, sizeof out,
              "train %s --data %s --method lora --batch 2 --seq 16 --steps 4 --save-every 2 --out %s", model,
              data, run1) == 0,
          "run: %s", out);
    CHECK(th_run_peft(out, sizeof out,
                      "train %s --data %s --method lora --batch 2 --seq 16 --steps 4 --out %s", model, data,
                      run1) == 2 &&
                  strstr(out, "--resume") && strstr(out, "--overwrite"),
          "existing --out: %s", out);
    snprintf(ck, sizeof ck, "%s/checkpoint-2/trainer.safetensors", run1);
    snprintf(orig, sizeof orig, "%s/trainer.orig", th_tmpdir());
    CHECK(exists(ck), "the refused run left the old one alone");
    th_sh("cp %s %s", ck, orig);

    /* hostile checkpoints: counters out of range, or outside the run resumed */
    const char *meta[][2] = { { "cursor", "-100000" }, { "step", "-3" },       { "epoch", "99999999999" },
                              { "step", "2x" },        { "cursor", "999999" }, { "step", "99" } };
    for (int i = 0; i < 6; i++) {
        REQUIRE(rewrite_meta(orig, ck, meta[i][0], meta[i][1]), "rewrite");
        CHECK(th_run_peft(out, sizeof out, "train --resume %s", run1) == 1 &&
                      strstr(out, "trainer.safetensors") &&
                      (strstr(out, "out of range") || strstr(out, "outside this run")),
              "%s = %s: %s", meta[i][0], meta[i][1], out);
    }
    th_sh("cp %s %s", orig, ck);
    /* (the run is finished: said without "resuming from", after the checkpoint is read) */
    CHECK(th_run_peft(out, sizeof out, "train --resume %s", run1) == 0 &&
              strstr(out, "the run is finished") && !strstr(out, "resuming from"),
          "the good checkpoint: %s", out);
    /* a folder of the user's named like a checkpoint (checkpoint-mine/) stays */
    snprintf(path, sizeof path, "%s/checkpoint-mine", run1);
    th_sh("mkdir -p %s && touch %s/f", path, path);
    /* --overwrite starts afresh: the old checkpoints go (a later --resume must not find them) */
    CHECK(th_run_peft(out, sizeof out,
              "train %s --data %s --method lora --batch 2 --seq 16 --steps 1 --out %s --overwrite", model,
              data, run1) == 0,
          "--overwrite: %s", out);
    CHECK(!exists(ck), "--overwrite left the old run's checkpoint-2");
    CHECK(exists(path), "--overwrite removed %s", path);
    /* ... and the old adapter: a run stopped (Ctrl-C) before it saves must not leave the old run's
       adapter beside its own config and log. Its first log line says clear_run has run. */
    char ad[700];
    snprintf(ad, sizeof ad, "%s/adapter_model.safetensors", run1);
    CHECK(exists(ad), "no adapter after the --overwrite run");
    /* (SIGTERM: a shell's background job ignores SIGINT; both end the run where it is) */
    th_sh("rm -f %s/log.jsonl; timeout 60 %s train %s --data %s --method lora --batch 2 --seq 16 "
          "--steps 200000 --out %s --overwrite >/dev/null 2>&1 & p=$!; i=0; "
          "while [ ! -s %s/log.jsonl ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; "
          "kill -TERM $p; wait $p; true", run1, bin(), model, data, run1, run1);
    snprintf(path, sizeof path, "%s/log.jsonl", run1);
    CHECK(exists(path), "the stopped run wrote no log");
    CHECK(!exists(ad), "--overwrite stopped before saving: the old run's adapter is still there");

    /* data paths that look like numbers are written as strings: the run resumes */
    const char *names[2] = { "0x10", "1e3" };
    char cwd[512] = "", abs_bin[1100], abs_model[1100];
    REQUIRE(getcwd(cwd, sizeof cwd), "cwd");
    snprintf(abs_bin, sizeof abs_bin, "%s%s%s", bin()[0] == '/' ? "" : cwd, bin()[0] == '/' ? "" : "/",
             bin());
    snprintf(abs_model, sizeof abs_model, "%s%s%s/llama_mha", th_fixtures()[0] == '/' ? "" : cwd,
             th_fixtures()[0] == '/' ? "" : "/", th_fixtures());
    for (int k = 0; k < 2; k++) {
        snprintf(dir, sizeof dir, "%s/numeric_%d", th_tmpdir(), k);
        th_sh("mkdir -p %s && cp %s %s/%s", dir, data, dir, names[k]);
        char cmd[4000];
        snprintf(cmd, sizeof cmd,
                 "cd %s && %s train --model %s --data %s --batch 2 --seq 16 --steps 4 --save-every 2 "
                 "--method lora "
                 "--out r > /dev/null 2>&1 && rm r/adapter_model.safetensors && %s train --resume r > "
                 "/dev/null 2>&1",
                 dir, abs_bin, abs_model, names[k], abs_bin);
        CHECK(system(cmd) == 0, "--data %s: the run does not resume", names[k]);
        snprintf(path, sizeof path, "%s/r/train_config.json", dir);
        peft_json *j = NULL;
        /* (written as an absolute path: the folder, then the name) */
        const peft_json *dj = peft_json_load(&j, path) == PEFT_OK ? peft_json_get(j, "data") : NULL;
        const char *ds = dj && dj->type == PEFT_JSON_STRING ? dj->string : "";
        size_t dn = strlen(ds), nn = strlen(names[k]);
        CHECK(ds[0] == '/' && dn > nn && ds[dn - nn - 1] == '/' && !strcmp(ds + dn - nn, names[k]),
              "train_config.json data for %s: %s", names[k], ds);
        peft_json_free(j);
    }

    /* a learning rate that destroys a trained model: a warning; --stop-on-divergence stops with exit 1 */
    char trained[512], dv[512];
    snprintf(trained, sizeof trained, "%s/div_trained", th_tmpdir());
    snprintf(dv, sizeof dv, "%s/div_run", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out, "train %s --data %s --steps 30 --batch 2 --seq 16 --lr 1e-2 --out %s",
                      model, data, trained) == 0,
          "pre-train: %s", out);
    CHECK(th_run_peft(out, sizeof out,
              "train --model %s --data %s --steps 8 --batch 2 --seq 16 --lr 1 --schedule constant --no-save",
              trained, data) == 0 &&
          strstr(out, "warning") && strstr(out, "destroyed"),
          "divergence warning: %s", out);
    CHECK(th_run_peft(out, sizeof out,
                      "train --model %s --data %s --steps 8 --batch 2 --seq 16 --lr 1e-2 --no-save", trained,
                      data) == 0 &&
                  !strstr(out, "destroyed"),
          "a sane learning rate warns: %s", out);
    CHECK(th_run_peft(out, sizeof out,
              "train --model %s --data %s --steps 8 --batch 2 --seq 16 --lr 1 --schedule constant "
              "--stop-on-divergence --out %s",
              trained, data, dv) == 1 &&
          strstr(out, "--stop-on-divergence"),
          "--stop-on-divergence: %s", out);
    snprintf(path, sizeof path, "%s/model.safetensors", dv);
    CHECK(!exists(path), "a diverged run saved its model");

    /* info reads the weight files' headers: counts, and every inconsistency with config.json (exit 1) */
    CHECK(th_run_peft(out, sizeof out, "info %s/llama_mha", th_fixtures()) == 0 &&
                  strstr(out, "21 tensors (F32 21)"),
          "info: %s", out);
    snprintf(dir, sizeof dir, "%s/info_bad", th_tmpdir());
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char src[700];
    snprintf(src, sizeof src, "%s/llama_mha/model.safetensors", th_fixtures());
    struct {
        const char *what, *expect;
    } cases[] = { { "truncated", "truncated" },
                  { "lying shape", "offsets span" },
                  { "missing", "missing" },
                  { "extra", "not part of the model" },
                  { "wrong shape", "config.json implies" } };
    for (int i = 0; i < 5; i++) {
        th_sh("rm -rf %s && cp -r %s/llama_mha %s", dir, th_fixtures(), dir);
        int ok = 1;
        if (i == 0) ok = th_truncated_copy(src, path, 1000);
        if (i == 1) ok = patch_bytes(path, "\"shape\":[32,32]", "\"shape\":[32,33]", 4096);
        if (i == 2) ok = rewrite_tensors(src, path, "model.norm.weight", NULL);
        if (i == 3) ok = rewrite_tensors(src, path, NULL, "model.rotary_emb.inv_freq");
        if (i == 4) {
            peft_config c;
            snprintf(src, sizeof src, "%s/config.json", dir);
            ok = peft_config_load(&c, src) == PEFT_OK;
            th_sh("sed -i 's/\"intermediate_size\": 64/\"intermediate_size\": 48/' %s", src);
        }
        REQUIRE(ok, "setup %s", cases[i].what);
        CHECK(th_run_peft(out, sizeof out, "info %s", dir) == 1 && strstr(out, cases[i].expect) &&
              strstr(out, "model.safetensors"),
              "info on %s weights: %s", cases[i].what, out);
    }
    /* dimensions near 2^31: refused, not a negative parameter count */
    th_sh("rm -rf %s && cp -r %s/llama_mha %s && sed -i 's/\"intermediate_size\": 64/\"intermediate_size\": "
       "2147483000/' %s/config.json",
       dir, th_fixtures(), dir, dir);
    CHECK(th_run_peft(out, sizeof out, "info %s", dir) == 1 && strstr(out, "implausible") &&
          !strstr(out, "parameters       -"),
          "info on huge dimensions: %s", out);
}

/* Disk full (issue 14): on a small tmpfs (where this machine lets the test
   mount one; skipped otherwise), merge, quantize, export (PEFT folder and
   GGUF) and a training run's final save fail with exit 1 and "No space left
   on device", leave the previous good folders byte-identical, and leave no
   partial file or folder (no .tmp, no .old) behind. */
static void disk_full_body(const char *mnt) {
    static char out[1 << 16];
    char lora[512], base[600], snap[2][600], ids[600];
    snprintf(lora, sizeof lora, "%s/df_lora", th_tmpdir());
    snprintf(base, sizeof base, "%s/llama_mha", th_fixtures());
    snprintf(ids, sizeof ids, "%s/df_ids.txt", th_tmpdir());
    FILE *f = fopen(ids, "w");
    if (!f) { CHECK(0, "ids"); return; }
    for (int i = 0; i < 400; i++) fprintf(f, "%d ", (i * 7) % 23);
    fclose(f);
    const char *lflags = "--method lora --lora-targets all-linear --lora-r 16 --batch 2 --seq 16";
    CHECK(th_run_peft(out, sizeof out, "train --model %s --data %s %s --steps 2 --out %s", base, ids, lflags,
                      lora) == 0,
          "lora: %s", out);
    /* the good outputs, with room to spare; merged and q4 hold another model (config.json differs from
       the one the failing command would write: a config written before the weights would show) */
    CHECK(th_run_peft(out, sizeof out, "merge --model %s/llama_gqa --adapter %s/peft_lora_qv --out %s/merged",
              th_fixtures(), th_fixtures(), mnt) == 0,
          "merge: %s", out);
    CHECK(th_run_peft(out, sizeof out, "quantize --model %s --quant fp4 --out %s/q4", base, mnt) == 0,
          "quantize: %s", out);
    CHECK(th_run_peft(out, sizeof out, "export --model %s --adapter %s --format peft --out %s/exported", base,
                      lora, mnt) == 0,
          "export: %s", out);
    CHECK(th_run_peft(out, sizeof out, "export --model %s --adapter %s --format gguf --out %s/a.gguf", base,
                      lora, mnt) == 0,
          "gguf: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --model %s --data %s %s --steps 4 --save-every 2 --out %s/run",
                      base, ids, lflags, mnt) == 0,
          "train: %s", out);
    /* what must not change: every file but the run's log, settings and plot (rewritten on resume) */
    const char *list = "find . -type f ! -name filler ! -name log.jsonl ! -name train_config.json ! -name "
                       "loss.svg | sort";
    for (int k = 0; k < 2; k++) snprintf(snap[k], sizeof snap[k], "%s/df_snapshot_%d", th_tmpdir(), k);
    th_sh("cd %s && %s | xargs md5sum > %s", mnt, list, snap[0]);
    /* fill the disk, then free 12 KB: small files fit, no weights do */
    th_sh("dd if=/dev/zero of=%s/filler bs=4096 > /dev/null 2>&1; truncate -s -12288 %s/filler", mnt, mnt);
    char cmd[5][2400];
    snprintf(cmd[0], sizeof cmd[0], "merge --model %s --adapter %s --out %s/merged", base, lora, mnt);
    snprintf(cmd[1], sizeof cmd[1], "quantize --model %s --quant nf4 --double-quant --out %s/q4", base, mnt);
    snprintf(cmd[2], sizeof cmd[2], "export --model %s --adapter %s --format peft --out %s/exported", base,
             lora, mnt);
    snprintf(cmd[3], sizeof cmd[3], "export --model %s --adapter %s --format gguf --out %s/a.gguf", base,
             lora, mnt);
    /* the run is finished at 4 steps (a resume would do nothing): 6 steps make it train and save again */
    snprintf(cmd[4], sizeof cmd[4], "train --resume %s/run --max-steps 6", mnt);
    for (int i = 0; i < 5; i++)
        CHECK(th_run_peft(out, sizeof out, "%s", cmd[i]) == 1 && strstr(out, "No space left on device"),
              "%s on a full disk: %s", cmd[i], out);
    th_sh("cd %s && %s | xargs md5sum > %s", mnt, list, snap[1]);
    CHECK(same_file(snap[0], snap[1]), "a failed write changed or added files (see %s vs %s)", snap[0],
          snap[1]);
    th_sh("cd %s && find . -name '*.tmp' -o -name '*.old' > %s/df_leftovers", mnt, th_tmpdir());
    snprintf(snap[0], sizeof snap[0], "%s/df_leftovers", th_tmpdir());
    unsigned char *d;
    size_t n = 1;
    CHECK(peft_read_file(snap[0], &d, &n) == PEFT_OK && n == 0, "partial files left: %.*s", (int)n,
          n ? (char *)d : "");
    if (n || d) free(d);
}

TEST(test_cli_disk_full) {
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char mnt[512], cmd[1200];
    snprintf(mnt, sizeof mnt, "%s/full_disk", th_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && mount -t tmpfs -o size=1m tmpfs %s > /dev/null 2>&1", mnt, mnt);
    if (geteuid() != 0 || system(cmd) != 0) SKIP("cannot mount a small tmpfs here (needs root)");
    disk_full_body(mnt);
    snprintf(cmd, sizeof cmd, "umount %s", mnt);
    CHECK(system(cmd) == 0, "umount %s", mnt);
}

/* The acceptance run of a SmolLM2-style folder (ChatML tokenizer, eos_token
   <|im_end|> = 2 in tokenizer_config.json, tests/fixtures/chat/smol): `peft train`
   on 4 Alpaca records until memorised, then `peft generate --alpaca` on a training
   prompt answers and stops at <|im_end|> (the text-guessed <|endoftext|> = 0 never
   stops it). The same records as chat data ({"messages"}, SmolLM2's template with
   its default system message): `generate --chat` answers and stops likewise. */
TEST(test_cli_trained_model_stops_at_eos) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char dir[512], cmd[2400];
    snprintf(dir, sizeof dir, "%s/cli_smol", th_tmpdir());
    snprintf(cmd, sizeof cmd,
             "rm -rf %s && mkdir -p %s/smol && cp %s/chat/smol/* %s/smol/ && cp %s/hf_tok/gpt2.json "
             "%s/smol/tokenizer.json",
             dir, dir, th_fixtures(), dir, th_fixtures(), dir);
    REQUIRE(system(cmd) == 0, "setup");
    static const char *const q[4][2] = { { "What is the capital of France?", "Paris." },
                                         { "Name a primary colour.", "Blue." },
                                         { "Say hello.", "Hello!" },
                                         { "Who wrote Hamlet?", "Shakespeare." } };
    char chat[1024] = "";
    for (int i = 0; i < 4; i++)
        snprintf(chat + strlen(chat), sizeof chat - strlen(chat),
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}, {\"role\": \"assistant\", "
                 "\"content\": \"%s\"}]}\n",
                 q[i][0], q[i][1]);
    const char *chat_path = th_tmp_text("smol_chat.jsonl", chat);
    char data0[600];
    snprintf(data0, sizeof data0, "%s/smol/data.json", dir);
    for (int mode = 0; mode < 2; mode++) {               /* 0: Alpaca records, 1: the same as chat data */
        CHECK(th_run_peft(out, sizeof out,
                  "train --model %s/smol --data %s --method full --lr 1e-2 --max-steps 150 --batch 4 "
                  "--schedule constant --out %s/run%d",
                  dir, mode ? chat_path : data0, dir, mode) == 0,
              "train: %s", out);
        for (int i = 0; i < (mode ? 4 : 2); i++) {
            const char *prompt = mode ? q[i][0] : i ? "Say hello." : "What is the capital of France?";
            const char *want = mode ? q[i][1] : i ? "Hello!" : "Paris.";
            const char *how = mode ? "--chat" : "--alpaca --prompt";
            CHECK(th_run_peft(out, sizeof out,
                      "generate --model %s/run%d --tokenizer %s/smol/tokenizer.json %s \"%s\" --max-new 24",
                      dir, mode, dir, how, prompt) == 0 &&
                      !strncmp(out, want, strlen(want)) && out[strlen(want)] == '\n',
                  "%s: %s", prompt, out);
            CHECK(th_run_peft(out, sizeof out,
                      "generate --model %s/run%d --tokenizer %s/smol/tokenizer.json %s \"%s\" --max-new 24 "
                      "--print-ids",
                      dir, mode, dir, how, prompt) == 0,
                  "generate: %s", out);
            int ids[32], n = 0;
            for (char *p = out, *end; n < 32; p = end) {
                long v = strtol(p, &end, 10);
                if (end == p) break;
                ids[n++] = (int)v;
            }
            int early = 0;
            for (int k = 0; k + 1 < n; k++) early |= ids[k] == 2 || ids[k] == 0;
            CHECK(n >= 2 && n < 24 && ids[n - 1] == 2 && !early,
                  "%s: the ids end at <|im_end|> (2), once: %s", prompt, out);
        }
    }
    /* generation_config.json: max_new_tokens is --max-new's default, a key without effect is named,
       and the second id of an eos_token_id list stops generation as the first does */
    char gpath[700];
    snprintf(gpath, sizeof gpath, "%s/smol/generation_config.json", dir);
    FILE *g = fopen(gpath, "w");
    REQUIRE(g, "write %s", gpath);
    fputs("{\"eos_token_id\": 2, \"max_new_tokens\": 3, \"min_new_tokens\": 1}", g);
    fclose(g);
    CHECK(th_run_peft(out, sizeof out, "generate --model %s/smol --tokens 5,6,7 --print-ids", dir) == 0 &&
              strstr(out, "min_new_tokens"),
          "generation_config.json warning: %s", out);
    char *last = strrchr(out, '\n');
    while (last && last > out && last[-1] != '\n') last--;
    int gids[8], gn = 0;
    for (char *p = last ? last : out, *end; gn < 8; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        gids[gn++] = (int)v;
    }
    CHECK(gn == 3 && gids[0] != 2, "max_new_tokens 3: %d ids (%s)", gn, out);
    g = fopen(gpath, "w");
    fprintf(g, "{\"eos_token_id\": [2, %d]}", gn ? gids[0] : 5);
    fclose(g);
    CHECK(th_run_peft(out, sizeof out, "generate --model %s/smol --tokens 5,6,7 --print-ids --max-new 8",
                      dir) == 0 &&
                  gn && atoi(out) == gids[0] && !strchr(out, ' '),
          "the second eos id stops: %s", out);
}

/* peft --version prints the header's version macros. */
TEST(test_cli_version) {
    static char out[4096];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char num[32], want[64];
    snprintf(num, sizeof num, "%d.%d.%d", PEFT_VERSION_MAJOR, PEFT_VERSION_MINOR, PEFT_VERSION_PATCH);
    CHECK(!strcmp(PEFT_VERSION_STRING, num), "PEFT_VERSION_STRING %s, macros %s", PEFT_VERSION_STRING, num);
    snprintf(want, sizeof want, "peft %s\n", num);
    CHECK(th_run_peft(out, sizeof out, "--version") == 0 && !strcmp(out, want), "--version: %s", out);
}

/* One set of training defaults: `peft train --help` prints the values of
   peft_trainer_defaults(), and a run given none of them writes exactly
   those into train_config.json (every one, the AdamW betas and epsilon
   included), so a C program reproduces the run from the same struct. */
TEST(test_cli_train_defaults) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    peft_trainer_opts d = peft_trainer_defaults();
    const char *sched = d.schedule == PEFT_SCHED_COSINE   ? "cosine"
                        : d.schedule == PEFT_SCHED_LINEAR ? "linear"
                                                          : "constant";
    struct { const char *key; double value; } want[] = {
        { "lr", d.lr }, { "min_lr", d.min_lr }, { "warmup", d.warmup_steps },
        { "weight_decay", d.weight_decay },
        { "max_grad_norm", d.max_grad_norm }, { "grad_accum", d.grad_accum }, { "adam_beta1", d.beta1 },
        { "adam_beta2", d.beta2 }, { "adam_epsilon", d.eps } };
    int n = (int)(sizeof want / sizeof want[0]);
    REQUIRE(th_run_peft(out, sizeof out, "train --help") == 0, "train --help");
    char item[96];
    snprintf(item, sizeof item, "schedule %s", sched);
    CHECK(strstr(out, item), "--help lacks \"%s\"", item);
    for (int i = 0; i < n; i++) {
        snprintf(item, sizeof item, "%s %g", want[i].key, want[i].value);
        CHECK(strstr(out, item), "--help lacks \"%s\"", item);
    }
    char data[512], dir[512], cfg[600];
    snprintf(data, sizeof data, "%s/defaults_ids.txt", th_tmpdir());
    FILE *f = fopen(data, "w");
    REQUIRE(f, "%s", data);
    for (int i = 0; i < 100; i++) fprintf(f, "%d ", (i * 5) % 19);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/defaults_run", th_tmpdir());
    REQUIRE(th_run_peft(out, sizeof out,
                        "train --model %s/llama_mha --data %s --steps 2 --batch 2 --seq 8 --out %s",
                        th_fixtures(), data, dir) == 0,
            "train: %s", out);
    snprintf(cfg, sizeof cfg, "%s/train_config.json", dir);
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, cfg));
    const peft_json *s = peft_json_get(j, "schedule");
    CHECK(s && s->type == PEFT_JSON_STRING && !strcmp(s->string, sched),
          "train_config.json schedule is not %s", sched);
    for (int i = 0; i < n; i++) {
        const peft_json *v = peft_json_get(j, want[i].key);
        CHECK(v && v->type == PEFT_JSON_NUMBER && (float)v->number == (float)want[i].value,
              "train_config.json %s: %g, the library's default %g", want[i].key, v ? v->number : NAN,
              want[i].value);
    }
    peft_json_free(j);
}

/* bench --data: the batches are the file's examples read as train reads them (the folder's
   tokenizer, prompts masked, padded to the longest): the padded length and the targets with
   loss it reports equal those of peft_dataset_load + peft_dataset_batch here; bad uses refused */
TEST(test_cli_bench_data) {
    static char out[1 << 16];
    FILE *probe = fopen(bin(), "rb");
    if (!probe) SKIP("%s not built", bin());
    fclose(probe);
    char model[512], tokp[700];
    snprintf(model, sizeof model, "%s/bench_data_model", th_tmpdir());
    make_tok_model(model);
    const char *data = th_tmp_text("bench_data.json",
                                   "[{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"},\n"
                                   " {\"instruction\": \"Add the numbers.\", \"input\": \"2 and 3\", "
                                   "\"output\": \"2 + 3 = 5, which is five.\"},\n"
                                   " {\"instruction\": \"Name a colour.\", \"input\": \"\", "
                                   "\"output\": \"blue\"}]");
    /* the expected batch: all three examples in one batch of 3 (every step the same) */
    snprintf(tokp, sizeof tokp, "%s/tokenizer.json", model);
    peft_tokenizer tok;
    REQUIRE_OK(peft_tokenizer_load(&tok, tokp, 800));
    peft_dataset ds;
    REQUIRE_OK(peft_dataset_load(&ds, data, &tok, 200 + 1));
    int idx[3] = { 0, 1, 2 }, tk[3 * 200], tg[3 * 200], targets = 0;
    int L = peft_dataset_batch(&ds, idx, 3, 200, 0, tk, tg);
    for (int i = 0; i < 3 * L; i++) targets += tg[i] != -100;
    peft_dataset_free(&ds);
    peft_tokenizer_free(&tok);
    char want[128];
    snprintf(want, sizeof want, "padded to %d tokens, %d targets with loss", L, targets);
    CHECK(L > 40 && targets > 3, "the fixture batch: %d tokens, %d targets", L, targets);
    CHECK(th_run_peft(out, sizeof out,
                      "bench --model %s --data %s --method lora --batch 3 --seq 200 --steps 2 --threads 1",
                      model, data) == 0 &&
                  strstr(out, "3 examples (0 cut to --seq, 0 dropped: no target within --seq)") &&
                  strstr(out, want) &&
                  strstr(out, "batch 3 x seq "),
          "bench --data (want '%s'): %s", want, out);
    snprintf(want, sizeof want, "batch 3 x seq %d,", L);
    CHECK(strstr(out, want) != NULL, "bench --data reports the padded length as seq: %s", out);
    /* a --seq that leaves one example without a target: the data line counts it */
    int seq1 = 0;
    for (int T = 4; T < 200 && !seq1; T++) {
        REQUIRE_OK(peft_tokenizer_load(&tok, tokp, 800));
        if (peft_dataset_load(&ds, data, &tok, T + 1) == PEFT_OK) {
            if (ds.n_dropped == 1) seq1 = T;
            peft_dataset_free(&ds);
        }
        peft_tokenizer_free(&tok);
    }
    REQUIRE(seq1 > 0, "no --seq drops exactly one of the fixture's examples");
    CHECK(th_run_peft(out, sizeof out,
                      "bench --model %s --data %s --method lora --batch 2 --seq %d --steps 1 --threads 1",
                      model, data, seq1) == 0 &&
                  strstr(out, "2 examples (") && strstr(out, ", 1 dropped: no target within --seq)"),
          "bench --data --seq %d: %s", seq1, out);
    /* --seq shorter than every prompt: refused as train refuses it, naming the file */
    CHECK(th_run_peft(out, sizeof out,
                      "bench --model %s --data %s --method lora --batch 2 --seq 8 --steps 1 --threads 1",
                      model, data) == 1 &&
                  strstr(out, "bench_data.json: all 3 examples dropped"),
          "bench --data with every target past --seq: %s", out);
    CHECK(th_run_peft(out, sizeof out, "bench --model %s --data /no/such.json --steps 1", model) == 1 &&
                  strstr(out, "/no/such.json"),
          "bench --data missing file: %s", out);
    CHECK(th_run_peft(out, sizeof out, "bench --gemm --preset tiny --data %s", data) == 2 &&
                  strstr(out, "--gemm takes no --data"),
          "bench --gemm --data: %s", out);
}
