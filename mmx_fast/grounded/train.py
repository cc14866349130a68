"""Train the grounded model from scratch: ``python -m mmx_fast.grounded.train --out DIR`` (docs/design.md §9).

The ordinary causal-LM loss on the answer token and the end-of-turn token only: nothing on the prompt, nothing
on visual positions, nothing that looks at any attribution method. Fresh scenes every step from a seeded
stream (seed ``--seed``; evaluation scenes come from a disjoint stream, ``scenes.held_out_scenes``). One CPU
thread by default (``--threads``), so the wall time is that of one core. Periodic checkpoints and a log line
every ``--log-every`` steps go to ``DIR`` (``train_log.txt``); the final model, in bfloat16, to ``DIR``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .model import answer_token_id, save_model, untrained_model
from .scenes import held_out_scenes, make_scene


def linear_patch_embed(model) -> None:
    """Training speed only: run the vision tower's patch embedding (a Conv3d whose kernel equals its stride,
    i.e. a linear map of each flattened patch) as ``F.linear`` on the same weight: the same function, but its
    backward is several times faster on the CPU than the convolution's."""
    embed = model.model.visual.patch_embed
    weight = embed.proj.weight

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return torch.nn.functional.linear(flat, weight.reshape(weight.shape[0], -1))

    embed.forward = forward


def chat_text(processor, prompt: str, answer: str | None = None) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text if answer is None else text + answer + "<|im_end|>"


def dialogue_text(processor, questions) -> str:
    """One conversation about one image: every question in turn, each followed by its one-word answer (the
    first turn is exactly the single-question prompt the model is evaluated and explained on)."""
    messages = []
    for i, q in enumerate(questions):
        content = [{"type": "text", "text": q.prompt}]
        if i == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": q.answer}]})
    return processor.apply_chat_template(messages, tokenize=False).rstrip("\n")


def make_batch(processor, rng: np.random.Generator, batch: int):
    """``batch`` fresh scenes; each a conversation asking one question per object (colour or pattern, drawn at
    random), objects in a random order: several answers per image make the model find the object each
    question picks, and one question per object keeps every answer unreadable from the earlier turns."""
    images, texts = [], []
    for _ in range(batch):
        scene = make_scene(rng)
        order = rng.permutation(len(scene.objects))
        picks = [scene.questions[2 * int(i) + int(rng.integers(2))] for i in order]
        images.append(scene.image)
        texts.append(dialogue_text(processor, picks))
    return collate(processor, images, texts)


def collate(processor, images, texts):
    """Processor outputs plus ``labels``: the token after every ``<|im_start|>assistant\n`` (the one-word
    answer) and the end-of-turn token after it; -100 everywhere else (prompt, image, template)."""
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    tok = processor.tokenizer
    head = torch.tensor(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    k = len(head)
    starts = (ids.unfold(1, k, 1) == head).all(-1)  # [B, L - k + 1]: an assistant turn starts here
    labels = torch.full_like(ids, -100)
    rows, cols = starts.nonzero(as_tuple=True)
    for off in (k, k + 1):  # the answer token, then <|im_end|>
        labels[rows, cols + off] = ids[rows, cols + off]
    enc["labels"] = labels
    return enc


@torch.no_grad()
def accuracy(model, processor, scenes) -> float:
    """Exact match of greedy one-word answers, teacher-forced: the answer token is the argmax after the prompt
    and the end-of-turn token the argmax after it (for one-token answers this IS greedy decoding's result)."""
    images, texts = [], []
    for s in scenes:
        for q in s.questions:
            images.append(s.image)
            texts.append(chat_text(processor, q.prompt, q.answer))
    hits = []
    for i in range(0, len(texts), 64):
        enc = collate(processor, images[i : i + 64], texts[i : i + 64]).to(model.device)
        labels = enc.pop("labels")
        logits = model(**enc).logits
        pred = logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        ok = ((pred == target) | (target == -100)).all(1)
        hits.append(ok)
    return float(torch.cat(hits).float().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmx_fast.grounded.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the trained model (created; must not exist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this many steps (the learning-rate schedule still spans --steps); the shipped model "
        "is such an early stop, see docs/design.md §9",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default, the documented wall time), cuda, cuda:N")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-scenes", type=int, default=60)
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"--out {a.out!r} exists and is not empty; pass a new folder")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model, processor = untrained_model(seed=a.seed)
    model.to(a.device)
    for w in ("red", "striped"):
        answer_token_id(processor.tokenizer, w)
    linear_patch_embed(model)
    model.train()
    n_params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    rng = np.random.default_rng(a.seed)
    val = held_out_scenes(a.eval_scenes, seed=20_000 + a.seed)  # a monitor only; the gate uses evaluate.py
    log = open(out / "train_log.txt", "a", buffering=1)

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")

    say(f"params {n_params} seed {a.seed} steps {a.steps} batch {a.batch} lr {a.lr} threads {a.threads}")
    t0 = time.perf_counter()
    ema = None
    last = a.steps if a.stop_after is None else min(a.steps, a.stop_after)
    for step in range(last):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = make_batch(processor, rng, a.batch).to(a.device)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % a.log_every == 0:
            say(f"step {step + 1} loss {ema:.4f} lr {lr_at(step):.2e} wall {time.perf_counter() - t0:.0f}s")
        if (step + 1) % a.eval_every == 0 or step + 1 == last:
            model.eval()
            acc = accuracy(model, processor, val)
            model.train()
            say(f"step {step + 1} monitor-accuracy {acc:.4f} wall {time.perf_counter() - t0:.0f}s")
            save_model(model, processor, out / "checkpoint", meta={"step": step + 1, "monitor_accuracy": acc})
    wall = time.perf_counter() - t0
    model.eval()
    meta = {
        "seed": a.seed,
        "steps": a.steps,
        "stopped_after": last,
        "batch": a.batch,
        "lr": a.lr,
        "threads": a.threads,
        "device": a.device,
        "params": n_params,
        "wall_s": round(wall, 1),
        "monitor_accuracy": acc,
        "torch": torch.__version__,
    }
    save_model(model, processor, out, meta=meta)
    say(f"done: wall {wall:.0f}s, monitor accuracy {acc:.4f}, saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
