"""Vocabulary trimming: keep only the word-embedding rows of the tokens a deployment sees.

A sentence encoder's word embeddings are often the largest tensor it has (all-MiniLM-L6-v2:
30,522 x 384 = 11.7M of its 22.7M parameters), and most rows belong to tokens a given domain
never produces. `prune(model, VocabConfig(), data=texts)` counts the token ids of the data,
keeps the rows of the tokens seen (and every special token), and replaces the embedding by a
`TrimmedEmbedding`: an id map (old id -> new row; unseen ids -> [UNK]) in front of the smaller
table. The tokenizer does not change, so the trimmed model takes the same inputs; text whose
tokens were all seen gives exactly the untrimmed output, and the held-out cosine measures what
the unseen tokens cost. (Abdaoui et al. 2020; Ushio et al. 2023: trimming keeps multilingual
BERTs' accuracy on one language at a fraction of the embedding size.)

A decoder's language-model head is trimmed with it (`TrimmedLMHead`): it scores only the kept
tokens and writes them into full-vocabulary logits, every trimmed-away token at the dtype's
lowest value (probability 0), so token ids, the tokenizer and generation are unchanged. A head
tied to the word embedding (GPT-2, tied Llama / Qwen) stays tied to the trimmed rows.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from condense.core.errors import ConfigError
from condense.data.calibration import iter_calibration
from condense.models.edits import EDITS, attach_edit_report, record_edit
from condense.models.hf_tokenizer import load_hf_tokenizer
from condense.prune.config import PRUNERS, PruneContext, Pruner, VocabConfig

__all__ = ["TrimmedEmbedding", "TrimmedLMHead", "count_tokens", "prune_vocab"]


class TrimmedEmbedding(nn.Module):
    """`embedding(token_map[ids])`: the kept rows of a word embedding behind an id map."""

    def __init__(self, token_map: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.register_buffer("token_map", token_map.to(torch.int64))
        self.embedding = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=padding_idx)
        with torch.no_grad():
            self.embedding.weight.copy_(weight)

    @property
    def weight(self) -> torch.Tensor:  # code that reads `word_embeddings.weight` sees the kept rows
        return self.embedding.weight

    @property
    def num_embeddings(self) -> int:
        return int(self.token_map.numel())  # the id range the model accepts (the tokenizer's)

    @property
    def embedding_dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.token_map[ids])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} ids -> {self.embedding.num_embeddings} rows"


class TrimmedLMHead(nn.Module):
    """Next-token logits over the full vocabulary computed from the kept rows only: `weight`
    (kept x hidden) scores the kept tokens; the others get the dtype's lowest value."""

    def __init__(self, kept: torch.Tensor, vocab_size: int, weight: nn.Parameter, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("kept", kept.to(torch.int64))
        self.vocab_size = int(vocab_size)
        self.weight = weight  # the trimmed embedding's own Parameter when the head was tied to it
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def out_features(self) -> int:
        return self.vocab_size

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = nn.functional.linear(x, self.weight, self.bias)
        out = scores.new_full((*scores.shape[:-1], self.vocab_size), torch.finfo(scores.dtype).min)
        return out.index_copy(-1, self.kept, scores)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]} kept of {self.vocab_size} tokens"


