# The model half, per experiment: encode -> train -> sample -> evaluate -> report.
# GPU rules; on Slurm, profiles/slurm gives them GPUs, tasks (one per GPU) and `mpi: srun`.


rule encode:
    input:
        experiment_dataset,
    output:
        index="data/latents/{experiment}/train.jsonl",
    log:
        "results/logs/{experiment}/encode.log",
    benchmark:
        "results/benchmarks/{experiment}/encode.tsv"
    params:
        config=stage_config("encode"),
        dataset_dir=experiment_dataset_dir,
        launch=launcher,
    shell:
        "{params.launch} longvid encode {params.config} --dataset-dir {params.dataset_dir}"
        " --cache data/latents/cache --index {output.index} > {log} 2>&1"


rule train:
    # The run directory is not an output: Snakemake deletes a failed job's outputs, and the
    # checkpoints in it are what a retry (after preemption, exit 75) resumes from.
    input:
        dataset=experiment_dataset,
        latents=experiment_latents,
    output:
        model="results/train/{experiment}/final/model.safetensors",
        config="results/train/{experiment}/final/config.json",
    log:
        "results/logs/{experiment}/train.log",
    benchmark:
        "results/benchmarks/{experiment}/train.tsv"
    # Retries come from the Snakemake that submits jobs, never from the one inside a Slurm job (whose
    # allocation is ending when the trainer exits 75 at the time-limit warning): each continuation is
    # a new job. The trainer keeps every attempt's log in results/train/{experiment}/logs/. One retry per
    # expected continuation (a 24 h run in 4 h jobs: 5) plus a few for crashes; the README says more.
    retries: 0 if workflow.remote_exec else train_retries()
    resources:
        # a retry after an scancelled attempt refuses in one line (longvid.train.retry_guard)
        attempt=lambda wildcards, attempt: attempt,
    params:
        config=stage_config("train"),
        dataset_dir=experiment_dataset_dir,
        launch=launcher,
    shell:
        # without data.latent_cache there is no latents input, and clips are encoded on the fly
        "{params.launch} longvid train {params.config} --dataset-dir {params.dataset_dir}"
        " --run-dir results/train/{wildcards.experiment} --latents data/latents/{wildcards.experiment}/train.jsonl"
        " --attempt {resources.attempt} > {log} 2>&1 || status=$?;"
        # the whole log of every attempt (all ranks, srun's "tasks 0-1: Exited with exit code 75") is
        # kept beside the trainer's own: Snakemake empties {log} before the next attempt
        " mkdir -p results/train/{wildcards.experiment}/logs;"
        " cp {log} results/train/{wildcards.experiment}/logs/rule-$(date +%Y%m%dT%H%M%S)-job${{SLURM_JOB_ID:-local}}.log;"
        " exit ${{status:-0}}"


rule sample:
    # The output is the directory users ask for (`snakemake results/samples/5b_sft`); Snakemake empties
    # it before every run, so the videos are made in results/sample_runs/{experiment} (kept: a rerun or
    # a requeued job skips finished videos) and the output directory links to the current set.
    input:
        model="results/train/{experiment}/final/model.safetensors",
        prompts=experiment_prompts,
    output:
        samples=report(
            directory("results/samples/{experiment}"),
            patterns=["{name}.mp4"],
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{experiment}",
        ),
    log:
        "results/logs/{experiment}/sample.log",
    benchmark:
        "results/benchmarks/{experiment}/sample.tsv"
    params:
        config=stage_config("sample"),
        launch=launcher,
    shell:
        # videos already made with the same settings are kept (skip-if-exists inside the stage)
        "{params.launch} longvid sample {params.config} --model results/train/{wildcards.experiment}/final"
        " --work-dir results/sample_runs/{wildcards.experiment} --out-dir {output.samples}"
        " --prompts {input.prompts} > {log} 2>&1"


rule evaluate:
    input:
        model="results/train/{experiment}/final/model.safetensors",
        samples="results/samples/{experiment}",
        dataset=experiment_dataset,
    output:
        metrics="results/eval/{experiment}/metrics.json",
    log:
        "results/logs/{experiment}/evaluate.log",
    benchmark:
        "results/benchmarks/{experiment}/evaluate.tsv"
    params:
        config=stage_config("evaluate"),
        dataset_dir=experiment_dataset_dir,
    shell:
        "longvid evaluate {params.config} --model results/train/{wildcards.experiment}/final --samples {input.samples}"
        " --dataset-dir {params.dataset_dir} --out {output.metrics} > {log} 2>&1"


rule report:
    input:
        # the exported model's config.json carries its step and provenance, final/metrics.jsonl the curve
        model="results/train/{experiment}/final/config.json",
        samples="results/samples/{experiment}",
        metrics="results/eval/{experiment}/metrics.json",
        dataset=experiment_dataset,
    output:
        html=report(
            "results/report/{experiment}.html",
            caption="../report/experiment.rst",
            category="Experiments",
        ),
    log:
        "results/logs/{experiment}/report.log",
    benchmark:
        "results/benchmarks/{experiment}/report.tsv"
    params:
        config=stage_config("report"),
        dataset_dir=experiment_dataset_dir,
    shell:
        "longvid report {params.config} --dataset-dir {params.dataset_dir}"
        " --model results/train/{wildcards.experiment}/final"
        " --samples {input.samples} --metrics {input.metrics} --out {output.html}"
        " > {log} 2>&1"
