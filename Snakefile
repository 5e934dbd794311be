# Entry point: load and check the config, include the stages, name the targets.
#   snakemake --cores all results/tables.csv                      (laptop scale, the default)
#   snakemake --cores all results/tables.csv --config scale=smoke
configfile: "config/config.yaml"

include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        "results/tables.csv",
