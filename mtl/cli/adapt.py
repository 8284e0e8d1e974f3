"""`python -m mtl adapt`: a trained model adapted to new classes of your own from a few images."""
from __future__ import annotations

import json
from typing import Any

from mtl.engine.classifier import FewShotClassifier, folder_images, query_images
from mtl.io import atomic_write_text, check_output_file

def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of `python -m mtl train` (file, or run folder: best.pt)")
    parser.add_argument("--support", required=True,
                        help="folder with one sub-folder per new class, a few images each")
    parser.add_argument("--query", required=True, nargs="+",
                        help="images to classify: files, a folder of images, or a folder of "
                             "class sub-folders (then accuracy is reported too)")
    parser.add_argument("--steps", type=int, default=None,
                        help="inner steps of adaptation (default: the run's test_inner_steps)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the predictions here")


def run(args) -> int:
    if args.json:
        args.json = check_output_file(args.json, "--json")
    clf = FewShotClassifier.from_checkpoint(args.checkpoint, steps=args.steps, device=args.device)
    support, labels = folder_images(args.support)
    clf.fit(support, labels)
    target = args.query[0] if len(args.query) == 1 else args.query
    queries, truth = query_images(target)
    probabilities = clf.predict_proba(queries)
    rows = []
    for i, path in enumerate(queries):
        best = int(probabilities[i].argmax())
        rows.append({"image": str(path), "predicted": clf.classes_[best],
                     "probability": round(float(probabilities[i, best]), 4),
                     **({"true": truth[i]} if truth is not None else {})})
        mark = "" if truth is None else ("  ok" if truth[i] == clf.classes_[best] else f"  (true: {truth[i]})")
        print(f"{path}: {clf.classes_[best]} ({100 * float(probabilities[i, best]):.1f}%){mark}")
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "classes": clf.classes_,
                              "support_images": len(support), "steps": clf.steps, "predictions": rows}
    if truth is not None:
        adapts = clf.learner.per_task_parameters(len(clf.classes_)) != 0
        adaptation = (f"{clf.steps} inner step{'' if clf.steps == 1 else 's'}" if adapts else "no inner loop")
        correct = sum(r["predicted"] == r["true"] for r in rows)
        result["accuracy"] = correct / len(rows)
        print(f"accuracy: {correct}/{len(rows)} = {100 * correct / len(rows):.1f}% "
              f"({len(clf.classes_)}-way, {len(support)} support images, {adaptation})")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
