# caption: per shard, kept clips get captions (passthrough of source captions, or a VLM endpoint).


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
        "longvid caption {params.config} --shard {wildcards.shard} --clips {input} --out {output} > {log} 2>&1"
