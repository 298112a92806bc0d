"""Token-array embedding inputs decoded back to text: clients such as langchain's OpenAIEmbeddings tokenize with
tiktoken's cl100k_base (their fallback for models OpenAI does not know) and send the token ids."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from control_plane.errors import BadRequest

#: The encoding token arrays are read in (what tiktoken-based clients use for non-OpenAI model names).
ENCODING = "cl100k_base"
#: Its ordinary tokens, 0 .. CL100K_ORDINARY - 1 (the special ones after them are not text).
CL100K_ORDINARY = 100_256


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai  # the tokenizer data ships inside the wheel: no download at run time

    return bpe_openai.get_encoding(ENCODING)


def _token_id(t: Any) -> int | None:
    """A JSON integer (2.0 included, as JSON Schema counts it) as an int; None for anything else."""
    if isinstance(t, float) and t.is_integer():
        return int(t)
    return t if isinstance(t, int) and not isinstance(t, bool) else None


def decode(tokens: list[Any], where: str) -> str:
    """One token array as text; ids that are not ordinary cl100k_base tokens are a 400."""
    encoding = _encoding()
    ids = [_token_id(t) for t in tokens]
    if not ids or not all(t is not None and 0 <= t < CL100K_ORDINARY for t in ids):
        raise BadRequest(f"{where} must be a non-empty list of {ENCODING} token ids (0-{CL100K_ORDINARY - 1})",
                         param="input")
    tokens = ids
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
    if all(_token_id(item) is not None for item in raw):
        return [decode(raw, "input")]
    if all(isinstance(item, list) for item in raw):
        return [decode(item, f"input[{i}]") for i, item in enumerate(raw)]
    raise BadRequest("input must be a string, a list of strings, a token array or a list of token arrays",
                     param="input")
