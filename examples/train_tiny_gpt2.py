"""Train a tiny GPT-2-config model for a few steps and watch it with MAV (no downloads).

    python examples/train_tiny_gpt2.py                # transformers.Trainer + MAVCallback
    python examples/train_tiny_gpt2.py --plain-loop   # a plain PyTorch loop + visualize_every

The text and the tokenizer (a byte-level BPE trained on that text in milliseconds)
ship with the example; the model is a 2-layer GPT-2 with random initial weights.
"""

from __future__ import annotations

import argparse

import torch

TEXT = """\
The cat sat on the mat. The dog sat on the log. The cat saw the dog and the dog saw the cat.
A small bird sang in the tree. The bird flew to the mat and sat by the cat.
The sun rose over the hill. The sun set behind the hill. The cat slept in the sun.
""" * 8


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_model(vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=64, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


class Blocks(torch.utils.data.Dataset):
    """Fixed-length blocks of the token stream; labels are the inputs (the model shifts them)."""

    def __init__(self, ids: list[int], block: int = 32):
        self.blocks = [ids[i:i + block] for i in range(0, len(ids) - block, block // 2)]

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        x = torch.tensor(self.blocks[i])
        return {"input_ids": x, "labels": x.clone()}


def train_with_trainer(steps: int, every: int, out_dir: str, console=None):
    from transformers import Trainer, TrainingArguments

    from openmav.training import MAVCallback

    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer))
    data = Blocks(tokenizer(TEXT).input_ids)
    callback = MAVCallback(tokenizer, prompt="The cat", every_n_steps=every, max_new_tokens=6, console=console)
    args = TrainingArguments(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=8, learning_rate=3e-3,
                             logging_steps=every, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    return trainer, callback


def train_plain_loop(steps: int, every: int, console=None):
    from openmav.training import visualize_every

    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer))
    data = Blocks(tokenizer(TEXT).input_ids)
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, views = [], []
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            losses.append(loss.item())
            view = visualize_every(model, tokenizer, step, every=every, prompt="The cat", max_new_tokens=6,
                                   console=console)
            if view is not None:
                views.append((step, view))
            if step >= steps:
                break
    return model, losses, views


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--plain-loop", action="store_true")
    p.add_argument("--out", default="/tmp/openmav-tiny-gpt2")
    args = p.parse_args(argv)
    if args.plain_loop:
        return train_plain_loop(args.steps, args.every)
    return train_with_trainer(args.steps, args.every, args.out)


if __name__ == "__main__":
    main()
