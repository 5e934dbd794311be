# Entry point: load and check the config, include the stages, name the targets.
#   snakemake --cores all results/tables.csv                      (laptop scale, the default)
#   snakemake --cores all results/tables.csv --config scale=smoke
configfile: "config/config.yaml"
report: "report/workflow.rst"

include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/checks.smk"
include: "rules/figures.smk"
include: "rules/leaderboard.smk"
include: "rules/parity.smk"

# seconds of pandas and plotting: not worth a cluster job each
localrules: aggregate, checks, paper_figures, overview_figure, leaderboard, parity


rule all:
    default_target: True
    input:
        "results/tables.csv",
        "results/checks.csv",
        FIGURES,
        LEADERBOARD,
