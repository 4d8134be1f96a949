"""Luna: Linear Unified Nested Attention (Ma, Kong, Wang, Zhou, May, Ma & Zettlemoyer, NeurIPS 2021,
arXiv 2106.01540), bidirectional encoder as in the official LRA code (XuezheMax/fairseq-apollo,
`luna_attention.py`, `luna_sentence_encoder.py`, `models/lra/model.py`). Luna-256: l = 256.

Each layer carries two sequences, X (B, n, d) and a short "projected" sequence P (B, l, d):
- pack:   Y_P = softmax((P W_pq)(X W_pk)^T / sqrt(dh)) (X W_pv), multi-head, no output projection,
          padded tokens of X masked as keys; cost O(l n);
- unpack: Y_X = softmax((X W_q)(Y_P W_k)^T / sqrt(dh)) (Y_P W_v) W_o, cost O(n l);
- post-LN updates X <- LN(X + Y_X), P <- LN(P + Y_P), then X <- LN(X + FFN(X)); P gets no FFN.
Both softmaxes (bidirectional Luna uses softmax in pack and unpack; softplus/elu belong to the
causal variant only) run in float32, also under autocast, with a finite mask value. K and V are
untied as in the LRA code (`tie_kv=False`: 7 d x d maps per layer); `tie_kv=True` shares one map for
the pack keys/values and one for the unpack keys/values.

The initial P is a learned (l, d) parameter shared by the batch, given the same embedding-side
treatment as X in the LRA code: LayerNorm (`embed_norm`, LRA's layernorm_embedding) and dropout.
P gets no positions: adding a fixed table to a free parameter would only shift its initialisation.
Dynamic projection (LRA default): slot j of an example with n_b real tokens is masked as an unpack
key when j >= n_b, so short sequences use min(l, n_b) slots. Slots are independent until the unpack,
so masking them equals the official truncation of P to the batch's longest length; only slots
beyond the input length are cut off (without asking the device for the lengths).

Padding: pad tokens are masked in the pack softmax and the unpack never sees X as keys, so outputs
at real positions do not depend on the content or the number of pads. Padded output rows are
zeroed. Causal Luna (the softplus/cumulative-sum form) is out of scope for these encoders.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.transformer import POSITIONS, check_heads, sinusoidal_positions

PAPER = "Ma et al., NeurIPS 2021 (arXiv 2106.01540); LRA configs from fairseq-apollo (2021-11)"
MASK_VALUE = -1e9  # finite: a row with every key masked (a pad row) stays finite


@dataclass
class LunaConfig:
    """Architecture of a Luna encoder. Defaults: the paper's Text model with l = 256."""

    d_model: int = 256  # model width
    n_layers: int = 4  # post-LN Luna layers
    n_heads: int = 4  # heads of pack and unpack, splitting d_model evenly
    d_ffn: int = 1024  # FFN hidden width
    projection_length: int = 256  # l: Luna-256
    dropout: float = 0.1  # residual dropout (and on P)
    attn_dropout: float = 0.1  # on the attention weights
    act_dropout: float = 0.0  # on the FFN hidden layer
    positions: str = "sinusoidal"  # added to X (the 2021 LRA code learned them; the harness has no table)
    tie_kv: bool = False  # LRA: separate key and value maps in pack and unpack
    dynamic_projection: bool = True  # mask P slots j >= the example's length (LRA default)
    embed_norm: bool = True  # LayerNorm on X's and P's embeddings (LRA layernorm_embedding)
    bert_init: bool = False  # N(0, 0.02) weights (LRA ListOps/Text)

    def __post_init__(self):
        check_config("luna", dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "n_heads", "d_ffn", "projection_length"),
                     probability=("dropout", "attn_dropout", "act_dropout"),
                     flags=("tie_kv", "dynamic_projection", "embed_norm", "bert_init"),
                     choices=dict(positions=POSITIONS))
        check_heads("luna", self.d_model, self.n_heads)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (a float64 input stays float64, for exact reference checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def masked_attention(q, k, v, key_mask, dropout: float = 0.0):
    """softmax(q kᵀ / sqrt(dh)) v with dropout on the weights; q (B, H, Lq, dh), k, v (B, H, Lk, dh),
    key_mask (B, Lk) True = masked, or None. Called with fp32 inputs; torch SDPA, so the (Lq x Lk)
    weights are not kept for backward where a fused kernel runs."""
    bias = None
    if key_mask is not None:  # finite additive mask (B, 1, 1, Lk)
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(key_mask, MASK_VALUE)
        bias = bias[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


class LunaAttention(nn.Module):
    """Pack then unpack: (X (B, n, d), P (B, l, d)) -> (Y_X (B, n, d), Y_P (B, l, d))."""

    def __init__(self, cfg: LunaConfig):
        super().__init__()
        d_model, tie_kv, attn_dropout = cfg.d_model, cfg.tie_kv, cfg.attn_dropout
        self.n_heads, self.head_dim, self.tie_kv = cfg.n_heads, d_model // cfg.n_heads, tie_kv
        self.pq = nn.Linear(d_model, d_model)  # pack queries from P
        self.q = nn.Linear(d_model, d_model)  # unpack queries from X
        if tie_kv:
            self.pc = nn.Linear(d_model, d_model)  # pack keys = values, from X
            self.c = nn.Linear(d_model, d_model)  # unpack keys = values, from Y_P
            inputs = (self.pq, self.q, self.pc, self.c)
        else:
            self.pk, self.pv = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
            self.k, self.v = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
            inputs = (self.pq, self.q, self.pk, self.pv, self.k, self.v)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = attn_dropout  # on the pack and the unpack weights
        # fairseq-apollo's init: xavier with gain 1/sqrt(2) on the input maps, xavier on the output
        for layer in inputs:
            nn.init.xavier_uniform_(layer.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def split(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B, H, N, dh)
        return t.view(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    @staticmethod
    def merge(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, dh) -> (B, N, d)
        return t.transpose(1, 2).flatten(2)

    def forward(self, x, p, x_mask, p_mask):
        """x_mask (B, n) True = pad; p_mask (B, l) True = masked slot; either may be None."""
        p_drop = self.attn_dropout if self.training else 0.0
        pk, pv = (self.pc(x),) * 2 if self.tie_kv else (self.pk(x), self.pv(x))  # tied: one map, twice
        pq, pk, pv = self.split(self.pq(p)), self.split(pk), self.split(pv)  # under the ambient autocast
        with torch.autocast(device_type=x.device.type, enabled=False):  # softmax and sums in fp32
            pq, pk, pv = at_least_fp32(pq), at_least_fp32(pk), at_least_fp32(pv)
            y_p = masked_attention(pq, pk, pv, x_mask, p_drop)  # (B, H, l, dh)
        y_p = self.merge(y_p).to(p.dtype)  # (B, l, d): the packed context, no output projection
        k, v = (self.c(y_p),) * 2 if self.tie_kv else (self.k(y_p), self.v(y_p))
        q, k, v = self.split(self.q(x)), self.split(k), self.split(v)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = at_least_fp32(q), at_least_fp32(k), at_least_fp32(v)
            y_x = masked_attention(q, k, v, p_mask, p_drop)  # (B, H, n, dh)
        return self.out(self.merge(y_x).to(x.dtype)), y_p


class LunaLayer(nn.Module):
    """Post-LN Luna layer (LunaSentenceEncoderLayer with normalize_before=False). The last layer's
    P update is never read, so that layer has no P LayerNorm (`update_p=False`) and returns P as is."""

    def __init__(self, cfg: LunaConfig, update_p: bool = True):
        super().__init__()
        d_model, d_ffn = cfg.d_model, cfg.d_ffn
        self.attn = LunaAttention(cfg)
        self.norm_x, self.norm_ffn = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.norm_p = nn.LayerNorm(d_model) if update_p else None
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Dropout(cfg.act_dropout),
                                 nn.Linear(d_ffn, d_model))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, p, x_mask, p_mask):
        y_x, y_p = self.attn(x, p, x_mask, p_mask)
        x = self.norm_x(x + self.dropout(y_x))  # (B, n, d)
        if self.norm_p is not None:
            p = self.norm_p(p + self.dropout(y_p))  # (B, l, d): carried to the next layer, no FFN
        return self.norm_ffn(x + self.dropout(self.ffn(x))), p


class LunaEncoder(nn.Module):
    """(B, L, d) + padding mask (B, L, True = pad) -> (B, L, d)."""

    def __init__(self, cfg: LunaConfig):
        super().__init__()
        d_model, n_layers = cfg.d_model, cfg.n_layers
        self.positions, self.dynamic_projection = cfg.positions, cfg.dynamic_projection
        self.projected = nn.Parameter(torch.randn(cfg.projection_length, d_model) * d_model ** -0.5)  # initial P
        # LRA's layernorm_embedding: one LayerNorm for X's embeddings, one for P
        self.norm_x_in = nn.LayerNorm(d_model) if cfg.embed_norm else nn.Identity()
        self.norm_p_in = nn.LayerNorm(d_model) if cfg.embed_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)  # on P (X's embedding dropout is the harness's)
        self.layers = nn.ModuleList(LunaLayer(cfg, update_p=i < n_layers - 1) for i in range(n_layers))
        if cfg.bert_init:  # fairseq's init_bert_params (LRA ListOps/Text): N(0, 0.02) weights, zero biases
            for module in self.layers.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0.0, 0.02)
                    nn.init.zeros_(module.bias)
            nn.init.normal_(self.projected, 0.0, 0.02)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = x.shape
        if self.positions == "sinusoidal":
            x = x + sinusoidal_positions(L, d, x.device, x.dtype)
        x = self.norm_x_in(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        # Slots past the input length are masked for every example: cut them (a static shape).
        n_slots = min(self.projected.shape[0], L) if self.dynamic_projection else self.projected.shape[0]
        p = self.dropout(self.norm_p_in(self.projected[:n_slots]).expand(B, n_slots, d))  # (B, l', d)
        p_mask = None
        if self.dynamic_projection and padding_mask is not None:
            real = (~padding_mask).sum(1)  # (B,) real tokens n_b
            p_mask = torch.arange(n_slots, device=x.device)[None, :] >= real[:, None]  # (B, l')
            p = p.masked_fill(p_mask[..., None], 0.0)
        for layer in self.layers:
            x, p = layer(x, p, padding_mask, p_mask)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        return x


# The Luna LRA runs (spec §4.4; fairseq-apollo 2021-11 scripts; l = 256, projected heads = heads).
# ListOps ran with `--encoder-layers 1`; ListOps and Text used BERT init. For parity runs
# (`build(task, overrides=PAPER_TASK_CONFIGS[task])`); Path-X has no Luna config: Pathfinder's.
# Their backbones are 0.5x (ListOps), 1.3x (Text, Retrieval) and 7x / 28x (Image / Pathfinder: d 64 /
# 128 plus the 256 x d table P) the LRA Transformer's, so they are not the defaults.
PAPER_TASK_CONFIGS = {
    "listops": dict(d_model=512, n_layers=1, n_heads=8, d_ffn=2048, dropout=0.1, attn_dropout=0.1,
                    act_dropout=0.0, bert_init=True),
    "text": dict(d_model=256, n_layers=4, n_heads=4, d_ffn=1024, dropout=0.3, attn_dropout=0.3,
                 act_dropout=0.0, bert_init=True),
    "retrieval": dict(d_model=128, n_layers=4, n_heads=4, d_ffn=512, dropout=0.1, attn_dropout=0.1,
                      act_dropout=0.0, bert_init=False),
    "image": dict(d_model=64, n_layers=1, n_heads=8, d_ffn=128, dropout=0.3, attn_dropout=0.1,
                  act_dropout=0.0, bert_init=False),
    "pathfinder": dict(d_model=128, n_layers=1, n_heads=4, d_ffn=128, dropout=0.2, attn_dropout=0.1,
                       act_dropout=0.0, bert_init=False),
}
PAPER_TASK_CONFIGS["pathx"] = dict(PAPER_TASK_CONFIGS["pathfinder"])

# Defaults per task: the paper's per-task settings (heads, dropouts, init, l = 256) at the LRA
# Transformer's parameter budget (backbone within 10% of models/transformer.py's, as the other
# baselines). ListOps/Text/Retrieval keep the Transformer's width and the paper's FFN and set the
# depth by the budget (2, 3, 3 layers instead of 1, 4, 4). Image/Pathfinder/Path-X: the Transformer's
# backbones there are 6.5-8.6K parameters and P alone is 256 d, so d 16 with 2 heads (head size 8,
# as the paper's Image model) and 1 layer, FFN 4 d (Image) and d (Pathfinder, as the paper's); P is
# then 4K of them.
TASK_CONFIGS = {
    "listops": dict(PAPER_TASK_CONFIGS["listops"], n_layers=2),
    "text": dict(PAPER_TASK_CONFIGS["text"], n_layers=3),
    "retrieval": dict(PAPER_TASK_CONFIGS["retrieval"], n_layers=3),
    "image": dict(PAPER_TASK_CONFIGS["image"], d_model=16, n_heads=2, d_ffn=64),
    "pathfinder": dict(PAPER_TASK_CONFIGS["pathfinder"], d_model=16, n_heads=2, d_ffn=16),
    "pathx": dict(PAPER_TASK_CONFIGS["pathx"], d_model=16, n_heads=2, d_ffn=16),
}
# fairseq-apollo's LRA scripts: Adam (0.9, 0.98), inverse-sqrt after warm-up (the harness decays
# linearly from the same peak); the scripts' batch is 2 GPUs x half. Path-X: Pathfinder's.
TRAIN_CONFIGS = {
    "listops": dict(lr=1e-4, weight_decay=1e-4, batch_size=32, warmup_steps=1000, total_steps=5000),
    "text": dict(lr=5e-5, weight_decay=1e-4, batch_size=32, warmup_steps=8000, total_steps=20000),
    "retrieval": dict(lr=5e-4, weight_decay=1e-4, batch_size=32, warmup_steps=8000, total_steps=20000),
    "image": dict(lr=5e-3, weight_decay=0.0, batch_size=256, warmup_steps=4000, total_steps=35000),
    "pathfinder": dict(lr=1e-3, weight_decay=0.0, batch_size=512, warmup_steps=4000, total_steps=62500),
}
TRAIN_CONFIGS["pathx"] = dict(TRAIN_CONFIGS["pathfinder"])
DEFAULTS = registry_defaults(LunaConfig())
# Tiny (parameter-matched to the other families' tiny variants, dropout 0: see models/transformer.py
# TINY). P (256 x 32 = 8K) is a third of the ~25K backbone budget, so the FFN is narrower than the
# Transformer's 4 d: 2 layers with d_ffn = 24. Xavier init (bert_init off) as in the full defaults.
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ffn=24, projection_length=256, dropout=0.0,
            attn_dropout=0.0, act_dropout=0.0, bert_init=False)


@register_model("luna", family="attention", paper=PAPER, complexity="O(L*l)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY,
                published=dict(speed=4.9, memory=0.16, source="MEGA Table 2 (MEGA authors' GPU runs)"))
def luna(**cfg):
    """Luna-256 (pack/unpack attention through 256 learned slots), post-LN, LRA layout"""
    return LunaEncoder(config_from_kwargs(LunaConfig, "luna", cfg))
