"""Push a B'MOJO model to the Hub: `export` into a temporary folder, then upload that folder.

Besides the files `model.push_to_hub` uploads for a model registered with `register_for_auto_class`
(weights, config with `auto_map`, the flat remote code), this ships the tokenizer and a model card
describing the architecture.
"""

import tempfile

from huggingface_hub import HfApi

from .export import export


def push(model_or_path, repo_id, token=None, private=False, commit_message="Upload B'MOJO model",
         tokenizer=None, model_card_info=None):
    """Create `repo_id` (if needed) and upload an exported folder to it in one commit.

    Returns what `HfApi.upload_folder` returns (the commit info)."""
    info = dict(model_card_info or {})
    info.setdefault("repo_id", repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="bmojo-export-") as folder:
        export(model_or_path, folder, tokenizer=tokenizer, model_card_info=info)
        api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 token=token, repo_type="model")
