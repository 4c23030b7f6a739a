/* Test runner: every test of the suite, in reading order of peft.h. */
#define PEFT_IMPLEMENTATION
#include "harness.h"
#include <time.h>

#define TESTS(X) \
    X(test_gemm_shapes) X(test_parallel_flushes_denormals) X(test_fd_linear) X(test_fd_embedding) X(test_fd_rmsnorm) X(test_fd_rope) \
    X(test_fd_attention) X(test_fd_attention_prompts_excitor) X(test_attention_zero_gate_exact) X(test_fd_lora_linear) X(test_fd_bias_scale) X(test_fd_prompt_attend) X(test_fd_elementwise) X(test_fd_cross_entropy) X(test_fd_linear_cross_entropy) X(test_linear_cross_entropy_chunks) \
    X(test_backward_needs_scalar_and_skips_frozen) \
    X(test_threads_pool_chunks) X(test_threads_pool_late_thread) X(test_threads_gemm_identical) \
    X(test_threads_cpu_quota_parse) \
    X(test_threads_solo_on_busy_machine) \
    X(test_threads_solo_trial_steps) \
    X(test_config_fields) X(test_llama_mha_f32) X(test_llama_gqa_bf16_llama3_rope) X(test_llama_tied_f16_head_dim) \
    X(test_preset_param_counts) X(test_save_load_roundtrip) X(test_llama2c_stories260k) X(test_llama2c_ak42_versions) X(test_threads_deterministic) \
    X(test_adamw_matches_torch) X(test_paged_adamw_bit_identical) X(test_adamw_8bit_states) X(test_clip_matches_torch) X(test_schedules_match_transformers) \
    X(test_full_finetune_loss_falls) X(test_grad_accumulation_equals_big_batch) \
    X(test_frozen_params_have_no_grad) X(test_nan_loss_is_refused) \
    X(test_trainer_step_out_of_memory) \
    X(test_data_parallel_step) \
    X(test_qmatrix_data_parallel) \
    X(test_bf16_data_parallel) \
    X(test_peft_lora_qv) X(test_peft_lora_all_linear_rslora) X(test_peft_adaption_prompt) X(test_zero_init_every_method) \
    X(test_method_counts_llama7b) X(test_lora_merge_unmerge) X(test_v2_merge) X(test_fd_add_bias) X(test_methods_train_save_load) X(test_adapter_load_errors) X(test_roundtrip_adapters_load_in_peft) X(test_kv_cache_equals_full_forward) X(test_generate_matches_transformers_peft) X(test_checkpointing_same_gradients) X(test_threads_deterministic_gradients) X(test_threads_solo_same_gradients) X(test_backward_recycles_gradients) \
    X(test_ggml_type_table) X(test_ggml_dequantize_matches_gguf) X(test_ggml_quantize_matches_gguf) \
    X(test_qmatrix_linear_packs_like_floats) X(test_fd_qmatrix_lora_linear) \
    X(test_qmatrix_model_trains_like_floats) \
    X(test_bf16_dot_matches_f64) X(test_bf16_fallback_matches_f64) X(test_bf16_training_follows_fp32) \
    X(test_qmatrix_embedding_like_floats) \
    X(test_cli_precision_bf16) \
    X(test_cli_bench_data) \
    X(test_failed_adapter_load_leaves_model) \
    X(test_q4_codes_match_bnb) X(test_q4_bytes_match_bnb) X(test_q4_bits_per_parameter) X(test_blockwise8_matches_bnb) X(test_fd_q4_linear) X(test_q4_linear_packs_like_floats) X(test_bnb_folders_match_transformers) X(test_qlora_zero_init_and_vs_lora) \
    X(test_json_parse) X(test_tokenizer_llama2_matches_sentencepiece) X(test_hf_tokenizers_match_tokenizers) X(test_alpaca_dataset_matches_stanford_recipe) X(test_dataset_errors) X(test_f16_bf16) X(test_safetensors_roundtrip) X(test_safetensors_hostile) \
    X(test_model_load_errors) X(test_sharded_index) \
    X(test_bnb_quant_storage_bf16) \
    X(test_hostile_files) X(test_json_bom) X(test_safetensors_header_only) \
    X(test_cli_token_ids_and_folders) \
    X(test_cli_hostile_and_absurd) \
    X(test_cli_disk_full) \
    X(test_chat_templates_match_transformers) X(test_chat_template_errors) \
    X(test_eos_from_model_files) X(test_eos_lists_and_generation_config) \
    X(test_added_token_flags_match_tokenizers) \
    X(test_tok_config_keys_match_transformers) X(test_tok_config_unknown_and_refused_keys) \
    X(test_cli_unknown_config_keys_named) \
    X(test_cli_trained_model_stops_at_eos) \
    X(test_checkpointing_every_tensor_kind) \
    X(test_cli_version) \
    X(test_backend_registry) X(test_backend_dispatch_from_model_code) X(test_backend_grep_check) \
    X(test_registry_builtin_entries) \
    X(test_registry_toy_method) \
    X(test_registry_cli_and_readme) \
    X(test_cli_trial_resume_and_config) \
    X(test_cli_trial_messages) \
    X(test_cli_trial_resume_paths) \
    X(test_cli_trial_eval_holdout) \
    X(test_cli_trial_export_out) \
    X(test_cli_trial_cosmetics) \
    X(test_cli_train_defaults) \
    X(test_dataset_counts_cut_and_dropped) \
    X(test_adapter_keys_match_peft) X(test_adapter_keys_module_names) X(test_adapter_keys_refused_by_name) \
    X(test_adapter_keys_regex) X(test_adapter_keys_gguf) X(test_adapter_keys_cli_train) \
    X(test_adapter_keys_tensor_names) X(test_fd_replace_rows) X(test_adapter_keys_roundtrip_in_peft) \
    X(test_gguf_tiny_roundtrip) X(test_gguf_hostile) X(test_gguf_smollm2_logits) X(test_gguf_smollm2_tokenizer) X(test_gguf_cli) X(test_gguf_spm_tokenizer) \
    X(test_threads_cli_default) \
    X(test_gguf_smollm2_embedding_blocks) \
    X(test_fd_l2norm) X(test_fd_row_scale) X(test_fd_attention_chunked) X(test_fd_moe_route) X(test_fd_moe_experts) X(test_fd_moe_experts_lora) \
    X(test_llama4_moe_chunked_nope_gqa) X(test_llama4_interleaved_top2_tied) \
    X(test_llama4_preset_counts) X(test_llama4_save_load) X(test_llama4_bad_input) \
    X(test_llama4_lora_matches_peft) X(test_llama4_placements) X(test_llama4_refused_methods) \
    X(test_threads_bench_gemm_openblas_core) \
    X(test_llama4_routing_trace) X(test_example_moe_placement) X(test_llama4_bench_load_balance) \
    X(test_cli) X(test_train_alpaca_kill_resume) X(test_export_gguf) X(test_demo_quick) X(test_examples_run)

