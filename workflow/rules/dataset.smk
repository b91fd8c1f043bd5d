# dataset: gather the captioned shards into data/datasets/{dataset}/; version it with DVC.
#
# A dataset with a data/datasets/{dataset}.dvc file (and dvc.pull: true) is not rebuilt: `dvc pull`
# materialises it, and consumers use it through dataset_input() as ancient() inputs, because DVC
# gives pulled files fresh mtimes.


rule dataset:
    input:
        shard_tables("captioned.jsonl"),
    output:
        train="data/datasets/{dataset}/train.jsonl",
        val="data/datasets/{dataset}/val.jsonl",
        stats="data/datasets/{dataset}/stats.json",
        clips=directory("data/datasets/{dataset}/clips"),
        plots=report(
            directory("data/datasets/{dataset}/stats"),
            patterns=["{name}.png"],
            caption="../report/dataset_plots.rst",
            category="Datasets",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/dataset.log",
    benchmark:
        "results/benchmarks/{dataset}/dataset.tsv"
    wildcard_constraints:
        dataset=_name_regex(BUILT_DATASETS),
    params:
        config=stage_config("dataset"),
    shell:
        "longvid dataset {params.config} --shards-json data/shards/{wildcards.dataset}/shards.json"
        " --out-dir data/datasets/{wildcards.dataset}"
        " > {log} 2>&1"


rule dvc_pull:
    input:
        "data/datasets/{dataset}.dvc",
    output:
        train="data/datasets/{dataset}/train.jsonl",
        val="data/datasets/{dataset}/val.jsonl",
        stats="data/datasets/{dataset}/stats.json",
    log:
        "results/logs/{dataset}/dvc_pull.log",
    benchmark:
        "results/benchmarks/{dataset}/dvc_pull.tsv"
    wildcard_constraints:
        dataset=_name_regex(TRACKED_DATASETS),
    shell:
        # dvc keeps unchanged files untouched; touch so Snakemake sees the outputs as new
        "dvc pull {input} > {log} 2>&1 && touch {output}"


rule publish:
    input:
        dataset_files,
    output:
        "data/datasets/{dataset}.dvc",
    log:
        "results/logs/{dataset}/publish.log",
    benchmark:
        "results/benchmarks/{dataset}/publish.tsv"
    wildcard_constraints:
        dataset=_name_regex(BUILT_DATASETS),
    params:
        push=push_flag,
    shell:
        "longvid publish --path data/datasets/{wildcards.dataset} {params.push} > {log} 2>&1"


rule publish_raw:
    input:
        "data/raw/{dataset}/manifest.jsonl",
    output:
        "data/raw/{dataset}.dvc",
    log:
        "results/logs/{dataset}/publish_raw.log",
    benchmark:
        "results/benchmarks/{dataset}/publish_raw.tsv"
    params:
        push=push_flag,
    shell:
        "longvid publish --path data/raw/{wildcards.dataset} {params.push} > {log} 2>&1"
