"""`zeroth export`: a run's (or checkpoint's) model as a plain Hugging Face folder, LoRA
merged."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a run's (or checkpoint's) model as a "
                                   "plain Hugging Face folder, LoRA merged")
    export.add_argument("source", help="runs/<name>, a checkpoint directory or a model folder")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--force", action="store_true", help="replace an existing folder")


def run(ns) -> int:
    from zeroth.pipeline.export import export_model

    print(f"exported to {export_model(ns.source, ns.out, ns.force)} (loads with "
          "AutoModelForCausalLM.from_pretrained)")
    return 0
