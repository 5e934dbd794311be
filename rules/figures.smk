# Figures of the selected scale (harness/figures.py): each paper's own under
# results/figures/<scale>/<paper>/, and the overview with a panel per paper.
FIGURES = [f"results/figures/{SCALE}/overview.png", *(f"results/figures/{SCALE}/{p}" for p in config["papers"])]


rule paper_figures:
    input:
        table="results/tables.csv",
        papers=expand("config/papers/{paper}.yaml", paper=config["papers"]),  # titles, reference sections
        board=lambda wc: LEADERBOARD if wc.paper == "leaderboard" else [],   # the targets drawn
    output:
        report(directory("results/figures/{scale}/{paper}"), patterns=["{name}.png"],
               caption="../report/figure.rst", category="Figures", subcategory="{paper}"),
    log:
        "results/logs/figures-{scale}-{paper}.log",
    wildcard_constraints:
        paper=r"[\w-]+",  # not overview.png (as the global constraint, said here where it matters)
    shell:
        "{PYTHON} -m harness figures --table {input.table} --scale {wildcards.scale} "
        "--out results/figures/{wildcards.scale} --only {wildcards.paper} > {log} 2>&1"


rule overview_figure:
    input:
        table="results/tables.csv",
        papers=expand("config/papers/{paper}.yaml", paper=config["papers"]),  # titles
    output:
        png=report("results/figures/{scale}/overview.png", caption="../report/overview.rst", category="Figures",
                   subcategory="overview"),
        pdf="results/figures/{scale}/overview.pdf",
        latency=report("results/figures/{scale}/latency.png", caption="../report/latency.rst", category="Figures",
                       subcategory="overview"),
        latency_pdf="results/figures/{scale}/latency.pdf",
    log:
        "results/logs/figures-{scale}-overview.log",
    shell:
        "{PYTHON} -m harness figures --table {input.table} --scale {wildcards.scale} "
        "--out results/figures/{wildcards.scale} --only overview > {log} 2>&1"
