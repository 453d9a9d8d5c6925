"""Bounds on the work one grammar may cost, enforced inside llguidance (a Python timeout cannot stop
its Rust code): lexer fuel, Earley items per step and per row, lexer states, grammar size."""

from __future__ import annotations

from dataclasses import dataclass

import llguidance


@dataclass(frozen=True)
class GrammarLimits:
    """llguidance's ``LLParserLimits``, with its defaults except ``max_items_in_row``.

    llguidance's 2,000 items per Earley row made a 3,000-way alternative (a long enum, a choice list)
    fail at its first token, after the request was accepted (an HTTP 500). Per-step work stays bounded
    by ``step_max_items`` and ``step_lexer_fuel``, so the row limit may be as large as the per-step one.
    """

    max_items_in_row: int = 50_000
    initial_lexer_fuel: int = 1_000_000  # regex analysis when the lexer is built, ~50k/ms
    step_lexer_fuel: int = 200_000  # one mask computation, ~14k/ms
    step_max_items: int = 50_000  # Earley items in one mask computation, ~20k/ms
    max_lexer_states: int = 250_000  # ~1-2 kB each
    max_grammar_size: int = 500_000  # symbols in all productions

    def to_llguidance(self) -> llguidance.LLParserLimits:
        return llguidance.LLParserLimits(
            max_items_in_row=self.max_items_in_row, initial_lexer_fuel=self.initial_lexer_fuel,
            step_lexer_fuel=self.step_lexer_fuel, step_max_items=self.step_max_items,
            max_lexer_states=self.max_lexer_states, max_grammar_size=self.max_grammar_size,
            verbose_errors=False)  # errors reach clients: no parser state or grammar dumps
