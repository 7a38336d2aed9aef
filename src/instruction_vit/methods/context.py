"""The learned context of the CLIP prompt learners (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC): how an initial phrase
(``model.options.ctx_init``) and a length (``model.options.n_ctx``; PromptSRC's ``n_ctx_text``) give the context
vectors. One rule for the five methods, the official code's:

* With a phrase, the context starts as the word embeddings of the phrase's first ``n_ctx`` *tokens*, and the rest of
  the phrase stays in every class text as frozen words after the context: ``[SOS] v_1..v_n <rest of the phrase>
  <name>. [EOS]``. The CoOp family's ``n_ctx`` is by default the phrase's number of *words* (the official CoOp,
  CoCoOp and KgCoOp set ``n_ctx = len(ctx_init.split(" "))``): "itap of a" is 3 words and 4 CLIP tokens ("it",
  "ap", "of", "a"), so 3 vectors learn and "a" stays in the text. A context longer than the phrase's tokens is
  refused with the fix (the official MaPLe and PromptSRC fall back to a random context there, without a word).
* Without a phrase (``ctx_init: null``), ``n_ctx`` vectors drawn from N(0, 0.02) and as many placeholder words in the
  text (the CoOp family: 16 by default, CoOp's own setting).

Underscores in a phrase read as spaces, as in the official code (whose scripts pass phrases as ``a_photo_of_a``).
"""

from __future__ import annotations

from ..errors import ConfigError

#: The phrase the papers initialise from (CoCoOp, KgCoOp, MaPLe, PromptSRC; CoOp's ``ctxv1`` configs).
PHOTO_PHRASE = "a photo of a"
#: The CoOp family's context length without a phrase: CoOp's default (16 random vectors, class token at the end).
RANDOM_CONTEXT = 16


def clean_phrase(phrase: str | None) -> str | None:
    """The phrase as the official code reads it: underscores as spaces, runs of spaces as one; empty: ``None``."""
    if phrase is None:
        return None
    return " ".join(phrase.replace("_", " ").split()) or None


def phrase_words(phrase: str) -> int:
    """The number of words of ``phrase`` (the official CoOp family's context length for it)."""
    return len(clean_phrase(phrase).split()) if clean_phrase(phrase) else 0


def context_length(n_ctx: int | None, phrase: str | None, key: str = "model.options.n_ctx") -> int:
    """The number of context vectors: ``n_ctx``, or when it is ``None`` the phrase's number of words (no phrase:
    :data:`RANDOM_CONTEXT`). Fewer than one is a :class:`ConfigError`."""
    n = n_ctx if n_ctx is not None else phrase_words(phrase) if clean_phrase(phrase) else RANDOM_CONTEXT
    if n < 1:
        raise ConfigError(f"{key}={n}: a learned context has at least 1 vector")
    return n


def check_phrase_tokens(n: int, tokens: int, phrase: str, key: str = "model.options.n_ctx") -> None:
    """``n`` context vectors start from the first ``n`` of ``phrase``'s ``tokens`` tokens: more is a
    :class:`ConfigError` naming the fixes (the official MaPLe and PromptSRC silently take a random context)."""
    if n > tokens:
        raise ConfigError(f"{key}={n} context tokens, but model.options.ctx_init={phrase!r} gives {tokens}: set a "
                          f"shorter {key}, a longer phrase, or model.options.ctx_init=null for a random context")


__all__ = ["PHOTO_PHRASE", "RANDOM_CONTEXT", "check_phrase_tokens", "clean_phrase", "context_length", "phrase_words"]
