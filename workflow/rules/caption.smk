# caption: per shard, kept clips get captions: the source's (passthrough), or a vision-language model's
# behind an OpenAI-compatible API (at caption.endpoints, or a server the job starts: caption.server).
# Finished captions go to data/caption_cache/, which is not an output: Snakemake deletes the outputs
# of a failed job, and a killed, preempted or repeated job must only caption what is missing.


rule caption:
    input:
        "data/shards/{dataset}/{shard}/filtered.jsonl",
    output:
        "data/shards/{dataset}/{shard}/captioned.jsonl",
    log:
        "results/logs/{dataset}/caption/{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/caption/{shard}.tsv"
    params:
        config=stage_config("caption"),
    shell:
        "longvid caption {params.config} --shard {wildcards.shard} --clips {input} --out {output}"
        " --cache data/caption_cache/{wildcards.dataset}/{wildcards.shard}.jsonl > {log} 2>&1"
