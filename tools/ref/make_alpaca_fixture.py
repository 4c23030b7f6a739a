#!/usr/bin/env python3
"""Writes tests/fixtures/alpaca/: a small Alpaca file (records with and
without input, unicode, newlines) and the token ids + labels that the
Stanford Alpaca recipe (train.py: prompt tokenized on its own and masked,
output + eos_token appended) gives on the LLaMA-2 tokenizer.model from
../shared/data/llama2c, with BOS as the recipe's LLaMA tokenizer added it:
  expected_sp.jsonl  the tokenizer the recipe ran with in 2023: transformers'
                     SentencePiece-backed LlamaTokenizer, i.e. sentencepiece
                     encode() of the text, "</s>" parsed as the EOS token
  expected_hf.jsonl  transformers 5's LlamaTokenizer (tokenizers BPE over a
                     tokenizer.json converted from the same model)
The two differ on runs of spaces (merge ranks vs piece scores: "▁▁▁▁" + "b"
against "▁▁▁" + "▁b"), which record 4 shows.

Run:  python3 tools/ref/make_alpaca_fixture.py   (needs protobuf for the conversion)
"""
import json, os, shutil, tempfile
from transformers import LlamaTokenizer
import sentencepiece as spm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "..", "shared", "data", "llama2c", "tokenizer.model")
OUT = os.path.join(ROOT, "tests", "fixtures", "alpaca")

# The two templates of stanford_alpaca/train.py (PROMPT_DICT), verbatim facts.
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")

RECORDS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well."},
    {"instruction": "Translate the sentence into French.", "input": "The cat sleeps on the mat.",
     "output": "Le chat dort sur le tapis."},
    {"instruction": "What is 17 + 25?", "input": "", "output": "17 + 25 = 42"},
    {"instruction": "Rewrite in the past tense.", "input": "Lily runs to the café — she is happy 😀",
     "output": "Lily ran to the café — she was happy 😀"},
    {"instruction": "Write a Python function that doubles x.", "input": "",
     "output": "def double(x):\n    return 2 * x"},
    {"instruction": "Name the capital of Japan.", "input": "", "output": "東京 (Tokyo)."},
]

def main():
    tmp = tempfile.mkdtemp()
    shutil.copy(MODEL, os.path.join(tmp, "tokenizer.model"))
    tok = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "data.json"), "w", encoding="utf-8") as f:
        json.dump(RECORDS, f, ensure_ascii=False, indent=1)
    sp = spm.SentencePieceProcessor(model_file=MODEL)
    sp_tok = lambda text: [1] + sp.encode(text.replace("</s>", "")) + ([2] if text.endswith("</s>") else [])
    hf_tok = lambda text: tok(text).input_ids
    for name, encode in (("expected_sp.jsonl", sp_tok), ("expected_hf.jsonl", hf_tok)):
        with open(os.path.join(OUT, name), "w") as f:
            for r in RECORDS:
                source = (PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT).format_map(r)
                target = f"{r['output']}{tok.eos_token}"
                ids = encode(source + target)
                source_len = len(encode(source))
                labels = [-100] * source_len + ids[source_len:]
                f.write(json.dumps({"ids": ids, "labels": labels}) + "\n")
    shutil.rmtree(tmp)
    print("wrote", OUT)

if __name__ == "__main__":
    main()
