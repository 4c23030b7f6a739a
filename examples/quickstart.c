/* quickstart — the smallest useful program: load a Hugging Face LLaMA folder,
   attach LoRA, train a few steps on a token file, save a PEFT adapter.

     build/examples/quickstart MODEL_DIR TOKENS_FILE OUT_DIR

   Without arguments it runs on a random "tiny" model and made-up data, so it
   always shows something. The adapter folder loads in Hugging Face PEFT. */
#define PEFT_IMPLEMENTATION
#include "../peft.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    peft_model *m;
    peft_status s = argc > 1 ? peft_model_load(&m, argv[1]) : peft_model_from_preset(&m, "tiny", 1, 42);
    if (s != PEFT_OK) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }

    peft_method lora = peft_method_defaults(PEFT_LORA);      /* r 8, alpha 8, q_proj + v_proj */
    lora.lora_r = 16;
    lora.lora_alpha = 32;
    if (peft_attach(m, &lora) != PEFT_OK) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    printf("trainable: %lld of %lld parameters\n", (long long)peft_model_trainable_count(m),
           (long long)peft_model_base_count(m));

    int *ids, B = 4, T = 64;
    int64_t n;
    if (argc > 2) {
        if (peft_tokens_load(argv[2], m->cfg.vocab_size, &ids, &n) != PEFT_OK) {
            fprintf(stderr, "%s\n", peft_last_error());
            return 1;
        }
    } else {                                               /* a repeating pattern to learn */
        n = 4096;
        ids = malloc(sizeof(int) * n);
        for (int64_t i = 0; i < n; i++) ids[i] = (int)((i * 31) % 97);
    }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    peft_trainer *tr = peft_trainer_new(m, &o);
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    int *tok = malloc(sizeof(int) * B * T), *tgt = malloc(sizeof(int) * B * T);
    for (int step = 0; step < 20; step++) {
        float loss;
        peft_batch_sample(&rng, ids, n, B, T, tok, tgt);
        if (peft_trainer_step(tr, tok, tgt, B, T, &loss) != PEFT_OK) {
            fprintf(stderr, "%s\n", peft_last_error());
            return 1;
        }
        printf("step %2d  loss %.4f\n", step, loss);
    }
    const char *out = argc > 3 ? argv[3] : "quickstart-adapter";
    if (peft_adapter_save(m, out) != PEFT_OK) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    printf("saved %s/adapter_config.json and adapter_model.safetensors\n", out);
    peft_trainer_free(tr);
    peft_model_free(m);
    free(ids); free(tok); free(tgt);
    return 0;
}
