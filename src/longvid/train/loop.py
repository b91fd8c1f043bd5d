"""Train an experiment's model: one loop for CPU and GPU, one process or many.

Started as one process, by `torchrun`, or by `srun` on Slurm (one task per GPU, any number of nodes); see
longvid.dist. With `train.deepspeed`, DeepSpeed (ZeRO, bf16, clipping) wraps the model: gloo on
CPU, NCCL on GPUs. Otherwise plain PyTorch, with DDP when there are several processes.

Resuming is automatic: the latest checkpoint in the run directory restores model, optimizer, LR
schedule, RNG and data position, so a run killed at any step and restarted ends with the weights of
a run never interrupted (CPU, `train.deterministic`). SIGTERM/SIGUSR1 (Slurm's warning before a time
limit or preemption) save a checkpoint at once and exit 75, so the rule's retry resumes it.
Checkpoints of another run - the run directory outlives a change of training settings or data, after
which Snakemake trains again - are not resumed: they move to `superseded/` and training starts over.
Only `steps` and bookkeeping (longvid.config.RESUMABLE_TRAIN_KEYS) may change and still resume: more steps continue.

Per-sample randomness (noise, timestep, text dropout) is drawn from generators keyed by the sample's
position in the global batch, not by rank: N processes on a global batch compute what one process
computes on the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from longvid.diffusion.loss import diffusion_loss, drop_text, timestep_band
from longvid.config import training_identity
from longvid.io import write_json
from longvid.dvc_publish import dataset_version
from longvid.models.regimes import Regime, apply_regime, param_groups, parameter_table
from longvid.train import accounting, retry_guard
from longvid.train.checkpoint import CheckpointManager, capture_rng, restore_rng
from longvid.runtime import Geometry, build_dit, build_encoders, build_schedule
from longvid.train.data import make_loader
from longvid.dist import all_reduce_mean, barrier, cleanup, init_distributed
from longvid.models.export import export_model
from longvid.train.metrics import MetricsLogger, Throughput, progress
from longvid.train.signals import EXIT_PREEMPTED, PreemptionHandler

log = logging.getLogger("longvid.train")


def lr_lambda(cfg: dict):
    warmup, total, kind = cfg["warmup_steps"], cfg["steps"], cfg["lr_schedule"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        return {"constant": 1.0, "linear": 1.0 - progress_, "cosine": 0.5 * (1 + math.cos(math.pi * progress_))}[kind]

    return factor


def sample_generators(seed: int, step: int, first: int, n: int) -> list[torch.Generator]:
    """One generator per sample, keyed by (seed, step, index in the global batch)."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, first + i]).generate_state(1)[0]))
            for i in range(n)]


def per_sample_randomness(gens, latents_shape, context, global_batch: int, first: int, rate: float):
    noise = torch.stack([torch.randn(latents_shape[1:], generator=g) for g in gens])
    t = torch.stack([torch.randint(*timestep_band(first + i, global_batch), (1,), generator=g)[0]
                     for i, g in enumerate(gens)])
    context = torch.cat([drop_text(context[i:i + 1], rate, generator=g) for i, g in enumerate(gens)])
    return noise, t, context


