"""longvid: raw video collections to trained long-video diffusion models."""
