#!/usr/bin/env python3
"""The tokenizer.json form the hub's LLaMA-2 and TinyLlama checkpoints ship.

transformers 4.x (here 4.46.3, legacy=True) converts a sentencepiece
tokenizer.model into: normalizer Prepend("▁") + Replace(" " → "▁"), no
pre-tokenizer, merges ordered by the pieces' sentencepiece scores, decoder
Replace + ByteFallback + Fuse + Strip(1 left). transformers 5 writes a
Metaspace pre-tokenizer and orders merges by vocabulary id instead, which
is why make_hf_tokenizer_fixtures.py's LLaMA-2 file departs from
sentencepiece on runs of spaces and this one does not.

Writes
  tests/fixtures/hf_tok/sp_legacy.json(l)   the small sentencepiece model of
      sp.json, converted by transformers 4.46.3; ids from `tokenizers`
  build/ref/llama2-legacy-tokenizer.json + llama2-legacy-hf.jsonl (3.6 MB,
      not committed) from ../shared/data/llama2c/tokenizer.model; the test
      checks it against sentencepiece's ids where present.

Run in its own venv:
  python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install -r tools/ref/requirements-legacy.txt
  /tmp/tf4/bin/python tools/ref/make_hf_legacy_fixtures.py
"""
import json, os, shutil, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_tokenizer_fixtures as base      # the same strings, corpus and small model
from tokenizers import Tokenizer
from transformers import LlamaTokenizerFast


def convert(folder):
    LlamaTokenizerFast.from_pretrained(folder, from_slow=True, legacy=True).save_pretrained(os.path.join(folder, "out"))
    return Tokenizer.from_file(os.path.join(folder, "out", "tokenizer.json"))


def main():
    texts = [json.loads(l)["text"] for l in open(base.SP_STRINGS, encoding="utf-8")] + base.EXTRA
    tmp = tempfile.mkdtemp()
    base.train_small_sp(base.corpus(texts), tmp)
    tok = convert(tmp)
    assert tok.normalizer is not None and tok.pre_tokenizer is None, "not the legacy form"
    base.dump(tok, os.path.join(base.OUT, "sp_legacy.json"), os.path.join(base.OUT, "sp_legacy.jsonl"), texts, True)
    if os.path.exists(base.LLAMA2):
        d = os.path.join(tmp, "l2")
        os.makedirs(d)
        shutil.copy(base.LLAMA2, os.path.join(d, "tokenizer.model"))
        os.makedirs(base.BUILD, exist_ok=True)
        sp_texts = [json.loads(l)["text"] for l in open(base.SP_STRINGS, encoding="utf-8")]
        base.dump(convert(d), os.path.join(base.BUILD, "llama2-legacy-tokenizer.json"),
                  os.path.join(base.BUILD, "llama2-legacy-hf.jsonl"), sp_texts, True)
    shutil.rmtree(tmp)
    print("wrote sp_legacy.json,", len(texts), "strings")


if __name__ == "__main__":
    main()
