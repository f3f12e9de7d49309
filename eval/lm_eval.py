"""lm-evaluation-harness on B'MOJO checkpoints, through lm-eval's standard Hugging Face model (HFLM).

Nothing here re-implements scoring: HFLM feeds the model exactly as it feeds any causal LM, so
numbers are comparable with published lm-eval results of other architectures. What this module adds:
a default task list, an offline task shipped with the package (for tests and air-gapped checks), a
small ASCII tokenizer for toy checkpoints, and the `bmojo-lm-eval` command.
"""

import argparse
import json
import tempfile
from importlib import resources
from pathlib import Path

DEFAULT_TASKS = ("lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
OFFLINE_TASK = "bmojo_offline_mc"
ASCII_TOKENIZER = "ascii-chars"  # --tokenizer value that builds `ascii_char_tokenizer()`


def write_offline_tasks(folder):
    """Write the shipped offline task(s) as lm-eval YAMLs into `folder`, data paths made absolute.

    datasets' `data_files` is resolved against the working directory, not the YAML, so the shipped
    template carries a placeholder that is filled in here. Returns `folder`."""
    tasks = resources.files("bmojo.eval") / "tasks"
    data_file = Path(str(tasks / f"{OFFLINE_TASK}.jsonl")).resolve()
    if not data_file.is_file():
        raise FileNotFoundError(f"offline task data missing from the package: {data_file}")
    template = (tasks / f"{OFFLINE_TASK}.yaml.in").read_text(encoding="utf-8")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yaml_text = template.replace("__DATA_FILE__", json.dumps(str(data_file)))
    (folder / f"{OFFLINE_TASK}.yaml").write_text(yaml_text, encoding="utf-8")
    return folder


def ascii_char_tokenizer():
    """A character-level tokenizer over printable ASCII and newline (100 ids, so it fits the tiny
    presets' vocab of 128): pad 0, bos 1, eos 2, unk 3. For toy checkpoints and tests; no download."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one id per char
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def load_tokenizer(tokenizer, model):
    """Tokenizer object for HFLM: built for ASCII_TOKENIZER, loaded from a path/repo, or passed through."""
    if tokenizer == ASCII_TOKENIZER:
        return ascii_char_tokenizer()
    if tokenizer is None and not isinstance(model, (str, Path)):
        raise ValueError("a model object needs an explicit tokenizer (object, path or 'ascii-chars')")
    return tokenizer


def make_lm(model, tokenizer=None, batch_size=8, device=None, trust_remote_code=False, dtype="auto"):
    """lm-eval's HFLM around a checkpoint path, Hub id or loaded model.

    `import bmojo` (done by importing this module's package) registers model_type "bmojo" with the
    Auto classes, so package checkpoints load without remote code; exported folders load either way."""
    import torch
    from lm_eval.models.huggingface import HFLM

    import bmojo  # noqa: F401  (registers the Auto classes for checkpoints saved by the package)

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(tokenizer, model)
    if isinstance(model, Path):
        model = str(model)
    return HFLM(pretrained=model, backend="causal", tokenizer=tokenizer, batch_size=batch_size, device=device,
                trust_remote_code=trust_remote_code, dtype=dtype)


def task_manager(include_path=None, include_defaults=True, folder=None):
    """lm-eval TaskManager that also sees the offline task (written into `folder`) and `include_path`."""
    from lm_eval.tasks import TaskManager

    paths = [str(write_offline_tasks(folder))]
    if include_path:
        paths += [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path)]
    return TaskManager(include_path=paths, include_defaults=include_defaults)


def evaluate(lm, tasks=DEFAULT_TASKS, output_path=None, limit=None, num_fewshot=None, include_path=None,
             log_samples=False):
    """Run `lm_eval.simple_evaluate` and (optionally) write its results JSON to `output_path`.

    `lm` is an HFLM (see `make_lm`). Built-in lm-eval tasks are indexed only when a requested task
    is not the shipped offline one (indexing them all takes seconds). Returns lm-eval's results dict."""
    import lm_eval

    tasks = list(tasks)
    include_defaults = bool(include_path) or any(task != OFFLINE_TASK for task in tasks)
    with tempfile.TemporaryDirectory(prefix="bmojo-lm-eval-tasks-") as folder:
        manager = task_manager(include_path, include_defaults, folder)
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, log_samples=log_samples)
    if results is None:  # non-zero ranks of a distributed run get nothing back
        return None
    if output_path is not None:
        write_results(results, output_path)
    return results


def write_results(results, output_path):
    """lm-eval's results as JSON, serialized the way lm-eval's own CLI does it."""
    from lm_eval.utils import handle_non_serializable

    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False),
                    encoding="utf-8")
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="bmojo-lm-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    parser.add_argument("--tokenizer", default=None,
                        help=f"tokenizer path/repo (default: the model's); '{ASCII_TOKENIZER}' builds "
                        "a character tokenizer for toy models")
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                        help=f"comma-separated lm-eval tasks (default: %(default)s; offline: {OFFLINE_TASK})")
    parser.add_argument("--output", default="lm_eval_results.json", help="where to write the results JSON")
    parser.add_argument("--batch-size", default="8", help="an integer, or 'auto'")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--include-path", default=None, help="extra folder of lm-eval task YAMLs")
    parser.add_argument("--trust-remote-code", action="store_true", help="for exported/Hub checkpoints")
    parser.add_argument("--log-samples", action="store_true", help="keep per-document outputs in the JSON")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    lm = make_lm(args.model, args.tokenizer, batch_size=batch_size, device=args.device,
                 trust_remote_code=args.trust_remote_code, dtype=args.dtype)
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    results = evaluate(lm, tasks, output_path=args.output, limit=limit, num_fewshot=args.num_fewshot,
                       include_path=args.include_path, log_samples=args.log_samples)
    if results is not None:
        from lm_eval.utils import make_table

        print(make_table(results))
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
