"""Where a program's generation runs: the abstract backend."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pagoda.lang.expressions import Gen


class LangBackend(ABC):
    """Runs the model for ``pagoda.lang`` programs.

    Contract: every method is thread-safe and blocking; programs (and their forks) run in their own
    threads, and a backend batches calls that arrive together (the engine runs them in one batch).
    Prompts are token ids; ``Gen`` fields are resolved (no None defaults left but constraints).
    """

    @abstractmethod
    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        """The model's chat template applied to ``messages``, as token ids."""

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of plain text."""

    @abstractmethod
    def generate(self, prompt_ids: list[int], gen: Gen) -> str:
        """The generated text for ``gen`` after ``prompt_ids`` (stop strings excluded)."""

    @abstractmethod
    def token_logprobs(self, prompts: list[list[int]]) -> list[list[float | None]]:
        """Per prompt, the model's log-probability of each token given those before it (None for
        the first)."""
