"""Request fields the server does not implement: those that would change the answer are a 400
naming the field (never silently ignored); routine ones that do not are accepted."""

from __future__ import annotations

from typing import Any

from pagoda.errors import InvalidRequestError

# field -> why it cannot be honoured; checked when present and not null
_UNSUPPORTED_CHAT = {
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the legacy 'functions' field is not supported: use 'tools'",
    "function_call": "the legacy 'function_call' field is not supported: use 'tool_choice'",
}


def reject_unsupported_chat_fields(req: Any) -> None:
    """Raises InvalidRequestError for the first field of a chat request that would change the answer
    and is not implemented."""
    extra = getattr(req, "model_extra", None) or {}
    for name, why in _UNSUPPORTED_CHAT.items():
        if extra.get(name) is not None:
            raise InvalidRequestError(f"{name}: {why}", name)
    modalities = extra.get("modalities")
    if modalities is not None:
        if not isinstance(modalities, list) or any(m != "text" for m in modalities):
            raise InvalidRequestError(f"modalities: only ['text'] is supported, got {modalities!r}", "modalities")
    if getattr(req, "store", None):
        raise InvalidRequestError("store: stored completions are not supported (send store: false or leave it out)",
                                  "store")
