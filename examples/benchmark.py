"""The benchmark: every storage tier on the default model, written as a report with plots.

    python examples/benchmark.py out/                     # same as: seqkv bench --report out/
    python examples/benchmark.py out/ --model my.gguf --report-lengths 500,1000,2000

Writes out/report.md (tables, machine, model, text, versions), out/report.json and three PNG plots.
About 6 minutes on 2 cores with the default lengths (250, 500, 1000 tokens).
"""
import sys

from seqkv_edge.bench.report import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["seqkv-report"]))
