"""`self1e import-authors`: convert the SELF1E authors' released checkpoint into a self1e checkpoint."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import-authors", help="convert the authors' released checkpoint (InternVL remote-code layout) to ours",
        description="Convert the SELF1E authors' checkpoint (InternVLChatModel config.json, safetensors weights, "
                    "tokenizer with [SEG]) into a self1e checkpoint folder that Self1eModel.from_pretrained loads.")
    p.add_argument("src", help="the authors' checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) folder for the self1e checkpoint")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="take the tokenizer from this InternVL3 checkpoint folder (the one the release was trained "
                        "from; remote-code or -hf) when SRC has none; [SEG] and [SEGT] are added and checked")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                   help="dtype of the written weights (default: as stored, bf16 in the release)")
    p.set_defaults(run=run)


def run(args) -> int:
    from self1e.model.importer import import_authors_checkpoint

    out = import_authors_checkpoint(args.src, args.out, dtype=args.dtype, tokenizer=args.tokenizer)
    print(f"wrote {out}")
    return 0
