"""CBOR values that have no closer Python type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tag:
    """A CBOR tag around a value (tags 1, 2, 3 and 37 map to datetime, int and UUID)."""

    tag: int
    value: Any


@dataclass(frozen=True)
class Simple:
    """A CBOR simple value other than false, true, null and undefined."""

    value: int


class _UndefinedType:
    """The CBOR `undefined` value (a singleton: `entidb.Undefined`)."""

    _instance: _UndefinedType | None = None

    def __new__(cls) -> _UndefinedType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "entidb.Undefined"

    def __bool__(self) -> bool:
        return False


Undefined = _UndefinedType()
