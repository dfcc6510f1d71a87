"""The call recorder of the contract tests' stand-in libraries (tests/test_contract_*.py)."""

from __future__ import annotations

import threading


class Calls:
    """(method, args, thread id) of every call into a stand-in library."""

    def __init__(self) -> None:
        self.log: list[tuple[str, tuple, int]] = []

    def add(self, method: str, *args: object) -> None:
        self.log.append((method, args, threading.get_ident()))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.log]

    def threads(self) -> set[int]:
        return {thread for _, _, thread in self.log}
