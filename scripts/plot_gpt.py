#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Plots of moe_gpt runs (examples/03_gpt_moe, docs/gpt_moe.md) from their CSV logs.

  python3 scripts/plot_gpt.py --out docs/img moe.csv dense.csv [--labels MoE,dense]
                              [--load moe_load.csv] [--prefix gpt_]

writes into --out:
  <prefix>loss.png         training loss (moving average of 10 steps, thin) and validation
                           loss (thick, dots) of every run against the step; the whole run
                           and its second half enlarged
  <prefix>routing.png      dropped-route fraction and max/mean expert load of every MoE run
  <prefix>expert_load.png  heatmaps, one per MoE layer: the share of each language's routes
                           that goes to each expert, at the last evaluation of the --load file
                           (default: the first run's <name>_load.csv, when it exists)

Needs matplotlib (pip install matplotlib; on Debian 12: apt-get install python3-matplotlib, or
pip install --break-system-packages matplotlib).
"""
import argparse
import csv
import os
import sys


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(v):
    return float(v) if v not in (None, "") else None


def moving_average(xs, n):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > n:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def load_path_for(csv_path):
    stem = csv_path[:-4] if csv_path.endswith(".csv") else csv_path
    return stem + "_load.csv"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csvs", nargs="+", help="main CSV of each run (moe_gpt --csv FILE)")
    ap.add_argument("--labels", help="comma-separated names of the runs (default: file names)")
    ap.add_argument("--load", help="the per-language expert-load CSV to draw (FILE_load.csv)")
    ap.add_argument("--out", default=".", help="directory for the PNGs")
    ap.add_argument("--prefix", default="gpt_", help="prefix of the PNG names")
    args = ap.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write(
            "plot_gpt.py: matplotlib is not installed. Install it with\n"
            "  apt-get install python3-matplotlib      (Debian/Ubuntu), or\n"
            "  pip install matplotlib                  (add --break-system-packages on Debian 12)\n"
            "and run this script again.\n")
        return 2

    labels = args.labels.split(",") if args.labels else [
        os.path.splitext(os.path.basename(p))[0] for p in args.csvs]
    if len(labels) != len(args.csvs):
        sys.stderr.write("plot_gpt.py: --labels needs one name per CSV\n")
        return 1
    runs = [(label, read_rows(path)) for label, path in zip(labels, args.csvs)]
    os.makedirs(args.out, exist_ok=True)
    written = []

    # 1. Loss curves: the whole run, and its second half enlarged (where runs differ).
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    last_step = max(int(r["step"]) for _, rows in runs for r in rows)
    for ax, first in zip(axes, (0, last_step // 2)):
        lo, hi = float("inf"), 0.0
        for i, (label, rows) in enumerate(runs):
            color = "C%d" % i
            steps = [int(r["step"]) for r in rows]
            avg = moving_average([float(r["loss"]) for r in rows], 10)
            keep = [(s, v) for s, v in zip(steps, avg) if s >= first]
            ax.plot([s for s, _ in keep], [v for _, v in keep], color=color, lw=1, alpha=0.6,
                    label="%s train (avg 10)" % label)
            val = [(int(r["step"]), number(r["val_loss"])) for r in rows
                   if number(r["val_loss"]) and int(r["step"]) >= first]
            if val:
                ax.plot([s for s, _ in val], [v for _, v in val], color=color, lw=2.2,
                        marker="o", ms=4, label="%s val (%.3f)" % (label, val[-1][1]))
            values = [v for _, v in keep] + [v for _, v in val]
            if values:
                lo, hi = min(lo, min(values)), max(hi, max(values))
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats per byte)")
        ax.grid(alpha=0.3)
        if first > 0 and hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    axes[0].set_title("moe_gpt: training and validation loss")
    axes[1].set_title("second half, enlarged")
    axes[1].legend(fontsize=8)
    path = os.path.join(args.out, args.prefix + "loss.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # 2. Routing statistics of the MoE runs.
    moe_runs = [(l, rows) for l, rows in runs if any(float(r["aux_loss"]) > 0 for r in rows)]
    if moe_runs:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for i, (label, rows) in enumerate(moe_runs):
            steps = [int(r["step"]) for r in rows]
            a1.plot(steps, moving_average([100 * float(r["dropped_frac"]) for r in rows], 10),
                    color="C%d" % i, label=label)
            a2.plot(steps, moving_average([float(r["load_max_mean"]) for r in rows], 10),
                    color="C%d" % i, label=label)
        a1.set_title("dropped routes, % (avg 10 steps)")
        a2.set_title("max / mean expert load (avg 10 steps)")
        for a in (a1, a2):
            a.set_xlabel("step")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        path = os.path.join(args.out, args.prefix + "routing.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    # 3. Expert load per language at the last evaluation.
    load = args.load or load_path_for(args.csvs[0])
    rows = read_rows(load) if os.path.exists(load) else []
    if rows:
        last = max(int(r["step"]) for r in rows)
        rows = [r for r in rows if int(r["step"]) == last]
        layers = sorted({int(r["layer"]) for r in rows})
        langs = list(dict.fromkeys(r["language"] for r in rows))
        experts = [k for k in rows[0].keys() if k.startswith("e") and k[1:].isdigit()]
        fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers) + 1, 3.6),
                                 squeeze=False)
        for ax, layer in zip(axes[0], layers):
            grid = [[float(next(r for r in rows if int(r["layer"]) == layer
                                and r["language"] == lang)[e]) for e in experts]
                    for lang in langs]
            im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=max(0.5, max(map(max, grid))))
            for y, line in enumerate(grid):
                for x, v in enumerate(line):
                    ax.text(x, y, "%.0f" % (100 * v), ha="center", va="center", fontsize=7,
                            color="white" if v < 0.3 else "black")
            ax.set_xticks(range(len(experts)))
            ax.set_xticklabels([e[1:] for e in experts])
            ax.set_yticks(range(len(langs)))
            ax.set_yticklabels(langs if layer == layers[0] else [])
            ax.set_xlabel("expert")
            ax.set_title("layer %d" % layer)
        fig.colorbar(im, ax=list(axes[0]), label="share of the language's routes")
        fig.suptitle("expert load per language, step %d (%% of routes, top-K choices)" % last)
        path = os.path.join(args.out, args.prefix + "expert_load.png")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for p in written:
        print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
