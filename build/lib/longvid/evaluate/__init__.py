"""Evaluation of sampled videos: tier-1 metrics that need no pretrained weights, tier-2 ones that do."""
