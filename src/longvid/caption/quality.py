"""Quality gates on one caption, and its length in T5 tokens.

* `clean_boilerplate`: an opening like "The video shows", "In this video, we see" is cut off and the
  first letter of what is left capitalised (Open-Sora's --text_remove_prefix, Open-Sora-Plan v1.3's
  list). Only cleaned captions change case; a caption without boilerplate is left as it is.
* `loop_start`: a repetition loop (Qwen-VL's known failure: the same phrase until max_tokens): four or
  more back-to-back repeats of a 1..24-word phrase (five of one word), a run of one character
  (16+), or, in a long answer, under 40 % distinct word trigrams. Returns where the loop starts, so
  the sensible part before it can be kept.
* `assess`: all gates at once -> `Verdict` (cleaned text, flags, whether a retry may help).
* `t5_tokens`: T5 tokens of a caption. Counted with the T5 tokenizer when its files are in the local
  Hugging Face cache (nothing is downloaded); otherwise ESTIMATED (the stored field says `t5_est`):
  ceil(1.3 x words + punctuation marks) + 1 (the closing </s>). T5's 32k sentencepiece vocabulary
  keeps most English words whole and splits rarer ones, ~1.3 pieces per word on caption text;
  punctuation marks are pieces of their own.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_SUBJECT = r"(?:the|this|a|our)\s+(?:short\s+)?(?:video|clip|footage|animation|scene|sequence|film|image|frames?)" \
           r"(?:\s+clip)?"
_VERB = (r"(?:(?:show|depict|feature|capture|present|showcase|display|illustrate|portray|highlight|demonstrate|"
         r"contain)s?|begins with|opens with|starts with|is of|is showing|appears to show)")
BOILERPLATE = [
    re.compile(rf"^{_SUBJECT}\s+{_VERB}(?:\s+that)?[\s,:]+", re.I),
    re.compile(rf"^{_SUBJECT}\s+is\s+(?=(?:a|an)\b)", re.I),  # "The video is a close-up of" -> "A close-up of"
    re.compile(rf"^(?:in|throughout|during)\s+{_SUBJECT}[\s,]+(?:we\s+(?:can\s+)?see\s+|we\s+observe\s+|"
               rf"(?:it\s+)?(?:shows|depicts)\s+)?", re.I),
    re.compile(r"^(?:this\s+is\s+)?(?:a\s+)?(?:video|clip|footage)\s+(?:of|showing)\s+", re.I),
    re.compile(r"^(?:here\s+)?we\s+(?:can\s+)?see\s+", re.I),
]
WORD = re.compile(r"[\w'’-]+")
PUNCT = re.compile(r"[^\w\s'’-]")


def clean_boilerplate(text: str) -> tuple[str, bool]:
    """`text` without a boilerplate opening (repeatedly: "In this video, we see" goes whole), and
    whether one was cut. The rest keeps its words; its first letter is capitalised."""
    out = text.strip()
    for _ in range(3):  # bounded: each pass cuts one opening
        for pattern in BOILERPLATE:
            cut = pattern.sub("", out, count=1)
            if cut != out:
                out = cut.lstrip(" ,:;-")
                break
        else:
            break
    if out == text.strip():
        return text.strip(), False
    return (out[:1].upper() + out[1:]) if out else "", True


def loop_start(text: str) -> int | None:
    """Character offset where a repetition loop starts (see the module doc), or None."""
    m = re.search(r"(.)\1{15,}", text)
    if m and not m.group(1).isspace():
        return m.start()
    words = [(w.group().lower(), w.start()) for w in WORD.finditer(text)]
    n = len(words)
    for p in range(1, min(24, n // 4) + 1):
        need = (5 if p == 1 else 4) * p - p  # equal pairs (i, i+p) in a row for that many repeats
        run = 0
        for i in range(n - p):
            run = run + 1 if words[i][0] == words[i + p][0] else 0
            if run >= need:
                return words[i - run + 1 + p][1]  # keep the first occurrence of the phrase
    if n >= 60:
        grams = [tuple(w for w, _ in words[i:i + 3]) for i in range(n - 2)]
        if len(set(grams)) < 0.4 * len(grams):
            return 0
    return None


@functools.lru_cache(maxsize=1)
def _t5_tokenizer():
    """The T5 tokenizer from the local Hugging Face cache, or None (never downloads; transformers is
    imported only when a cached copy exists, as importing it costs seconds)."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
               / "hub")
    for repo in ("google--t5-v1_1-xxl", "THUDM--CogVideoX-2b", "THUDM--CogVideoX-5b"):
        if (hub / f"models--{repo}").is_dir():
            try:
                from transformers import AutoTokenizer

                sub = {"subfolder": "tokenizer"} if "CogVideoX" in repo else {}
                return AutoTokenizer.from_pretrained(repo.replace("--", "/"), local_files_only=True, **sub)
            except Exception:  # an incomplete cache: estimate instead
                continue
    return None


def t5_estimate(text: str) -> int:
    """ceil(1.3 x words + punctuation marks) + 1 (see the module doc); 0 for an empty text."""
    if not text.strip():
        return 0
    return math.ceil(1.3 * len(WORD.findall(text)) + len(PUNCT.findall(text))) + 1


def t5_tokens(text: str) -> tuple[int, bool]:
    """(T5 tokens of `text`, whether counted exactly); an estimate without a cached tokenizer."""
    tok = _t5_tokenizer()
    if tok is None:
        return t5_estimate(text), False
    return len(tok(text)["input_ids"]), True


@dataclass
class Verdict:
    text: str  # cleaned (boilerplate cut, a loop cut off)
    flags: list[str] = field(default_factory=list)  # empty, truncated, repetition, boilerplate, over_t5
    words: int = 0
    t5: int = 0
    t5_exact: bool = False

    @property
    def bad(self) -> bool:
        """Worth another try with sampling: empty, looping or cut at max_tokens."""
        return bool({"empty", "repetition", "truncated"} & set(self.flags))


def assess(text: str | None, finish_reason: str | None, max_text_tokens: int) -> Verdict:
    """All gates on one answer. finish_reason "length" is `truncated`; a loop is cut off where it
    starts (flag `repetition`); a boilerplate opening is cleaned (flag `boilerplate`)."""
    flags = []
    text = (text or "").strip()
    if finish_reason == "length":
        flags.append("truncated")
    start = loop_start(text)
    if start is not None:
        flags.append("repetition")
        text = text[:start].rstrip(" ,;:-")
    text, cleaned = clean_boilerplate(text)
    if cleaned:
        flags.append("boilerplate")
    if not text:
        flags.append("empty")
    t5, exact = t5_tokens(text)
    if t5 > max_text_tokens:
        flags.append("over_t5")
    return Verdict(text, flags, len(WORD.findall(text)), t5, exact)
