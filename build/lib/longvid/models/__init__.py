"""Model code: the CogVideoX DiT and its long-video variants, Mamba2, embeddings, conversion.

Kept import-light on purpose: importing `longvid.models` must not pull in torch, so the CLI and the
config validator stay fast. Import the submodules you need (`longvid.models.dit`, `.config`, ...).
"""