#define DECL(t) void t(void);
TESTS(DECL)
#define ENTRY(t) { #t, t },
static const struct { const char *name; void (*fn)(void); } all_tests[] = { TESTS(ENTRY) };

int main(int argc, char **argv) {
    int passed = 0, failed = 0, skipped = 0;
    size_t n_tests = sizeof all_tests / sizeof all_tests[0];
    /* a test listed twice would run twice and inflate the count: refuse the list */
    for (size_t i = 0; i < n_tests; i++)
        for (size_t j = i + 1; j < n_tests; j++)
            if (!strcmp(all_tests[i].name, all_tests[j].name)) {
                printf("FAIL  %s is listed twice in TESTS\n0 passed, 1 failed, 0 skipped\n", all_tests[i].name);
                return 1;
            }
    for (size_t i = 0; i < sizeof all_tests / sizeof all_tests[0]; i++) {
        if (argc > 1 && !strstr(all_tests[i].name, argv[1])) continue;
        memset(&th_cur, 0, sizeof th_cur);
        clock_t t0 = clock();
        all_tests[i].fn();
        double ms = 1000.0 * (double)(clock() - t0) / CLOCKS_PER_SEC;
        if (th_cur.failed) { failed++; printf("FAIL  %-48s (%d checks failed)\n", all_tests[i].name, th_cur.failed); }
        else if (th_cur.skipped) { skipped++; printf("skip  %-48s %s\n", all_tests[i].name, th_cur.skip_reason); }
        else { passed++; printf("ok    %-48s %7.0f ms cpu\n", all_tests[i].name, ms); }
        fflush(stdout);
    }
    if (!failed) th_tmpdir_remove();   /* a failed run keeps its files to look at */
    else if (th_tmpdir_used()) printf("scratch files kept in %s\n", th_tmpdir());
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
