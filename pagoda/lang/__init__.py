"""``pagoda.lang``: multi-step LLM programs in Python (SGLang's frontend language, on Pagoda).

    from pagoda import LLM, lang

    @lang.function
    def qa(s, question):
        s += lang.system("You answer briefly.")
        s += lang.user(question)
        s += lang.assistant(lang.gen("answer", max_tokens=64, stop="\\n"))
        s += lang.user("Is that answer certain?")
        s += lang.assistant(lang.select("certain", ["yes", "no"]))

    state = qa.run(question="What is the capital of France?", backend=LLM())
    state["answer"], state["certain"]

Backends: an ``LLM`` (in process; see ``EngineBackend``) or a Pagoda server URL (``ServerBackend``).
``gen(regex=..., json_schema=..., choices=...)`` constrains generation through ``pagoda.structured``;
``select`` picks the option with the highest length-normalised log-likelihood; ``state.fork(n)``
makes branches that run concurrently and share the prefix's KV blocks.
"""

from pagoda.lang.backend import LangBackend
from pagoda.lang.expressions import assistant, gen, select, system, user
from pagoda.lang.function import LangFunction, as_backend, function
from pagoda.lang.program_state import Forks, ProgramState

__all__ = [
    "Forks",
    "LangBackend",
    "LangFunction",
    "ProgramState",
    "as_backend",
    "assistant",
    "function",
    "gen",
    "select",
    "system",
    "user",
]
