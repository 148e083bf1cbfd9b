"""Loading and saving models, LoRA, and the offline tiny base (tokenizer + GPT-2-style model).

An air-gapped site cannot download weights, so ``train_tokenizer`` + ``build_model`` make a base from
scratch: a byte-level BPE tokenizer trained with the ``tokenizers`` library on the corpus, and a small
GPT-2 built from config. ``training.pretrain`` then teaches it English. The shipped result lives in
``training/assets/tiny-base`` (see its PROVENANCE.md).
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Iterable
from pathlib import Path

import torch

from training.config import PretrainConfig, TrainConfig
from training.runtime import unwrap

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TINY_BASE = Path(__file__).parent / "assets" / "tiny-base"

# A minimal chat template for the offline base, so chat-format data works with it too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style: any byte sequence round-trips) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                      model_max_length=1 << 30)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer, config: PretrainConfig) -> torch.nn.Module:
    """A GPT-2-style causal LM sized by ``config``, with tied input/output embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2Config(vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd,
                     n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=config.dropout,
                     embd_pdrop=config.dropout, attn_pdrop=config.dropout, bos_token_id=tokenizer.eos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     tie_word_embeddings=True)
    return GPT2LMHeadModel(gpt)


def load_tokenizer(name: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # masks, not values, decide what padding means here
    return tokenizer


def load_causal_lm(name: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(name), dtype=torch.float32).to(device)


def context_length(model: torch.nn.Module) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in model.parameters():  # tied weights count once
        if id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            total += p.numel()
    return total


def lora_targets(config) -> str | list[str] | None:
    """``config.lora_targets`` as peft takes it: None (peft's default for the architecture), "all-linear", or names."""
    if not config.lora_targets:
        return None
    if config.lora_targets == "all-linear":
        return "all-linear"
    return [name.strip() for name in config.lora_targets.split(",")]


def add_lora(model: torch.nn.Module, config: TrainConfig, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Freeze ``model`` and add LoRA adapters to ``config.lora_targets`` (default: the modules peft picks for
    known architectures)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    # GPT-2's Conv1D stores weights transposed; peft needs to be told (it would warn and guess).
    transposed = any(isinstance(m, Conv1D) for m in model.modules())
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      task_type=task_type, fan_in_fan_out=transposed, target_modules=lora_targets(config))
    return get_peft_model(model, lora)


def servable(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model to save: LoRA adapters merged into a copy (training continues on the
    original)."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def save_pretrained(model: torch.nn.Module, tokenizer, out: Path, dtype: str = "float32") -> None:
    model = servable(model)
    if dtype != "float32":
        model = copy.deepcopy(model).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def train_top_layers(backbone: torch.nn.Module, n: int) -> int:
    """Freeze a transformer backbone's embeddings and every block but the top ``n`` (the final norm
    stays trainable; ``n`` = 0 freezes every block); return the index of the first trainable block.
    Llama-style (``layers``) and GPT-2-style (``h``) backbones."""
    name = "layers" if isinstance(getattr(backbone, "layers", None), torch.nn.ModuleList) else "h"
    blocks = getattr(backbone, name, None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"cannot find the transformer blocks of {type(backbone).__name__} (no layers or h)")
    if not 0 <= n <= len(blocks):
        raise ValueError(f"the number of trained layers must be in 0..{len(blocks)} for this model, got {n}")
    split = len(blocks) - n
    for param_name, param in backbone.named_parameters():
        parts = param_name.split(".")
        top = parts[0] == name and int(parts[1]) >= split
        param.requires_grad_(top or parts[0] in ("norm", "ln_f"))
    return split


@functools.cache
def _forward_takes(model_type: type, argument: str) -> bool:
    return argument in inspect.signature(model_type.forward).parameters


def _innermost(model: torch.nn.Module) -> torch.nn.Module:
    inner = unwrap(model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the causal LM under any DDP or PEFT wrapper takes ``logits_to_keep`` (transformers' models
    do: logits for the last n positions only, so a caller that reads a few positions skips the LM head's
    vocabulary-wide matmul on the others)."""
    return _forward_takes(type(_innermost(model)), "logits_to_keep")


def drops_kv_cache(model: torch.nn.Module) -> bool:
    """Whether the model under any DDP or PEFT wrapper ignores ``use_cache``: transformers turns the cache
    off in training mode with activation (gradient) checkpointing on."""
    inner = _innermost(model)
    name = ("is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing")
            else "is_gradient_checkpointing")  # the new name, without the old one's deprecation warning
    return inner.training and bool(getattr(inner, name, False))


def returned_cache(output, keyword: str | None):
    """The KV cache in a forward's output (``output.cache`` in transformers 5.x, ``past_key_values`` before)."""
    return output[keyword] if keyword and keyword in output else output.past_key_values


def prefix_cache(model: torch.nn.Module, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, rows: torch.Tensor,
                 **options):
    """One forward over each (left-padded) prefix, its KV cache then copied to ``rows`` (each row's prefix
    index): a prefix's share of the forward, and of the backward through the copies, is paid once. Returns
    (the pass's output, {the forward argument that takes the cache: the cache})."""
    keyword = cache_keyword(model)
    head = model(input_ids=prefix_ids, attention_mask=prefix_mask,
                 position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0), use_cache=True, **options)
    cache = returned_cache(head, keyword)
    cache.batch_select_indices(rows)
    return head, {keyword: cache}


def prefix_shared_passes(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, drop_last: bool = False,
                         **prefix_options):
    """Run a batch in the shared-prefix layout (``training.reward.collate_rankings`` with ``share_prefix``, or
    RLOO's groups: ``training.ppo.group_layout``): each group's prefix once (``prefix_cache``) and every
    row's tail (``tail_ids``, right-padded) on its copy of the cache; ``drop_last`` leaves out the tails'
    last column (a caller reading the logits that predict each tail token needs no output there). Returns
    (prefix pass output, tail pass output)."""
    prefix_mask, rows = batch["prefix_mask"], batch["row_group"]
    head, cache = prefix_cache(model, batch["prefix_ids"], prefix_mask, rows, **prefix_options)
    tail_ids, tail_mask = batch["tail_ids"], batch["tail_mask"]
    if drop_last:
        tail_ids, tail_mask = tail_ids[:, :-1], tail_mask[:, :-1]
    start = prefix_mask.sum(dim=1)[rows]
    positions = start[:, None] + torch.arange(tail_ids.size(1), device=tail_ids.device)[None, :]
    tail = model(input_ids=tail_ids, attention_mask=torch.cat([prefix_mask[rows], tail_mask], dim=1),
                 position_ids=positions, use_cache=True, **cache)
    return head, tail


def tail_token_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, T, V]: the causal LM's logits that predict each row's tail tokens in the shared-prefix layout (tails
    of at least 2 columns): the prefix's last position predicts the first, the tail pass the rest."""
    last_only = {"logits_to_keep": 1} if keeps_logits(model) else {}
    head, tail = prefix_shared_passes(model, batch, drop_last=True, **last_only)
    return torch.cat([head.logits[:, -1:][batch["row_group"]], tail.logits], dim=1)


def shares_prefixes(model: torch.nn.Module) -> bool:
    """Whether a prefix's KV cache can be computed once and reused for several rows (``prefix_shared_passes``,
    RLOO's groups in ``training.ppo``): for a model that takes a KV cache and keeps it on, not under DDP
    (which expects one forward per backward; a wrapper that calls it inside its own forward is fine)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return False
    return cache_keyword(model) is not None and not drops_kv_cache(model)


def cache_keyword(model: torch.nn.Module) -> str | None:
    """The forward argument of the model under any DDP or PEFT wrapper that takes a KV cache: ``cache``
    (transformers 5.x renamed it), ``past_key_values``, or None for a model that takes none."""
    inner = type(_innermost(model))
    return next((name for name in ("cache", "past_key_values") if _forward_takes(inner, name)), None)
