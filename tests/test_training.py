"""Loss as HF causal LMs compute it, the innovation loss, and HF Trainer driving the loss down."""

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from conftest import random_ids, tiny_model

# transformers 5.24 renamed TrainingArguments(gradient_checkpointing=...) and the model's
# `is_gradient_checkpointing` to `activation_checkpointing`; the old names warn there. 5.13 has only the old.
NEW_NAME = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
CHECKPOINTING = "activation_checkpointing" if NEW_NAME else "gradient_checkpointing"


def test_loss_is_shifted_cross_entropy_plus_innovation():
    model = tiny_model()
    ids = random_ids(2, 24)
    labels = ids.clone()
    labels[:, :5] = -100
    out = model(ids, labels=labels)
    lm = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1))
    assert out.innovation_loss > 0
    torch.testing.assert_close(out.loss, lm + out.innovation_loss)
    # num_items_in_batch (gradient accumulation) turns the mean into sum / num_items, for the innovation
    # term too: its mean times the tokens it ran over (2 rows x 24 tokens) over num_items.
    lm_sum = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1),
                                               reduction="sum")
    for items in (torch.tensor(100), 100):
        summed = model(ids, labels=labels, num_items_in_batch=items)
        torch.testing.assert_close(summed.innovation_loss, out.innovation_loss)  # reported unscaled
        torch.testing.assert_close(summed.loss, lm_sum / 100 + out.innovation_loss * 48 / 100)


def test_gradient_accumulation_equals_one_batch():
    """Two micro-batches of 8 called with num_items_in_batch = the total label count (as HF Trainer does under
    gradient accumulation and across processes) give the gradients of one batch of 16 called with it (as
    Trainer does without accumulation): for the LM loss and the innovation loss."""
    model = tiny_model()
    ids = random_ids(16, 40, seed=3)
    labels = ids.clone()
    labels[:, :3] = -100
    labels[:8, :20] = -100  # the halves hold different numbers of label tokens (a share-weighted mean fails)
    params = dict(model.named_parameters())

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {name: p.grad.clone() for name, p in params.items() if p.grad is not None}

    total = int((labels[:, 1:] != -100).sum())
    whole = grads(model(ids, labels=labels, num_items_in_batch=total).loss)
    half_a = grads(model(ids[:8], labels=labels[:8], num_items_in_batch=torch.tensor(total)).loss)
    half_b = grads(model(ids[8:], labels=labels[8:], num_items_in_batch=total).loss)
    assert whole.keys() == half_a.keys() == half_b.keys()
    predictors = [name for name in whole if ".predictor." in name]
    assert predictors and all(whole[name].abs().sum() > 0 for name in predictors)
    for name, grad in whole.items():
        # (Counting the innovation mean once per micro-batch would double the predictor's gradients here.)
        torch.testing.assert_close(half_a[name] + half_b[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_innovation_loss_sees_keys_detached():
    model = tiny_model()
    out = model(random_ids(1, 30))
    out.innovation_loss.backward()
    last = model.model.layers[-1].mixer
    assert last.predictor.proj.weight.grad.abs().sum() > 0
    assert last.fading.in_proj.weight.grad.abs().sum() > 0  # f_{t-1} feeds the predictor
    # k_t is a detached target: the last layer's key (and query) projections get no gradient from it.
    for proj in (last.k_proj, last.q_proj):
        assert proj.weight.grad is None or proj.weight.grad.abs().sum() == 0


class RepeatingSequences(Dataset):
    """Each row repeats a random 6-token motif: learnable by copying from the window and the store."""

    def __init__(self, rows, length, seed=0):
        g = torch.Generator().manual_seed(seed)
        motifs = torch.randint(3, 128, (rows, 6), generator=g)
        self.data = motifs.repeat(1, -(-length // 6))[:, :length]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"input_ids": self.data[i], "labels": self.data[i]}


def test_trainer_with_activation_checkpointing(tmp_path):
    model = tiny_model(seed=0).train()
    model.config.initializer_range = 0.02
    data = RepeatingSequences(64, 48)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=12,
                             learning_rate=1e-2, logging_steps=1, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                             **{CHECKPOINTING: True})
    with torch.no_grad():
        before = model(data.data[:16], labels=data.data[:16]).loss.item()
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert getattr(model, f"is_{CHECKPOINTING}")
    with torch.no_grad():
        after = model.eval()(data.data[:16], labels=data.data[:16]).loss.item()
    assert after < before / 2, (before, after)
