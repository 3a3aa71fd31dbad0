"""Frozen UMT5 text encoder as Wan uses it (upstream `wan/modules/t5.py: T5EncoderModel`).

Matching upstream:
* prompts are cleaned with `clean='whitespace'`: ftfy fix (when ftfy is installed, as diffusers
  does), HTML unescaped twice, whitespace runs collapsed, stripped;
* tokenised with the special tokens (UMT5 appends `</s>`), padded / truncated to `text_len` = 512;
* the encoder runs with the attention mask and each output is trimmed to its true token count
  (`[u[:v] for u, v in zip(context, seq_lens)]`, EOS included); the Wan DiT zero-pads them back to
  512 itself (`pad_to` here does the same for callers that need a dense batch).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import regex
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from .common import (
    EncoderLoadError,
    FrozenModule,
    PathLike,
    empty_weights,
    find_component,
    find_file,
    load_into,
    missing_path_error,
    read_state_dict,
)
from .original import UMT5_XXL_CONFIG, WAN_T5_FILE, WAN_T5_TOKENIZER, wan_t5_to_hf
from .prompt_cache import PromptCache, files_fingerprint, module_fingerprint

logger = logging.getLogger(__name__)

TEXT_LEN = 512


def clean_prompt(text: str, mode: str | None = "whitespace") -> str:
    """Upstream `HuggingfaceTokenizer._clean` for `None` / `'whitespace'` / `'lower'`."""
    if mode is None:
        return text
    if mode not in ("whitespace", "lower"):
        raise ValueError(f"clean must be None, 'whitespace' or 'lower', got {mode!r}")
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass  # ftfy only repairs mis-decoded unicode; well-formed prompts are unaffected
    text = regex.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()
    return text.lower() if mode == "lower" else text


def pad_to(embeds: Sequence[torch.Tensor], length: int = TEXT_LEN) -> torch.Tensor:
    """Zero-pad `[L_i, dim]` embeddings to a `[B, length, dim]` batch, as the Wan DiT does."""
    if not embeds:
        raise ValueError("pad_to needs at least one embedding")
    longest = max(e.shape[0] for e in embeds)
    if longest > length:
        raise ValueError(f"an embedding has {longest} tokens, more than the padded length {length}")
    out = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
    for i, e in enumerate(embeds):
        out[i, : e.shape[0]] = e
    return out


class WanTextEncoder(FrozenModule):
    """`encode(prompts) -> [L_i, dim]` tensors, with an in-memory LRU and an optional disk cache.

    Cached embeddings are kept on the CPU and copied to the model's device on return.
    `identity` names the weights in disk-cache keys; by default a fingerprint of the loaded files
    (or, for a model built in memory, of its state dict and vocabulary).
    """

    def __init__(
        self,
        model: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        text_len: int = TEXT_LEN,
        clean: str | None = "whitespace",
        cache_size: int = 256,
        cache_dir: PathLike | None = None,
        identity: str | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        clean_prompt("", clean)  # validate the mode early
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.clean = clean
        self.batch_size = batch_size
        self._identity = identity
        self.cache = PromptCache(cache_size, cache_dir)
        self.freeze()

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = module_fingerprint(self.model, self.tokenizer)
        return self._identity

    def _keys(self, prompt: str) -> tuple[str, str | None]:
        """(memory key, disk key); the weights' identity is only computed for a disk cache."""
        memory = f"{self.dtype}|{prompt}"
        if self.cache.directory is None:
            return memory, None
        return memory, f"{self.identity}|{self.dtype}|len={self.text_len}|clean={self.clean}|{prompt}"

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask `[B, text_len]` for already-cleaned prompts."""
        out = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def _forward(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        device = self.device
        context = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        for prompt, n in zip(prompts, lengths, strict=True):
            if n >= self.text_len:
                logger.warning("prompt truncated to %d tokens: %.60r...", self.text_len, prompt)
        # clone: a view would keep the whole padded batch alive inside the cache
        return [u[:n].clone() for u, n in zip(context, lengths, strict=True)]

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> list[torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        cleaned = [clean_prompt(p, self.clean) for p in prompts]
        found: dict[str, torch.Tensor] = {}
        todo: list[str] = []
        for prompt in dict.fromkeys(cleaned):
            memory_key, disk_key = self._keys(prompt)
            hit = self.cache.get(memory_key, prompt, disk_key)
            if hit is None:
                todo.append(prompt)
            else:
                found[prompt] = hit
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            for prompt, emb in zip(batch, self._forward(batch), strict=True):
                memory_key, disk_key = self._keys(prompt)
                self.cache.put(memory_key, prompt, emb, disk_key)
                found[prompt] = emb
        device = self.device
        return [found[p].to(device) for p in cleaned]

    forward = encode

    def encode_padded(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """`[B, text_len, dim]` zero-padded batch."""
        return pad_to(self.encode(prompts), self.text_len)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        tokenizer: PathLike | PreTrainedTokenizerBase | None = None,
        subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device | None = None,
        config: Mapping[str, Any] | None = None,
        allow_download: bool = False,
        **options: Any,
    ) -> WanTextEncoder:
        """Load from a diffusers pipeline folder (`text_encoder/` + `tokenizer/`), a transformers
        folder (`config.json` + tokenizer files), an original Wan folder
        (`models_t5_umt5-xxl-enc-bf16.pth` + `google/umt5-xxl/`) or that `.pth` itself, or, with
        `allow_download`, a hub id. `config` overrides the umt5-xxl architecture assumed for an
        original `.pth`.
        """
        root = Path(path)
        given = tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None
        if root.exists():
            folder = find_component(root, subfolder) if root.is_dir() else None
            if folder is not None:
                model = _load_hf(folder, dtype)
                tok_dir = root / tokenizer_subfolder if (root / tokenizer_subfolder).is_dir() else folder
                files = [folder]
            else:
                weights = root if root.is_file() else find_file(root, [WAN_T5_FILE])
                if weights is None:
                    raise missing_path_error(root, f"{subfolder}/config.json, config.json or {WAN_T5_FILE}")
                model = _load_original_t5(weights, config)
                tok_dir = weights.parent / WAN_T5_TOKENIZER
                files = [weights]
            if given is None:
                tok_dir = Path(tokenizer) if tokenizer is not None else tok_dir
                given = _load_tokenizer(tok_dir)
                files.append(tok_dir)
            options.setdefault("identity", files_fingerprint(files, type(given).__name__, str(len(given))))
        elif allow_download:
            model = _load_hf(str(path), dtype, subfolder=subfolder, local=False)
            if given is None:
                sub = {"subfolder": tokenizer_subfolder} if tokenizer is None else {}
                given = AutoTokenizer.from_pretrained(str(tokenizer or path), **sub)
        else:
            raise missing_path_error(path, "a text encoder folder or a Wan T5 checkpoint file")
        model = model.to(device=device, dtype=dtype)
        return cls(model, given, **options)


def _load_hf(where: PathLike, dtype: torch.dtype, subfolder: str | None = None, local: bool = True):
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return UMT5EncoderModel.from_pretrained(str(where), dtype=dtype, local_files_only=local, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the path
        raise EncoderLoadError(f"{where}: cannot load UMT5EncoderModel: {exc}") from exc


def _load_tokenizer(where: Path) -> PreTrainedTokenizerBase:
    if not where.is_dir():
        raise FileNotFoundError(f"{where}: tokenizer folder not found (pass tokenizer=PATH)")
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the path
        raise EncoderLoadError(f"{where}: cannot load tokenizer: {exc}") from exc


def _load_original_t5(path: Path, config: Mapping[str, Any] | None) -> UMT5EncoderModel:
    state = read_state_dict(path)
    try:
        state = wan_t5_to_hf(state)
    except KeyError as exc:
        raise EncoderLoadError(f"{path}: not a Wan T5 encoder checkpoint: {exc}") from exc
    cfg = UMT5Config(**{**UMT5_XXL_CONFIG, **(config or {})})
    with empty_weights():
        model = UMT5EncoderModel(cfg)
    load_into(model, state, path)
    # One embedding table, as in the original encoder (`.to()` keeps a shared Parameter shared).
    model.encoder.embed_tokens.weight = model.shared.weight
    return model.eval()