class Trainer:
    def __init__(self, exp: dict, run_dir: Path, dataset_dir: Path, latents: Path | None):
        self.exp, self.cfg, self.run_dir = exp, exp["train"], run_dir
        self.info = init_distributed()
        self.device = self.info.device
        if self.cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
        self.encoders = build_encoders(exp)
        self.encoders.vae.to(self.device)
        self.encoders.text.to(self.device)
        self.model = build_dit(exp, self.encoders, seed=self.cfg["seed"]).to(self.device)
        self.geometry = Geometry.of(self.encoders.vae, self.model.config)  # frames and tokens of a clip
        regime = Regime(name=self.cfg["regime"], lora_rank=self.cfg["lora"]["rank"], lora_alpha=self.cfg["lora"]["alpha"])
        apply_regime(self.model, regime)
        if self.info.is_main:
            log.info("parameters:\n%s", parameter_table(self.model))
        self.schedule = build_schedule(exp)
        self.loader, self.sampler, self.dataset = make_loader(exp, dataset_dir, latents, self.info,
                                                              self.geometry, check_frames=self.check_clip_frames)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.cfg["weight_decay"]), lr=self.cfg["lr"],
                                           betas=tuple(self.cfg["betas"]), eps=self.cfg["eps"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg))
        self.engine = None
        self.net = self.model
        if self.cfg["deepspeed"]:
            self._init_deepspeed()
        elif self.info.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ckpt = CheckpointManager(run_dir, keep_last=self.cfg["keep_last"],
                                      dataset_version=dataset_version(dataset_dir),
                                      run_identity=run_identity(exp, latents or Path(dataset_dir) / "train.jsonl"))
        self.step = 0

    def check_clip_frames(self, frames: int) -> None:
        """A clip length the model's geometry accepts (attention windows), else InputError."""
        from longvid.models.config import check_frames

        check_frames(self.model.config, self.geometry.latent_frames(frames))

    def _init_deepspeed(self) -> None:
        import deepspeed

        ds_cfg = {
            "train_micro_batch_size_per_gpu": self.cfg["micro_batch"],
            "gradient_accumulation_steps": self.cfg["grad_accum"],
            "zero_optimization": {"stage": self.cfg["zero_stage"]},
            "bf16": {"enabled": self.cfg["precision"] == "bf16"},
            "steps_per_print": 10**9,
        }
        if self.cfg["grad_clip"]:
            ds_cfg["gradient_clipping"] = self.cfg["grad_clip"]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=ds_cfg)
        self.net = self.engine

    # -- state ---------------------------------------------------------------------------------
    def resume(self) -> int | None:
        found = self.ckpt.latest()
        if found is None:
            return None
        step, path = found
        why = self.ckpt.foreign(path)
        if why is not None:  # Snakemake reran training because its settings or data changed
            barrier()  # every rank has looked before rank 0 moves the directory
            if self.info.is_main:
                moved = supersede(self.run_dir)
                log.warning("%s: %s; moved that run to %s, training from step 0", path, why, moved)
            barrier()
            return None
        if self.engine is not None:
            client = self.ckpt.load_engine(self.engine, path)
            self.sampler.load_state_dict(client["sampler"])
        else:
            state = self.ckpt.load(path)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["sampler"])
            restore_rng(state["rng"])
        self.step = step
        log.info("resumed from %s", path)
        return step

    def save(self) -> None:
        if self.engine is not None:
            self.ckpt.save_engine(self.engine, self.step, {"sampler": self.sampler.state_dict(), "step": self.step})
        else:
            self.ckpt.save(self.step, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": capture_rng(), "step": self.step,
            })
        # Every rank leaves together once the checkpoint is on disk: srun ends the other ranks soon
        # after the first one exits (profile: `srun --wait`), which must not cut rank 0's write.
        barrier()

    # -- one optimisation step -------------------------------------------------------------------
    def micro_step(self, batch: dict, offset: int) -> tuple[torch.Tensor, int, int]:
        """(loss, video tokens, samples) of this process's micro-batch; `offset`: samples of the global
        batch taken by the step's earlier micro-batches."""
        latents, context = self.dataset.latents_and_context(batch, self.encoders, self.device)
        # keyed by position in the global batch; with buckets, every rank's batch has the step's bucket size
        bs, world = latents.shape[0], self.info.world_size
        first = offset + self.info.rank * bs
        gens = sample_generators(self.cfg["seed"], self.step, first, bs)
        noise, t, context = per_sample_randomness(gens, latents.shape, context.cpu(),
                                                  bs * world * self.cfg["grad_accum"], first,
                                                  self.cfg["text_dropout"])
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg["precision"] == "bf16" and self.engine is None)
        with autocast:
            loss = diffusion_loss(self.net, self.schedule, latents, context.to(self.device), t.to(self.device),
                                  noise.to(self.device)).mean()
        T, _, h, w = latents.shape[1:]
        tokens = bs * self.geometry.latent_tokens(T, h, w)
        return loss, tokens, bs

    def train_step(self, batches) -> tuple[float, int, int]:
        """One optimizer step: (mean loss, video tokens, samples), this process's share."""
        total, tokens, samples = 0.0, 0, 0
        for _ in range(self.cfg["grad_accum"]):
            loss, n_tokens, n_samples = self.micro_step(next(batches), samples * self.info.world_size)
            if self.engine is not None:
                self.engine.backward(loss)
            else:
                (loss / self.cfg["grad_accum"]).backward()
            total += loss.item() / self.cfg["grad_accum"]
            tokens += n_tokens
            samples += n_samples
            self.sampler.advance(1 if self.sampler.unit == "batches" else self.cfg["micro_batch"])
        if self.engine is not None:
            self.engine.step()
        else:
            if self.cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total, tokens, samples

    def batches(self):
        """Batches forever, epoch after epoch, starting at the sampler's (possibly resumed) position."""
        while True:
            if self.sampler.position >= len(self.sampler.per_rank()):
                self.sampler.set_epoch(self.sampler.epoch + 1)
            self.dataset.set_epoch(self.sampler.epoch)
            for batch in self.loader:
                yield batch
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def fit(self) -> int:
        resumed = self.resume()
        main = self.info.is_main  # one start/end record per attempt, not one per rank
        if main:
            log.info(accounting.start_message(self.step, world_size=self.info.world_size, **accounting.job_fields()))
        steps = self.cfg["steps"]
        rates = Throughput()
        with MetricsLogger(self.run_dir, self.exp, project=self.cfg["wandb_project"], name=self.run_dir.name,
                           resume_step=resumed, is_main=main) as metrics, \
                PreemptionHandler() as stop, progress(steps, self.step, main) as bar:
            batches = self.batches()
            while self.step < steps:
                loss, tokens, samples = self.train_step(batches)
                self.step += 1
                rates.update(samples * self.info.world_size, tokens * self.info.world_size)
                bar.update(1)
                # The stop is checked before any wandb call (the signal may have reached wandb's service
                # process too): a stopping step's metrics go to metrics.jsonl only, then the checkpoint.
                stopping = stop.should_stop(self.info) and self.step < steps
                if self.step % self.cfg["log_every"] == 0 or self.step == steps:
                    loss = all_reduce_mean(torch.tensor([loss], device=self.device)).item()  # all ranks
                    metrics.log(self.step, loss=loss, lr=self.scheduler.get_last_lr()[0], **rates.rates(),
                                wandb=not stopping)
                if stopping:
                    self.save()
                    if main:
                        log.info(accounting.end_message(self.step, reason="preempted"))
                    return EXIT_PREEMPTED
                if self.step % self.cfg["save_every"] == 0 or self.step == steps:
                    self.save()
        if main:
            # the declared output carries what the report shows: provenance and the training curve
            export_model(self.model, self.exp, self.run_dir / "final", step=self.step, provenance=self.ckpt.meta,
                         metrics=self.run_dir / "metrics.jsonl")
            log.info(accounting.end_message(self.step))
        barrier()  # as in save(): no rank exits while rank 0 still exports
        return 0


