"""A small causal transformer in the style of nanoGPT: pre-LayerNorm blocks, learned absolute positions
(or rotary), a GELU MLP, a final LayerNorm and an untied output head. The activation and the LayerNorms
are parameters (the loss-of-plasticity literature varies both)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plasticity.models.registry import register
from plasticity.models.units import UnitLayer, activation, check_activation, layer_norm
from streams.checks import check_int

MAX_LAYERS = 1024

INIT_STD = 0.02


def rotary_tables(head_dim: int, max_seq_len: int, base: float = 10000.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # [T, head_dim/2]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the (first half, second half) feature pairs of `x [B, H, T, hd]` by position angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class TransformerConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    dropout: float = 0.0
    rotary: bool = False  # rotary positions instead of learned absolute ones
    activation: str = "gelu"  # of the MLP's hidden units: gelu | relu | tanh
    layer_norm: bool = True  # false: no LayerNorm anywhere (the blocks' and the final one)

    def __post_init__(self) -> None:
        check_activation(self.activation)
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"model.layer_norm={self.layer_norm!r}: must be true or false")
        check_int("model", "n_layers", self.n_layers, 1, MAX_LAYERS)
        for key in ("d_model", "n_heads", "d_ff"):
            check_int("model", key, getattr(self, key), 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout={self.dropout!r}: must be in [0, 1)")
        if not isinstance(self.rotary, bool):
            raise ValueError(f"model.rotary={self.rotary!r}: must be true or false")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if self.rotary and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model.rotary: rotary positions need an even head size, "
                             f"got {self.d_model // self.n_heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig, max_seq_len: int):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.rotary = cfg.rotary
        if cfg.rotary:
            cos, sin = rotary_tables(cfg.d_model // cfg.n_heads, max_seq_len)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, H, T, d_head] (rotary positions applied to q and k)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (z.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for z in (q, k, v))
        if self.rotary:
            q, k = apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(x.shape)))

    def explicit(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The same output with the attention pattern materialized (no dropout): for the geometry probes."""
        q, k, v = self.heads(x)
        T = x.shape[1]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        y = self.proj((attn @ v).transpose(1, 2).reshape(x.shape))
        return y, {"q": q, "k": k, "attn": attn}


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = activation(cfg.activation)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, max_seq_len: int):
        super().__init__()
        self.ln1 = layer_norm(cfg.d_model, cfg.layer_norm)
        self.attn = CausalSelfAttention(cfg, max_seq_len)
        self.ln2 = layer_norm(cfg.d_model, cfg.layer_norm)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@register
class Transformer(nn.Module):
    name = "transformer"
    description = "causal pre-LayerNorm transformer (nanoGPT style), learned or rotary positions"
    Config = TransformerConfig
    width_param = None  # the reference the baselines are matched to

    def __init__(self, cfg: TransformerConfig, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.max_seq_len = cfg, vocab_size, max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = None if cfg.rotary else nn.Embedding(max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, max_seq_len) for _ in range(cfg.n_layers))
        self.ln_f = layer_norm(cfg.d_model, cfg.layer_norm)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)

        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layers).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.max_seq_len}")
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=tokens.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(tokens))

    def internals(self, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per block: q, k, the attention pattern and the residual stream after it (plasticity.eval.geometry)."""
        T = tokens.shape[1]
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=tokens.device))
        out = []
        for block in self.blocks:
            y, parts = block.attn.explicit(block.ln1(x))
            x = x + y
            x = x + block.mlp(block.ln2(x))
            out.append({**parts, "residual": x})
        return out

    def readout(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits of a residual stream read through the final LayerNorm and the head (the logit lens)."""
        return self.head(self.ln_f(residual))

    def unit_layers(self) -> list[UnitLayer]:
        return [
            UnitLayer(f"block{i}.mlp", b.mlp.fc, b.mlp.act, b.mlp.proj, INIT_STD)
            for i, b in enumerate(self.blocks)
        ]
