"""`Plain`: a light stand-in for `@dataclass(frozen=True)` on the boot path.

Importing `dataclasses` pulls in inspect, re, ast, enum, dis, tokenize...:
about 15 ms natively and 0.6-0.7 s under QEMU TCG, and each decorated class
then costs tens of milliseconds more (the generated methods are compiled at
import). A subclass only lists its fields in `__slots__` (in order) and its
defaults in `_defaults`; it gets positional and keyword construction, `==`,
`hash`, `repr`, pickling and immutability (assignment raises AttributeError,
as dataclasses' FrozenInstanceError does)."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Any, Self


class Plain:
    """Immutable record: fields are `__slots__`, defaults `_defaults`
    (name -> value, or name -> zero-argument factory in `_factories`)."""

    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}
    _factories: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names: tuple[str, ...] = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}() takes {len(names)} arguments, got {len(args)}")
        setter = object.__setattr__
        for name, value in zip(names, args, strict=False):
            setter(self, name, value)
        for name in names[len(args):]:
            if name in kwargs:
                setter(self, name, kwargs.pop(name))
            elif name in self._defaults:
                setter(self, name, self._defaults[name])
            elif name in self._factories:
                setter(self, name, self._factories[name]())
            else:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
        if kwargs:
            bad = next(iter(kwargs))
            why = "got multiple values for" if bad in names else "got an unexpected keyword argument"
            raise TypeError(f"{type(self).__name__}() {why} {bad!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> tuple[type[Self], tuple[Any, ...]]:
        return (type(self), self._values())

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (dataclasses.replace)."""
        values = {n: getattr(self, n) for n in self.__slots__}
        values.update(changes)
        return type(self)(**values)