def run_identity(exp: dict, data_file: Path) -> str:
    """Hash of what determines the training trajectory (longvid.config.training_identity: the
    train stage's inputs less the resumable keys) and of the bytes of the data listing (latent index
    or train.jsonl)."""
    digest = hashlib.sha256(json.dumps(training_identity(exp), sort_keys=True, default=str).encode())
    try:
        digest.update(Path(data_file).read_bytes())
    except OSError:
        pass  # a missing listing fails when the data is loaded, with a better message
    return digest.hexdigest()[:16]


def supersede(run_dir: Path) -> Path:
    """Move a previous run's checkpoints and training log to run_dir/superseded (replacing the one
    kept there before): they are not this run's to resume, but nothing finished is deleted unasked."""
    target = run_dir / "superseded"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for name in ("checkpoints", "metrics.jsonl", "wandb_run_id"):
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    return target


def train(cfg: dict, dataset_dir: Path, run_dir: Path, latents: Path, name: str, attempt: int = 1) -> int:
    """The train stage: train (or resume) in `run_dir`, from the latent index `latents` when
    data.latent_cache is on, else from the clips; exit status 75 when stopped by a signal. `attempt`
    is Snakemake's: a retry (> 1) after an scancelled attempt is refused (retry_guard)."""
    run_dir = Path(run_dir)
    retry_guard.refuse_retry_after_cancel(run_dir, attempt)
    run_dir.mkdir(parents=True, exist_ok=True)
    with accounting.attempt_log(run_dir):  # kept in the run directory: Snakemake deletes rule logs per attempt
        trainer = Trainer(cfg, run_dir, Path(dataset_dir), Path(latents) if cfg["data"]["latent_cache"] else None)
        if trainer.info.is_main:
            write_json(run_dir / "config.json", cfg)
        t0 = time.time()
        code = trainer.fit()
        log.info("training took %.1f s", time.time() - t0)
        try:
            cleanup()
        except (RuntimeError, ConnectionError) as e:  # a peer gone after the work is saved changes nothing
            log.warning("leaving the process group: %s", " ".join(str(e).split())[:200])
    return code
