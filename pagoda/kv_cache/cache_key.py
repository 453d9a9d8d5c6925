"""The key of a request's tree in the prefix cache: its cache salt and its LoRA adapter.

KV computed under one adapter is wrong for another (its K and V projections differ), so the
adapter id is part of the key; requests share cached prefixes only when both parts match.
"""

from __future__ import annotations


def prefix_cache_key(cache_salt: str | None, lora_id: int | None) -> str | None:
    if lora_id is None:
        return cache_salt
    return f"{cache_salt or ''}\x00lora:{lora_id}"
