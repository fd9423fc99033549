"""Fit the guard's input classifier and write src/twofiles/guard/data/classifier.safetensors.

Logistic regression (scikit-learn, L2, balanced classes) on all-MiniLM-L6-v2 embeddings of
src/twofiles/guard/data/labelled.jsonl (scripts/build_guard_data.py). The set is split,
stratified and seeded, 60/20/20 into train / validation / test: the weights are fitted on train,
the threshold is the one with the best F1 on validation, and precision, recall, F1, AUC and the
false-positive rate are reported on the held-out test split (and stored in the file's metadata).

    python scripts/build_guard_classifier.py [--data FILE] [--out FILE] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
C = 4.0  # inverse L2 strength (the set is near-separable: held-out F1 is ~1 at this C)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 60/20/20 index split."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for y in (0, 1):
        idx = np.flatnonzero(labels == y)
        rng.shuffle(idx)
        a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part += chunk.tolist()
    return tuple(np.array(sorted(p)) for p in parts)  # type: ignore[return-value]


def metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    pred = p >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {
        "precision": round(prec, 4),
        "recall": round(rec, 4),
        "f1": round(f1, 4),
        "auc": round(float(roc_auc_score(y, p)), 4),
        "fpr": round(fp / max(1, int((y == 0).sum())), 4),
        "n": len(y),
    }


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, float, float, dict]:
    """(coef, intercept, threshold, metrics) for embeddings `x` and labels `y`."""
    from sklearn.linear_model import LogisticRegression

    tr, va, te = split(y, seed)
    lr = LogisticRegression(C=C, class_weight="balanced", max_iter=5000, tol=1e-8)
    lr.fit(x[tr], y[tr])
    coef, intercept = lr.coef_[0].astype(np.float32), float(lr.intercept_[0])

    def prob(idx: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(x[idx] @ coef + intercept)))

    pv = prob(va)
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    threshold = float(max(grid, key=lambda t: (metrics(y[va], pv, t)["f1"], -abs(t - 0.5))))
    report = {
        "validation": metrics(y[va], pv, threshold),
        "test": metrics(y[te], prob(te), threshold),
        "train_n": len(tr),
    }
    return coef, intercept, threshold, report


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from twofiles.guard.classifier import CLASSIFIER_FILE, LABELLED_FILE, save_classifier
    from twofiles.paths import sha256_file
    from twofiles.rag.embed import MINILM, MINILM_SHA256, MiniLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=LABELLED_FILE)
    ap.add_argument("--out", type=Path, default=CLASSIFIER_FILE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows = read_rows(args.data)
    y = np.array([int(r["label"]) for r in rows])
    x = MiniLM(device="cpu").embed([r["text"] for r in rows])
    coef, intercept, threshold, report = fit(x, y, args.seed)
    meta = {
        "embedder": MINILM,
        "embedder_sha256": MINILM_SHA256,
        "threshold": threshold,
        "metrics": report,
        "C": C,
        "seed": args.seed,
        "data_sha256": sha256_file(args.data),
        "made_by": "scripts/build_guard_classifier.py",
    }
    save_classifier(args.out, coef, intercept, meta)
    if args.json:
        print(json.dumps({"out": str(args.out), **meta}))
    else:
        t = report["test"]
        print(
            f"{args.out}: threshold {threshold:.2f}; held-out test (n={t['n']}): precision "
            f"{t['precision']:.3f} recall {t['recall']:.3f} F1 {t['f1']:.3f} AUC {t['auc']:.3f} "
            f"FPR {t['fpr']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
