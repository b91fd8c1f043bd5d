# fetch -> shard (checkpoint) -> probe -> split -> filter. Data jobs run per shard: the job count
# stays in the low thousands even at 500k videos, and per-clip state lives in the shard tables.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    shard=r"s\d{5}",


rule fetch:
    output:
        manifest="data/raw/{dataset}/manifest.jsonl",
    log:
        "results/logs/{dataset}/fetch.log",
    benchmark:
        "results/benchmarks/{dataset}/fetch.tsv"
    threads: 4
    params:
        config=stage_config("fetch"),
    shell:
        "longvid fetch {params.config} --out-dir data/raw/{wildcards.dataset}/videos"
        " --manifest {output.manifest} > {log} 2>&1"


checkpoint shard:
    input:
        manifest="data/raw/{dataset}/manifest.jsonl",
    output:
        shards="data/shards/{dataset}/shards.json",
    log:
        "results/logs/{dataset}/shard.log",
    benchmark:
        "results/benchmarks/{dataset}/shard.tsv"
    params:
        config=stage_config("shard"),
    shell:
        "longvid shard {params.config} --manifest {input.manifest}"
        " --out-dir data/shards/{wildcards.dataset} --shards-json {output.shards} > {log} 2>&1"


rule probe:
    input:
        # written by the shard checkpoint (only when its rows change, so unchanged shards stay done)
        manifest="data/shards/{dataset}/{shard}/manifest.jsonl",
    output:
        "data/shards/{dataset}/{shard}/probe.jsonl",
    log:
        "results/logs/{dataset}/probe/{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/probe/{shard}.tsv"
    threads: 4
    params:
        config=stage_config("probe"),
        workers=workers,
    shell:
        "longvid probe {params.config} --shard {wildcards.shard} --manifest {input.manifest} --out {output}"
        " --workers {params.workers} > {log} 2>&1"


rule split:
    input:
        "data/shards/{dataset}/{shard}/probe.jsonl",
    output:
        "data/shards/{dataset}/{shard}/clips.jsonl",
    log:
        "results/logs/{dataset}/split/{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/split/{shard}.tsv"
    threads: 4
    params:
        config=stage_config("split"),
        workers=workers,
    shell:
        "longvid split {params.config} --shard {wildcards.shard} --probe {input} --out {output}"
        " --clip-dir data/clips/{wildcards.dataset}/{wildcards.shard} --workers {params.workers} > {log} 2>&1"


rule filter:
    input:
        "data/shards/{dataset}/{shard}/clips.jsonl",
    output:
        "data/shards/{dataset}/{shard}/filtered.jsonl",
    log:
        "results/logs/{dataset}/filter/{shard}.log",
    benchmark:
        "results/benchmarks/{dataset}/filter/{shard}.tsv"
    threads: 4
    params:
        config=stage_config("filter"),
        workers=workers,
    shell:
        "longvid filter {params.config} --shard {wildcards.shard} --clips {input} --out {output}"
        " --workers {params.workers} > {log} 2>&1"
