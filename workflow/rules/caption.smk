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
    conda:
        "../../envs/data.yaml"
    params:
        cfg=stage_params("caption"),
    shell:
        "longvid caption --clips {input} --out {output} --params {params.cfg} > {log} 2>&1"
