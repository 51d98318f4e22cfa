"""A real CLIP BPE tokenizer (vocab.json + merges.txt) learned from a word list, written to a folder.

The tiny models need a tokenizer that loads with `CLIPTokenizer.from_pretrained(folder)` offline, like any hub
tokenizer. Its vocabulary holds CLIP's 256 byte-level symbols (each also with the end-of-word marker `</w>`, so
any text still tokenizes) plus merges learned by plain BPE over the given words until each is one token.

Note: in transformers 5, `CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores both files; always
load the written folder with `from_pretrained`.

Example:
    >>> folder = write_clip_tokenizer(["a", "red", "circle"], "/tmp/tok")
    >>> tok = CLIPTokenizer.from_pretrained(folder)
    >>> tok.convert_ids_to_tokens(tok("a red circle").input_ids)
    ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>']
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # The GPT-2/CLIP reversible byte -> printable unicode map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair until every word is a single symbol."""
    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in set(words)}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segs.values()):
        pairs = Counter(p for s in segs.values() for p in zip(s, s[1:]))
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # ties broken deterministically
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out
    return merges


def write_clip_tokenizer(words: list[str], folder: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for a CLIPTokenizer over `words` into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = learn_merges([w.lower() for w in words])
    vocab_list += ["".join(m) for m in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder
