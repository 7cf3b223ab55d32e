"""The boot record: what this boot did, as JSON at /run/liveinit/boot.json
(in the new root after hand-over, since /run is moved there).

A small JSON writer instead of the `json` module: `json` imports `re` and
three submodules, which PID 1 would pay for on every boot."""
from __future__ import annotations

import os

from liveinit.contract import RECORD, STAGES

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Any

    from liveinit.machine import Machine


class Record:
    """Collects facts during the boot; `write` dumps them."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"stages": {}, "errors": [], "warnings": []}

    def stage(self, name: str, ms: float) -> None:
        """A stage's duration; the stages stay in boot order, whatever order they end in
        (coldplug's background run ends during findroot, or later)."""
        stages = dict(self.data["stages"], **{name: round(ms, 1)})
        order = {s: i for i, s in enumerate(STAGES)}
        self.data["stages"] = dict(sorted(stages.items(), key=lambda kv: order.get(kv[0], len(order))))

    def set(self, key: str, value: object) -> None:
        self.data[key] = value

    def error(self, text: str) -> None:
        self.data["errors"].append(text)

    def write(self, m: Machine, path: str = RECORD) -> str:
        """Write the record under `m`; returns the real path written."""
        real = m.path(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        tmp = real + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(self.data) + "\n")
        os.replace(tmp, real)
        return real


_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ch < " " or "\ud800" <= ch <= "\udfff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps(obj: object, indent: str = "") -> str:
    """JSON text of dicts, lists, tuples, sets, str, int, float, bool and None
    (anything else as its str())."""
    nxt = indent + "  "
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj) if obj == obj and obj not in (float("inf"), float("-inf")) else "null"
    if isinstance(obj, str):
        return _str(obj)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{nxt}{_str(str(k))}: {dumps(v, nxt)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        if not seq:
            return "[]"
        return "[\n" + ",\n".join(nxt + dumps(v, nxt) for v in seq) + "\n" + indent + "]"
    return _str(str(obj))
