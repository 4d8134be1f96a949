"""What the harness wraps around every backbone: embedding, pooling, classifier, dual encoder.

Follows the MEGA LRA wrapper (mega.md §6), which the S4 and LRA pipelines resemble:
- token ids -> `nn.Embedding(vocab, d, padding_idx=0)` initialised N(0, d^-1/2); real values (one
  per pixel) -> `e = ((v * real_scale - mean) / std) * w + b`, w ~ N(0, 1), b ~ N(0, 0.1);
- no positional embeddings (a backbone that needs positions adds its own), embedding dropout,
  embeddings at padded positions zeroed;
- masked mean pooling over real positions;
- classifier `Linear(in, 2d) -> dropout -> GELU -> Linear(2d, classes, bias=False)`, xavier init;
- dual encoder (Retrieval): one shared backbone encodes both documents; `concat` interaction feeds
  `[rep(doc2), rep(doc1)]` as MEGA does, `nli` feeds `[u, v, u*v, u-v]` as LRA's paper and S4 do;
- the head belongs to the task: the interaction and the head dropout are task options
  (`--task-option retrieval.interaction=nli`, `TASK.head_dropout`; None = the model's dropout);
- per-token targets (synthetic tasks): the classifier is applied at every position.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.task import INTERACTIONS, TaskOptions, TaskSpec, make_options


class RealNumberEmbedding(nn.Module):
    """One real value per position -> d features (`x * w + b`)."""

    def __init__(self, d_model: int, mean: float, std: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_model))
        self.bias = nn.Parameter(torch.randn(d_model) * 0.1)
        self.mean, self.std, self.scale = mean, std, scale

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, d)
        v = (values.float() * self.scale - self.mean) / self.std
        return v.unsqueeze(-1) * self.weight + self.bias


class ClassifierHead(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_hidden, num_classes, bias=False)
        for layer in (self.fc, self.out):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dropout(self.fc(x)).float()).to(x.dtype))


class SequenceModel(nn.Module):
    """Backbone + everything task-specific. `forward(batch) -> logits`.

    logits: (B, classes) for sequence targets, (B, L, classes) for token targets.
    """

    def __init__(self, backbone: nn.Module, spec: TaskSpec, d_model: int, dropout: float = 0.0,
                 head_hidden: int | None = None, interaction: str = "concat", head_dropout: float | None = None):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.d_model = d_model
        if spec.input_kind == "tokens":
            self.embed = nn.Embedding(spec.vocab_size, d_model, padding_idx=0)
            nn.init.normal_(self.embed.weight, 0.0, d_model ** -0.5)
            with torch.no_grad():
                self.embed.weight[0].zero_()
        else:
            self.embed = RealNumberEmbedding(d_model, spec.real_mean, spec.real_std, spec.real_scale)
        self.embed_dropout = nn.Dropout(dropout)
        if interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be {' or '.join(map(repr, INTERACTIONS))}, got {interaction!r}")
        self.interaction = interaction
        d_in = d_model * ((4 if interaction == "nli" else 2) if spec.dual else 1)
        head_dropout = dropout if head_dropout is None else head_dropout  # None: the model's dropout
        self.head = ClassifierHead(d_in, head_hidden or 2 * d_model, spec.num_classes, head_dropout)

    def encode(self, x: torch.Tensor, mask: torch.Tensor, has_pad: bool | None = None) -> torch.Tensor:
        """(B, L) inputs, (B, L) pad mask -> (B, L, d) features with pads zeroed. `has_pad` (from
        `batch_to`) saves asking the device whether the mask is empty."""
        keep = (~mask).unsqueeze(-1)
        h = self.embed_dropout(self.embed(x)) * keep
        if has_pad is None:
            has_pad = bool(mask.any())  # a host-device sync
        out = self.backbone(h, mask if has_pad else None)
        if not isinstance(out, torch.Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"backbone {type(self.backbone).__name__} returned {got}; the model contract "
                             f"is (B, L, d) = {tuple(h.shape)}")
        return out * keep

    @staticmethod
    def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over time: (B, L, d) -> (B, d)."""
        keep = (~mask).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def forward(self, batch: dict) -> torch.Tensor:
        h = self.encode(batch["x"], batch["mask"], batch.get("has_pad"))
        if self.spec.target == "token":
            return self.head(h)
        rep = self.pool(h, batch["mask"])
        if self.spec.dual:
            rep2 = self.pool(self.encode(batch["x2"], batch["mask2"], batch.get("has_pad2")), batch["mask2"])
            if self.interaction == "concat":
                rep = torch.cat([rep2, rep], dim=-1)
            else:
                rep = torch.cat([rep, rep2, rep * rep2, rep - rep2], dim=-1)
        return self.head(rep)


