"""The runtime's console lines as regular expressions, built from the contract.

`liveinit.contract` defines each line once as a format string ("stage {name}
{ms:.0f} ms"); the runtime formats it, the lab and the benchmark parse it with
the pattern `line_pattern` makes from the same string, so the two cannot drift
apart."""
from __future__ import annotations

import re
import string

from liveinit import contract

NUMBER = r"\d+(?:\.\d+)?"
WORD = r"\S+"
REST = r".*"    # a field no pattern is given for: the rest of the line


def line_pattern(fmt: str, **groups: str) -> re.Pattern[str]:
    """A regex matching what `fmt.format(...)` prints: the literal parts
    escaped, each `{field}` (its format spec ignored) a named group matching
    `groups[field]`, or the rest of the line when none is given."""
    parts: list[str] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(fmt):
        parts.append(re.escape(literal))
        if field is not None:
            if not field.isidentifier():
                raise ValueError(f"{fmt!r}: field {field!r} is not a name")
            parts.append(f"(?P<{field}>{groups.get(field, REST)})")
    unknown = set(groups) - {f for _l, f, _s, _c in string.Formatter().parse(fmt) if f}
    if unknown:
        raise ValueError(f"{fmt!r} has no field {', '.join(sorted(unknown))}")
    return re.compile("".join(parts))


def runtime_line(fmt: str, **groups: str) -> re.Pattern[str]:
    """`line_pattern` of a runtime line: contract.PREFIX + `fmt`."""
    return line_pattern(contract.PREFIX + fmt, **groups)


STAGE = runtime_line(contract.STAGE_LINE, name=WORD, ms=NUMBER)
STARTING = runtime_line(contract.STARTING_LINE, init=WORD, ms=NUMBER)
FAILED = runtime_line(contract.FAILED_LINE)
HINT = runtime_line(contract.HINT_LINE)
SHELL = runtime_line(contract.SHELL_LINE)
# The demo root's lines (qemu.demoroot writes them). The success line is the
# marker and key=value pairs (uptime=, root=, writable=, persisted=, init=).
DEMO_MODULES_LINE = contract.DEMO_MODULES + " record={record} modules={modules}"
DEMO_OK = re.compile(re.escape(contract.DEMO_OK) + r"(?P<fields>(?: [\w.-]+=\S*)+)")
DEMO_MODULES = line_pattern(DEMO_MODULES_LINE, record="yes|no", modules=r"[\w,-]*")
# The kernel's lines: printk timestamps, /init's start, a panic.
KERNEL_TIME = r"^\[\s*(?P<time>\d+\.\d+)\] "
RUN_INIT = re.compile(KERNEL_TIME + r"Run (?P<init>\S+) as init process", re.M)
DEMO_KMSG = re.compile(KERNEL_TIME + re.escape(contract.DEMO_KMSG), re.M)
PANIC = re.compile(r"Kernel panic - not syncing: ?(?P<message>.*)")
