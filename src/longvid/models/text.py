"""Frozen text encoders: prompts -> embeddings (B, max_length, D) in float32 (seed-analysis §4).

As the seed's FrozenT5Embedder: tokens padded to `max_length`, truncated beyond it, and the encoder
run on the token ids alone, without an attention mask (pad positions get embeddings too, and the DiT
was trained on them). Unlike the seed, which printed a count that was only meaningful for one prompt
at a time, truncation is counted per prompt and logged per batch; the running totals are kept on the
encoder (`prompts_seen`, `prompts_truncated`, `tokens_truncated`) for reports.

* `T5TextEncoder`: T5-v1.1-XXL (4096-d) from a local directory (the SAT `t5-v1_1-xxl` folder, or a
  CogVideoX diffusers directory with tokenizer/ and text_encoder/).
* `TinyTextEncoder`: a tokenizer that needs no files — bytes (ByT5) or hashed words — and a small T5
  encoder initialised from a seed, so every machine computes the same embeddings without a download.
  Words put each word of a prompt at one token, as T5's own tokenizer mostly does; with bytes, a
  longer colour word shifts every later word, so a small DiT must learn to parse spelling first.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import torch
from torch import nn

from longvid.io import InputError

log = logging.getLogger(__name__)


class TextEncoder(nn.Module):
    def __init__(self, tokenizer, model: nn.Module, max_length: int, name: str):
        super().__init__()
        if max_length <= 0:
            raise InputError(f"text.max_length={max_length}: must be > 0")
        self.tokenizer, self.model, self.max_length, self.name = tokenizer, model, max_length, name
        self.model.eval().requires_grad_(False)
        self.prompts_seen = self.prompts_truncated = self.tokens_truncated = 0

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def encoder_id(self) -> str:
        return f"{self.name}:len{self.max_length}"

    def truncated_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt loses to `max_length` (0 when it fits)."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        return [max(0, n - self.max_length) for n in lengths]

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        prompts = list(prompts)
        lost = self.truncated_tokens(prompts)
        cut = [n for n in lost if n]
        self.prompts_seen += len(prompts)
        self.prompts_truncated += len(cut)
        self.tokens_truncated += sum(cut)
        if cut:
            log.warning("text encoder %s: %d of %d prompts truncated to %d tokens (%d tokens dropped, "
                        "up to %d from one prompt)", self.name, len(cut), len(prompts), self.max_length,
                        sum(cut), max(cut))
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")["input_ids"]
        device = next(self.model.parameters()).device
        return self.model(input_ids=ids.to(device)).last_hidden_state.float()


class T5TextEncoder(TextEncoder):
    def __init__(self, path: str | Path, max_length: int = 226, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, T5EncoderModel

        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: T5 text encoder directory does not exist")
        nested = (path / "text_encoder" / "config.json").is_file()
        model_dir, tok_dir = (path / "text_encoder", path / "tokenizer") if nested else (path, path)
        if not (model_dir / "config.json").is_file():
            raise InputError(f"{path}: no config.json here or in text_encoder/ "
                             "(expected a T5 encoder directory)")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        model = T5EncoderModel.from_pretrained(model_dir, dtype=dtype)
        super().__init__(tokenizer, model, max_length, f"t5:{path.resolve()}:{dtype}")


class WordTokenizer:
    """Lower-cased words and punctuation marks, each hashed (CRC-32, the same on every machine) into
    `vocab_size` ids; 0 pads, 1 ends a prompt (T5's ids). Called like a transformers tokenizer, for
    the arguments `TextEncoder` uses."""

    WORD = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab_size: int = 4096):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def ids(self, prompt: str) -> list[int]:
        words = self.WORD.findall(prompt.lower())
        return [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words] + [1]

    def __call__(self, prompts: list[str], padding=None, max_length: int | None = None, truncation: bool = False,
                 return_tensors: str | None = None) -> dict:
        out = [self.ids(p) for p in prompts]
        if truncation:
            out = [ids[:max_length] for ids in out]
        if padding == "max_length":
            out = [ids + [0] * (max_length - len(ids)) for ids in out]
        return {"input_ids": torch.tensor(out) if return_tensors == "pt" else out}


class TinyTextEncoder(TextEncoder):
    def __init__(self, dim: int = 32, max_length: int = 16, num_layers: int = 2, num_heads: int = 4,
                 seed: int = 0, tokenizer: str = "bytes"):
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        if dim % num_heads:
            raise InputError(f"text.dim={dim}: must be divisible by text.num_heads={num_heads}")
        if tokenizer not in ("bytes", "words"):
            raise InputError(f"text.tokenizer={tokenizer!r}: must be bytes or words")
        kind, tokenizer = tokenizer, ByT5Tokenizer() if tokenizer == "bytes" else WordTokenizer()
        # len(tokenizer) is 384 for ByT5 (256 bytes + 3 specials + 125 sentinel ids), more than its
        # vocab_size says.
        cfg = T5Config(vocab_size=len(tokenizer), d_model=dim, d_kv=dim // num_heads, d_ff=2 * dim,
                       num_layers=num_layers, num_heads=num_heads, feed_forward_proj="gated-gelu",
                       is_encoder_decoder=False, dropout_rate=0.0)
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = T5EncoderModel(cfg)
        words = "" if kind == "bytes" else ":words"  # byte encoders keep their id (and latent caches)
        super().__init__(tokenizer, model, max_length,
                         f"tiny-t5:d{dim}:l{num_layers}:h{num_heads}:seed{seed}{words}")
