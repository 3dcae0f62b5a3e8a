"""Markdown rows for docs/model-ablation.md from one or more LOSO reports (``loso.json``).

``python scripts/ablation_rows.py NAME=work/runs/cam-evidence/loso.json [NAME=other.json ...]``: runs of
the same recipe from several reports (e.g. seed 0 and seeds 1-2 run apart) are pooled under one NAME by
repeating it. Each row: held-out AUC mean [min-max] over seeds per fold, the mean over folds, the
shortcut audit's mean per fold, and where the Grad-CAM lay (TB films of the held-out source; the
lesion test set).
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxr_core.pipeline.loso import summarise  # noqa: E402

FOLDS = ("shenzhen", "da", "rahmandb")


def cell(spread: dict | None) -> str:
    if not spread:
        return "–"
    if spread["n"] == 1:
        return f"{spread['mean']:.3f}"
    return f"{spread['mean']:.3f} [{spread['min']:.3f}–{spread['max']:.3f}]"


def mean_of(spread: dict | None) -> float | None:
    return None if not spread else spread["mean"]


def main() -> int:
    runs: dict[str, list] = defaultdict(list)
    for argument in sys.argv[1:]:
        name, path = argument.split("=", 1)
        runs[name] += [run for run in json.loads(Path(path).read_text())["runs"] if run["kind"] == "loso"]
    print("| recipe | seeds | LOSO shenzhen | LOSO da | LOSO rahmandb | LOSO mean | shortcut audit (sz / da / rdb) | "
          "TB films: mass in lungs / peak in lungs | lesion test: pointing / mass vs uniform |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, chosen in runs.items():
        summary = summarise(chosen)
        table = summary["loso"]
        seeds = sorted({run["seed"] for run in chosen})
        aucs = [mean_of(table.get(f, {}).get("roc_auc")) for f in FOLDS]
        mean = sum(aucs) / len(aucs) if all(a is not None for a in aucs) else None
        shortcut = " / ".join(f"{mean_of(table.get(f, {}).get('shortcut_auc')) or 0:.2f}" for f in FOLDS)
        lung = [((table.get(f) or {}).get("evidence_tb") or {}) for f in FOLDS]
        mass = [mean_of(e.get("lung_share")) for e in lung]
        peak = [mean_of(e.get("peak_in_lungs")) for e in lung]
        lesion = ((summary.get("lesion_test") or {}).get("loso") or {}).get("evidence_tb") or {}
        evidence = (
            f"{min(m for m in mass if m is not None):.2f}–{max(m for m in mass if m is not None):.2f} / "
            f"{min(p for p in peak if p is not None):.2f}–{max(p for p in peak if p is not None):.2f}"
            if any(m is not None for m in mass) else "–"
        )
        pointing = (
            f"{mean_of(lesion.get('pointing')):.2f} / {mean_of(lesion.get('lesion_vs_uniform')):.1f}x"
            if lesion.get("pointing") else "–"
        )
        print(f"| {name} | {len(seeds)} ({', '.join(map(str, seeds))}) | "
              + " | ".join(cell(table.get(f, {}).get("roc_auc")) for f in FOLDS)
              + f" | {'–' if mean is None else f'{mean:.3f}'} | {shortcut} | {evidence} | {pointing} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
