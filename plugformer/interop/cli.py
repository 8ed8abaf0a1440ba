"""``plugformer export`` and ``plugformer import``: checkpoints to and from Hugging Face
directories. Cheap to import (``plugformer.cli`` reads the options at start-up); torch and
transformers load when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXPORT_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("checkpoint",), {"metavar": "MODEL", "help": "a file written by plugformer.save"}),
    (("out_dir",), {"metavar": "DIR", "help": "the directory to write (created if missing)"}),
    (("--to",), {"choices": ("hf",), "default": "hf",
                 "help": "the format: hf = a Hugging Face transformers model directory (default: hf)"}),
    (("--force",), {"action": "store_true", "help": "write into DIR even if it is not empty (default: off)"}),
]

EXPORT_EPILOG = """\
examples:
  plugformer export model.safetensors --to hf hf-model/
  plugformer export llama.safetensors --to hf out/ --force     # overwrite out/
  python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('hf-model', local_files_only=True)"

rope models become LlamaForCausalLM, learned-position models GPT2LMHeadModel; a part with no
counterpart (bra, alibi, moe, post_ln, ...) is named in the error.
"""

IMPORT_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("hf_dir",), {"metavar": "DIR", "help": "a Hugging Face model directory (config.json and weights)"}),
    (("--out", "-o"), {"required": True, "metavar": "MODEL",
                       "help": "the plugformer checkpoint to write, e.g. model.safetensors"}),
    (("--rope-layout",), {"choices": ("interleaved", "half"), "default": "interleaved",
                          "help": "rope layout of an imported Llama model (default: interleaved)"}),
]

IMPORT_EPILOG = """\
examples:
  plugformer import hf-model/ --out model.safetensors
  plugformer import tiny-llama/ -o llama.safetensors --rope-layout half
  plugformer generate model.safetensors -i 1,2,3 -n 16        # then use it

reads the directory offline (local_files_only); LlamaForCausalLM and GPT2LMHeadModel map.
"""


def run_export_command(args: argparse.Namespace) -> int:
    """Write a plugformer checkpoint as a Hugging Face model directory."""
    from plugformer.interop.hf import to_hf
    from plugformer.io import load

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; DIR must be a directory")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} is not empty; choose an empty or new directory, or pass --force")
    model = load(args.checkpoint, registry=args.registry).eval()
    hf_model = to_hf(model)
    hf_model.save_pretrained(out)
    print(f"{type(hf_model).__name__} written to {out}")
    return 0


def run_import_command(args: argparse.Namespace) -> int:
    """Read a Hugging Face model directory into a plugformer checkpoint."""
    from plugformer.interop.hf import from_hf
    from plugformer.interop.hf_common import require_transformers
    from plugformer.io import save

    source = Path(args.hf_dir)
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} holds no config.json; DIR must be a Hugging Face model directory")
    transformers = require_transformers()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    model = from_hf(hf_model, rope_layout=args.rope_layout, registry=args.registry)
    path = save(model, args.out, registry=args.registry)
    print(f"{model.spec}\nwritten to {path}")
    return 0
