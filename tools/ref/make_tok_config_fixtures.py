#!/usr/bin/env python3
"""Writes tests/fixtures/chat/tok_config/: the tokenizer_config.json and config.json keys
that real checkpoints carry, and what transformers makes of them.

  tokenizer_config.json  every key LlamaTokenizer checkpoints ship (add_bos_token false,
                         add_eos_token true, AddedToken-object eos_token, model_max_length,
                         padding_side, legacy, ...) for tests/fixtures/hf_tok/sp.json
  expected.jsonl         {"text", "ids"}: AutoTokenizer(folder)(text)["input_ids"] for the
                         first 40 strings of hf_tok/sp.jsonl. transformers 5 drops
                         add_bos_token/add_eos_token when tokenizer.json is present, so its
                         post_processor decides: BOS first, no EOS
  config.json            LlamaConfig(...).to_dict() of a tiny model: every key transformers
                         writes for LLaMA

Run:  python3 tools/ref/make_tok_config_fixtures.py
"""
import json, os, shutil, tempfile
import transformers
from transformers import AutoTokenizer, LlamaConfig

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(FIX, "chat", "tok_config")

TOKENIZER_CONFIG = {
    "add_bos_token": False,
    "add_eos_token": True,
    "added_tokens_decoder": {
        str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, c in enumerate(["<unk>", "<s>", "</s>"])
    },
    "additional_special_tokens": [],
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "__type": "AddedToken"},
    "extra_special_tokens": {},
    "legacy": False,
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "left",
    "sp_model_kwargs": {},
    "spaces_between_special_tokens": False,
    "tokenizer_class": "LlamaTokenizer",
    "truncation_side": "right",
    "unk_token": "<unk>",
    "use_default_system_prompt": False,
}


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
    texts = [json.loads(l)["text"] for l in open(os.path.join(FIX, "hf_tok", "sp.jsonl"))][:40]
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(os.path.join(FIX, "hf_tok", "sp.json"), os.path.join(d, "tokenizer.json"))
        shutil.copy(os.path.join(OUT, "tokenizer_config.json"), d)
        tok = AutoTokenizer.from_pretrained(d)
        with open(os.path.join(OUT, "expected.jsonl"), "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t, "ids": tok(t)["input_ids"]}) + "\n")
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=700, max_position_embeddings=64,
                      architectures=["LlamaForCausalLM"])
    d = cfg.to_dict()
    assert "transformers_version" in d, "to_dict() writes transformers_version"
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)
    print("wrote", OUT, "with transformers", transformers.__version__)


if __name__ == "__main__":
    main()