def batch_to(batch: dict, device) -> dict:
    """Move a batch's tensors to `device` and note, on the host, whether each mask has any pad
    (`has_pad`, `has_pad2`): asking the device each step would stall the launch queue."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    for mask in ("mask", "mask2"):
        if mask in batch:
            out["has_pad" + mask[4:]] = bool(batch[mask].any())
    return out


def _flat(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (N, classes) and targets (N,): per-token targets are flattened."""
    logits = logits.float()
    if logits.dim() == 3:
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return logits, y


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over scored targets (-100 = not scored). Stays on the device: a training
    step that only needs the loss must not wait for the GPU."""
    return F.cross_entropy(*_flat(logits, y), ignore_index=-100)


def loss_and_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Mean cross-entropy over scored targets, number correct, number scored (the counts are host
    integers, so this synchronises with the device: for evaluation, not inside timed steps)."""
    logits, y = _flat(logits, y)
    scored = y != -100
    loss = F.cross_entropy(logits, y, ignore_index=-100)
    correct = int(((logits.argmax(-1) == y) & scored).sum())
    return loss, correct, int(scored.sum())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups honouring per-parameter hints.

    A backbone may set `param._optim = {"lr": ..., "weight_decay": ...}` (the S4 convention) on
    parameters that need their own learning rate or no weight decay; all others share the defaults.
    """
    groups: dict[tuple, list] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        hints = getattr(p, "_optim", {}) or {}
        key = (hints.get("lr", lr), hints.get("weight_decay", weight_decay))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": k[0], "weight_decay": k[1], "initial_lr": k[0]}
            for k, ps in groups.items()]



AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str, dtype: str, cache: bool = True):
    """bf16/fp16 autocast on `device`, or nothing for fp32. `cache=False` inside CUDA graph capture
    (autocast's weight-cast cache would outlive the captured region)."""
    if dtype in AUTOCAST_DTYPES:
        return torch.autocast(device_type=device, dtype=AUTOCAST_DTYPES[dtype], cache_enabled=cache)
    return contextlib.nullcontext()


def build_classifier(model_name: str, task_name: str, overrides: dict | None = None, spec=None,
                     task_options: TaskOptions | dict | None = None):
    """(SequenceModel, registry entry, resolved config, task class) for a model on a task. `spec`
    (default: the task class's) lets a task instance describe its inputs, e.g. the pixel statistics
    of the data set it actually reads. The head (pair interaction, head dropout) follows the task's
    options (`task_options`: a task instance's `options`, a dict of them, or None for the defaults);
    a head dropout of None uses the model's dropout."""
    from harness.registry import MODELS, TASKS

    entry = MODELS.get(model_name)
    task_cls = TASKS.get(task_name).cls
    spec = spec or task_cls.spec
    options = make_options(task_cls.Options, task_options, task_name, spec.dual)
    config = entry.config(task_name, overrides)
    backbone = entry.build(task_name, overrides)
    model = SequenceModel(backbone, spec, config["d_model"], dropout=config.get("dropout", 0.0),
                          interaction=options.interaction, head_dropout=options.head_dropout)
    return model, entry, config, task_cls
