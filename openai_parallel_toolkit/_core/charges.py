"""The tokens charged per recent send of a limit group, for reading the server's counts."""

from __future__ import annotations

__all__ = ["Charges"]

# Sends whose token charges are kept for reading remaining counts (intervals are ~1 s long).
CHARGES_KEPT = 4096


class Charges:
    """Tokens charged per send, by the send's number: reserved, then settled or refunded."""

    __slots__ = ("_by_number",)

    def __init__(self) -> None:
        self._by_number: dict[int, float] = {}

    def record(self, number: int, tokens: float) -> None:
        """Send `number` reserved `tokens` (the oldest record beyond the kept ones is dropped)."""
        self._by_number[number] = tokens
        self._by_number.pop(number - CHARGES_KEPT, None)

    def refund(self, number: int, tokens: float) -> None:
        """Send `number` was charged `tokens` less (negative: more) than it reserved."""
        if number in self._by_number:
            self._by_number[number] -= tokens

    def between(self, first: int, last: int, newest: int) -> float | None:
        """Tokens charged for sends numbered first+1 to last (unsettled ones as reserved);
        None when those sends are older than the record kept (`newest`: the latest send)."""
        if first < newest - CHARGES_KEPT:
            return None
        return sum(self._by_number.get(number, 0.0) for number in range(first + 1, last + 1))
