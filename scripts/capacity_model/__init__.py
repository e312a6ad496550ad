"""The capacity calculator behind scripts/capacity (docs/scaling.md), split by concept so that no file
outgrows the repository's size limit and each part can be read on its own:

    inputs   docs/capacity-inputs.json: the figures, their sources, reading, writing, `inputs --carry`
    kernel   measure-kernel: kernel memory per idle TCP socket
    model    the plan's and pod-target's arithmetic
    curve    the CPU per delivery by a node's delivery rate: lookup, and from cluster-bench.sh's curve runs
    report   the plan's and pod-target's text and JSON output
    options  the plan's command-line options and the checked number types
    cluster  cluster-report and cluster-inputs for scripts/cluster-bench.sh

scripts/capacity parses the command lines and calls into these. Python 3 standard library only.
"""
