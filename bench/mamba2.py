"""Mamba2 mixer forward + backward: longvid's pure-PyTorch path vs transformers' Mamba2Mixer torch path.

Same config, same weights (copied by name), same input, one process; the two alternate so load
changes on a shared machine hit both. Prints median times and "longvid/transformers = r" (< 1 means
longvid is faster), after checking the outputs agree.

    .venv/bin/python bench/mamba2.py                       # d_model 256, L 1024 and 4096, batch 1
    .venv/bin/python bench/mamba2.py --lengths 1000 --ngroups 2 --repeats 9
    .venv/bin/python bench/mamba2.py --threads 1             # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from transformers import Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from longvid.models.mamba2 import Mamba2


def step_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x).square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--d-state", type=int, default=128)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--ngroups", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)  # its "falling back to PyTorch" notice

    torch.manual_seed(0)
    dev = torch.device(args.device)
    ours = Mamba2(args.d_model, d_state=args.d_state, headdim=args.headdim, ngroups=args.ngroups,
                  chunk_size=args.chunk, use_kernels=False).to(dev)
    cfg = Mamba2Config(hidden_size=args.d_model, num_heads=ours.nheads, head_dim=args.headdim,
                       state_size=args.d_state, n_groups=args.ngroups, expand=2, conv_kernel=4,
                       chunk_size=args.chunk, use_conv_bias=True, use_bias=False, layer_norm_epsilon=1e-5,
                       num_hidden_layers=1, vocab_size=16)
    ref = Mamba2Mixer(cfg, layer_idx=0).to(dev)
    ref.load_state_dict(ours.state_dict())
    print(f"d_model {args.d_model}, heads {ours.nheads}x{args.headdim}, d_state {args.d_state}, "
          f"ngroups {args.ngroups}, chunk {args.chunk}, batch {args.batch}, {dev}, "
          f"{torch.get_num_threads()} threads")

    for L in args.lengths:
        x = torch.randn(args.batch, L, args.d_model, device=dev)
        with torch.no_grad():
            diff = (ours(x) - ref(x)).abs().max().item()
        assert diff < 1e-4, f"outputs differ by {diff} at L={L}"
        times: dict[str, list[float]] = {"longvid": [], "transformers": []}
        for i in range(args.warmup + args.repeats):
            for name, model in (("longvid", ours), ("transformers", ref)):
                model.zero_grad(set_to_none=True)
                t = step_time(model, x)
                if i >= args.warmup:
                    times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"L={L}: longvid {med['longvid'] * 1e3:.1f} ms, transformers {med['transformers'] * 1e3:.1f} ms "
              f"(max |diff| {diff:.1e}); longvid/transformers = {med['longvid'] / med['transformers']:.2f}")


if __name__ == "__main__":
    main()
