"""A Qwen2-VL / Qwen2.5-VL checkpoint loaded with transformers, captioning clips in batches.

`LocalVLM(path, device, dtype).generate(clips, prompt, ...)` takes each clip's frames as RGB arrays
(longvid.caption.frames.prepare(..., encode=False): an even count, sides multiples of 28) and returns
one `Answer` per clip, like a chat-completions answer (content, finish_reason, usage).

Inputs are assembled here rather than by `AutoProcessor`: the Qwen2-VL processor and video processor
need torchvision, which CPU-only installs often lack, while the image processor does not. Each frame
goes through the checkpoint's own image processor (rescale, normalise, patchify, no resize: the frames
already have the model's size), whose patches repeat the frame over the temporal patch; a video patch
is frame 2k's and frame 2k+1's halves side by side in that temporal axis (grid t = frames / 2). The
prompt is Qwen's chat format with the video's `<|video_pad|>` tokens expanded to t*h*w/merge^2, and the
3-D positions come from `video_grid_thw` and `second_per_grid_ts` (seconds per temporal patch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from longvid.io import InputError

log = logging.getLogger(__name__)

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SYSTEM = "You are a helpful assistant."


@dataclass
class Answer:
    content: str
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    usage: dict
    model: str


def pick_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class LocalVLM:
    def __init__(self, path: str, device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise InputError(f"caption.transformers.path: {path}: not a Hugging Face model directory ({e})") from None
        if config.model_type not in FAMILIES:
            raise InputError(f"caption.transformers.path: {path} is a {config.model_type!r} model; "
                             f"the transformers backend runs {', '.join(FAMILIES)}")
        self.name = str(path)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last token
        self.images = Qwen2VLImageProcessorPil.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=pick_dtype(dtype, self.device))
        self.model.to(self.device).eval()
        vision = config.vision_config
        self.patch, self.merge, self.tpatch = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        self.video_token = config.video_token_id
        self.pad = self.tokenizer.convert_ids_to_tokens(config.video_token_id)
        self.stop_ids = sorted({self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id}
                               - {None})
        self.torch = torch

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (14 px patches merged 2x2: 28)."""
        return self.patch * self.merge

    def video_patches(self, rgb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(patches, [t, h, w]) of one clip's frames (n, H, W, 3), n even, H and W multiples of 28."""
        n, height, width = rgb.shape[:3]
        if n % self.tpatch or height % self.factor or width % self.factor:
            raise ValueError(f"frames {n}x{height}x{width}: need a multiple of {self.tpatch} frames and "
                             f"sides that are multiples of {self.factor}")
        per_frame = self.images(list(rgb), do_resize=False, return_tensors="np")["pixel_values"]
        gh, gw = height // self.patch, width // self.patch
        dim = per_frame.shape[-1] // self.tpatch  # one frame's share of a patch: C x patch x patch
        # (frame, patch, C, temporal, p*p): frames 2k.. take temporal slot 0.., as one video patch
        p = per_frame.reshape(n, gh * gw, 3, self.tpatch, dim // 3)[:, :, :, 0]
        p = p.reshape(n // self.tpatch, self.tpatch, gh * gw, 3, dim // 3).transpose(0, 2, 3, 1, 4)
        return np.ascontiguousarray(p.reshape(-1, per_frame.shape[-1])), [n // self.tpatch, gh, gw]

    def prompt_ids(self, prompt: str, video_tokens: int) -> list[int]:
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                f"{self.pad * video_tokens}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def inputs(self, clips: list, prompt: str) -> dict:
        """The model inputs of a batch of clips (each a Frames with `rgb`), left-padded."""
        torch = self.torch
        patches, grids, seconds, rows = [], [], [], []
        for frames in clips:
            p, grid = self.video_patches(frames.rgb)
            patches.append(p)
            grids.append(grid)
            # seconds per temporal patch: the sampled frames' spacing in the clip x the frames per patch
            seconds.append(self.tpatch * frames.duration / max(len(frames.indices), 1))
            rows.append(self.prompt_ids(prompt, grid[0] * grid[1] * grid[2] // self.merge ** 2))
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "mm_token_type_ids": (ids == self.video_token).int().mul(2).to(self.device),
                "pixel_values_videos": torch.from_numpy(np.concatenate(patches)).to(self.device, self.model.dtype),
                "video_grid_thw": torch.tensor(grids).to(self.device),
                "second_per_grid_ts": torch.tensor(seconds).to(self.device)}

    def generate(self, clips: list, prompt: str, max_tokens: int, temperature: float, top_p: float,
                 seed: int) -> list[Answer]:
        """One answer per clip of the batch (sampled with `seed` when temperature > 0)."""
        torch = self.torch
        batch = self.inputs(clips, prompt)
        sample = temperature > 0
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=sample,
                                      temperature=temperature if sample else None, top_p=top_p if sample else None,
                                      top_k=None, eos_token_id=self.stop_ids,
                                      pad_token_id=self.tokenizer.pad_token_id)
        answers = []
        for k, row in enumerate(out[:, batch["input_ids"].shape[1]:].tolist()):
            ends = [i for i, t in enumerate(row) if t in self.stop_ids]
            tokens = row[:ends[0]] if ends else row
            answers.append(Answer(
                content=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                finish_reason="stop" if ends else "length", model=self.name,
                usage={"prompt_tokens": int(batch["attention_mask"][k].sum()),
                       "completion_tokens": len(tokens) + (1 if ends else 0)}))
        return answers