def _lm_head(model: nn.Module, emb: nn.Embedding) -> tuple[str, nn.Module, bool] | None:
    """(name, head, tied) of a decoder's output embedding over the same vocabulary, or None."""
    hf = getattr(model, "hf", None)
    get = getattr(hf, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        return None
    if head.weight.shape[0] != emb.num_embeddings:
        raise ConfigError(f"vocabulary trimming: the output head has {head.weight.shape[0]} rows but the word "
                          f"embedding {emb.num_embeddings}; they must cover the same vocabulary")
    name = next(n for n, m in model.named_modules() if m is head)
    return name, head, head.weight is emb.weight


def _word_embeddings(model: nn.Module) -> tuple[str, nn.Embedding]:
    hf = getattr(model, "hf", None)
    get = getattr(hf, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        what = type(emb).__name__ if emb is not None else f"{type(model).__name__} (no Hugging Face model at .hf)"
        raise ConfigError(f"vocabulary trimming needs a Hugging Face model (hf:<folder>) whose input embedding is an "
                          f"nn.Embedding; got {what}" + (" (already trimmed)" if isinstance(emb, TrimmedEmbedding) else ""))
    name = next(n for n, m in model.named_modules() if m is emb)
    return name, emb


def count_tokens(data: Any, vocab_size: int, batch_size: int = 64, max_batches: int | None = None) -> torch.Tensor:
    """How often each token id occurs in `data`'s `input_ids` (padding excluded by the attention
    mask). `data`: anything calibration takes (a dataset, a batch dict, an iterable of batches)."""
    if data is None:
        raise ConfigError("vocabulary trimming needs data (prune(..., data=...)) to count the tokens it uses")
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    limit = None if max_batches is None else max_batches * batch_size
    seen = 0
    for batch in iter_calibration(data, limit=limit, batch_size=batch_size):
        if "input_ids" not in batch:
            raise ConfigError(f"vocabulary trimming reads token ids: the data's batches have no 'input_ids' "
                              f"(fields: {sorted(batch)}); give it tokenized text (e.g. a text: or stdlib-text dataset)")
        ids = batch["input_ids"].to(torch.int64)
        mask = batch.get("attention_mask")
        ids = ids[mask.bool()] if mask is not None else ids.reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ConfigError(f"token id {int(ids.max())} is outside the model's vocabulary of {vocab_size}: the data was "
                              "tokenized with another tokenizer")
        counts += torch.bincount(ids, minlength=vocab_size)
        seen += 1
    if seen == 0:
        raise ConfigError("vocabulary trimming needs data (prune(..., data=...)): no batches were read")
    return counts


def _special_ids(model: nn.Module) -> tuple[list[int], int]:
    """(every special token id, the [UNK] id) from the model's tokenizer."""
    tok = load_hf_tokenizer(model)
    if tok.unk_token_id is None:
        raise ConfigError(f"{type(tok).__name__} has no unknown token: trimmed-away ids would have nowhere to go")
    return sorted(set(tok.all_special_ids)), int(tok.unk_token_id)


def prune_vocab(model: nn.Module, cfg: VocabConfig, ctx: PruneContext) -> nn.Module:
    """Keep the embedding rows of the tokens `ctx.data` uses (module docstring); logs "trim_vocab"."""
    if ctx.targets or ctx.ignore:
        raise ConfigError("vocabulary trimming edits the word embedding only; targets / ignore do not apply")
    name, emb = _word_embeddings(model)
    counts = count_tokens(ctx.data, emb.num_embeddings, cfg.batch_size, cfg.max_batches)
    special, unk = _special_ids(model)
    order = torch.argsort(counts, descending=True, stable=True)
    frequent = [int(i) for i in order if counts[i] >= cfg.min_count and int(i) not in special]
    if cfg.max_tokens is not None:
        frequent = frequent[: max(0, cfg.max_tokens - len(special))]
    kept = sorted(set(special) | set(frequent))
    head = _lm_head(model, emb)
    _apply(model, name, emb, kept, unk, head)
    record_edit(model, "trim_vocab", module=name, kept=kept, unk=unk,
                **({} if head is None else {"head": head[0], "tied": head[2]}))
    attach_edit_report(model, "vocab", {
        "vocab_size": emb.num_embeddings, "kept": len(kept), "special": len(special),
        "tokens_read": int(counts.sum()), "distinct_tokens_seen": int((counts > 0).sum()),
        "embedding_params_before": emb.weight.numel(), "embedding_params_after": len(kept) * emb.embedding_dim,
        "lm_head": None if head is None else {"module": head[0], "tied": head[2]},
    })
    return model


def _apply(model: nn.Module, name: str, emb: nn.Embedding, kept: list[int], unk: int,
           head: tuple[str, nn.Module, bool] | None = None) -> None:
    index = torch.tensor(kept, dtype=torch.int64)
    token_map = torch.full((emb.num_embeddings,), kept.index(unk), dtype=torch.int64)
    token_map[index] = torch.arange(len(kept))
    pad = None if emb.padding_idx is None or emb.padding_idx not in kept else kept.index(emb.padding_idx)
    trimmed = TrimmedEmbedding(token_map, emb.weight.detach()[index], padding_idx=pad).to(emb.weight.device)
    if head is not None:
        head_name, lm, tied = head
        bias = getattr(lm, "bias", None)
        weight = trimmed.embedding.weight if tied else nn.Parameter(lm.weight.detach()[index].clone())
        new_head = TrimmedLMHead(index, emb.num_embeddings, weight, None if bias is None else bias.detach()[index])
        model.set_submodule(head_name, new_head.to(emb.weight.device))
        hf_config = getattr(getattr(model, "hf", None), "config", None)
        if tied and hf_config is not None:  # transformers must not re-tie the head to the embedding module
            hf_config.tie_word_embeddings = False
    model.set_submodule(name, trimmed)


def _replay_trim_vocab(model: nn.Module, module: str, kept: list[int], unk: int, head: str | None = None,
                       tied: bool = False) -> None:
    emb = model.get_submodule(module)
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"edit log: trim_vocab names {module!r}, which is a {type(emb).__name__}, not an nn.Embedding")
    lm = None if head is None else (head, model.get_submodule(head), bool(tied))
    _apply(model, module, emb, list(kept), int(unk), lm)  # weights come from the saved state afterwards


PRUNERS.register("vocab", Pruner(VocabConfig, prune_vocab, reads_data=True),
                 help="word-embedding rows of the tokens the data uses (Hugging Face encoders and decoders; tokenizer unchanged)")
EDITS.register("trim_vocab", _replay_trim_vocab)
