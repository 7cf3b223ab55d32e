"""liveinit.kmodindex and its compiler packer.modindex: the glob matcher
against glibc fnmatch(3) and Python's fnmatch, the text parsers, pcimap
fields, the PCI modalias parser, load order and the marshal index."""
from __future__ import annotations

import ctypes
import fnmatch as py_fnmatch
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liveinit import kmodindex as K
from liveinit.kmodindex import ModuleIndex
from packer import modindex as C
from packer.modindex import Alias, Builtins, Command, ConfigFile, Directive, Module, PciId, PcimapEntry

_libc = ctypes.CDLL(None)
_libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
_libc.fnmatch.restype = ctypes.c_int


def libc_fnmatch(pattern: str, s: str) -> bool:
    """What kmod calls: glibc fnmatch(pattern, s, 0) == 0."""
    return _libc.fnmatch(pattern.encode(), s.encode(), 0) == 0


# -------------------------------------------------------------- strategies

CHARS = "abAB09:_-,."
_literal = st.sampled_from(list(CHARS))
_range = st.tuples(st.sampled_from("a0A"), st.sampled_from("bz9F")).map(lambda t: f"{t[0]}-{t[1]}")
_member = st.one_of(_literal.filter(lambda c: c not in "-"), _range, st.just("[:digit:]"),
                    st.just("[:upper:]"), st.just("\\]"), st.just("\\-"))
_bracket = st.tuples(st.sampled_from(["", "!", "^"]), st.lists(_member, min_size=1, max_size=3)).map(
    lambda t: "[" + t[0] + "".join(t[1]) + "]")
_token = st.one_of(_literal, _literal, _literal, st.just("*"), st.just("?"), _bracket,
                   _literal.map(lambda c: "\\" + c))
patterns = st.lists(_token, max_size=10).map("".join)
subjects = st.text(alphabet=CHARS + "[]!^*?", max_size=14)
# The subset where Python's fnmatch agrees with glibc: no escapes, no ^, no classes.
_py_member = st.one_of(_literal.filter(lambda c: c != "-"), _range)
_py_bracket = st.tuples(st.sampled_from(["", "!"]), st.lists(_py_member, min_size=1, max_size=3)).map(
    lambda t: "[" + t[0] + "".join(t[1]) + "]")
py_patterns = st.lists(st.one_of(_literal, st.just("*"), st.just("?"), _py_bracket), max_size=10).map("".join)


@st.composite
def pattern_and_match(draw: st.DrawFn) -> tuple[str, str]:
    """A pattern and a string built to match it (so matches get exercised, not only misses)."""
    toks = draw(st.lists(st.one_of(_literal, st.just("*"), st.just("?"), _py_bracket), max_size=8))
    out = []
    for t in toks:
        if t == "*":
            out.append(draw(st.text(alphabet=CHARS, max_size=3)))
        elif t == "?":
            out.append(draw(_literal))
        elif t.startswith("["):
            out.append(draw(_literal))  # may or may not be a member
        else:
            out.append(t)
    return "".join(toks), "".join(out)


# -------------------------------------------------------------- matcher

@settings(max_examples=700, deadline=None)
@given(patterns, subjects)
def test_matcher_equals_glibc_fnmatch(pattern: str, s: str) -> None:
    assert K.fnmatch(pattern, s) == libc_fnmatch(pattern, s), (pattern, s)


@settings(max_examples=700, deadline=None)
@given(pattern_and_match())
def test_matcher_equals_glibc_on_near_matches(ps: tuple[str, str]) -> None:
    pattern, s = ps
    assert K.fnmatch(pattern, s) == libc_fnmatch(pattern, s), (pattern, s)


@settings(max_examples=700, deadline=None)
@given(py_patterns, st.text(alphabet=CHARS, max_size=14))
def test_matcher_equals_python_fnmatchcase(pattern: str, s: str) -> None:
    assert K.fnmatch(pattern, s) == py_fnmatch.fnmatchcase(s, pattern), (pattern, s)


def test_matcher_examples_from_modules_alias() -> None:
    pat = "usb:v152Dp0567d011[4-7]dc*dsc*dp*ic*isc*ip*in*"
    assert K.fnmatch(pat, "usb:v152Dp0567d0115dc00dsc00dp00ic08isc06ip50in00")
    assert not K.fnmatch(pat, "usb:v152Dp0567d0118dc00dsc00dp00ic08isc06ip50in00")
    assert K.fnmatch("acpi*:PNP0303:*", "acpi:PNP0303:")
    assert K.fnmatch("pci:v*d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01")
    ide = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i00"
    assert not K.fnmatch("pci:v*d*sv*sd*bc01sc06i01*", ide)


def test_glibc_corner_cases() -> None:
    for pattern, s in [("[", "["), ("[a", "[a"), ("a\\", "a"), ("[[:nope:]]", "a"), ("[!]a]", "b"),
                       ("[]]", "]"), ("[^a]", "b"), ("*[[:digit:]]", "x9"), ("\\*", "*"), ("[a-]", "-")]:
        assert K.fnmatch(pattern, s) == libc_fnmatch(pattern, s), (pattern, s)


def test_normalize_alias_like_kmod() -> None:
    assert K.normalize_alias("crypto-crc32c") == "crypto_crc32c"
    assert K.normalize_alias("usb:v1[0-9]p-x") == "usb:v1[0-9]p_x"
    assert K.normalize_alias("a]b") is None
    assert K.normalize_alias("a[b") is None
    assert K.modname("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"


# -------------------------------------------------------------- parsers

names = st.text(alphabet="abcxyz019_-", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.lists(names, max_size=4)), max_size=6, unique_by=lambda t: t[0]))
def test_parse_dep_roundtrip(entries: list[tuple[str, list[str]]]) -> None:
    text = "".join(f"kernel/d/{n}.ko: {' '.join(f'kernel/e/{d}.ko' for d in deps)}\n" for n, deps in entries)
    got = C.parse_dep(text)
    def norm(n: str) -> str:
        return n.replace("-", "_")
    assert got == [(norm(n), f"kernel/d/{n}.ko", tuple(norm(d) for d in deps)) for n, deps in entries]


@settings(max_examples=300, deadline=None)
@given(st.lists(names, max_size=4), st.lists(names, max_size=4), st.lists(names, max_size=2))
def test_parse_softdep_value(pre: list[str], post: list[str], junk: list[str]) -> None:
    body = " ".join(junk + (["pre:"] + pre if pre else []) + (["post:"] + post if post else []))
    assert C.parse_softdep_value(body) == (tuple(pre), tuple(post))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="pci:v0*d19AF[]", min_size=1, max_size=12), names), max_size=6))
def test_parse_alias_roundtrip(pairs: list[tuple[str, str]]) -> None:
    text = "# comment\n" + "".join(f"alias {p} {m}\n" for p, m in pairs)
    assert C.parse_alias(text) == [(p, m.replace("-", "_")) for p, m in pairs]


def test_parse_config() -> None:
    text = ("# c\noptions snd-pcsp index=-2\nblacklist pcspkr\nsoftdep uhci-hcd pre: ehci-hcd\n"
            "alias my-alias ext4\ninstall foo /bin/true\nbogus line\noptions x a=1 \\\n b=2\n")
    assert C.parse_config(text) == [
        Directive(Command.OPTIONS, "snd_pcsp", "index=-2"), Directive(Command.BLACKLIST, "pcspkr"),
        Directive(Command.SOFTDEP, "uhci_hcd", "pre: ehci-hcd"),
        Directive(Command.ALIAS, "my_alias", "ext4"), Directive(Command.INSTALL, "foo", "/bin/true"),
        Directive(Command.OPTIONS, "x", "a=1  b=2")]


def test_parse_builtin_modinfo_and_pcimap() -> None:
    data = b"hmac.alias=crypto-hmac\0hmac.license=GPL\0sha256_generic.alias=sha256\0"
    assert C.parse_builtin_modinfo(data) == [("hmac", "alias", "crypto-hmac"), ("hmac", "license", "GPL"),
                                             ("sha256_generic", "alias", "sha256")]
    text = ("# pci module         vendor     device     subvendor  subdevice  class      class_mask"
            " driver_data\n"
            "ahci                 0xffffffff 0xffffffff 0xffffffff 0xffffffff 0x00010601 0x00ffffff 0x0\n")
    assert C.parse_pcimap(text) == [
        PcimapEntry("ahci", PciId(K.PCI_ANY, K.PCI_ANY, K.PCI_ANY, K.PCI_ANY, 0x010601, 0xFFFFFF))]


# -------------------------------------------------------------- PCI

_hex8 = st.integers(0, 0xFFFF).map(lambda v: f"{v:08X}")
_hex2 = st.integers(0, 0xFF).map(lambda v: f"{v:02X}")


@st.composite
def pci_alias(draw: st.DrawFn) -> str:
    fields = []
    for key, strat in (("v", _hex8), ("d", _hex8), ("sv", _hex8), ("sd", _hex8), ("bc", _hex2), ("sc", _hex2),
                       ("i", _hex2)):
        fields.append(key + (draw(strat) if draw(st.booleans()) else "*"))
    s = "pci:" + "".join(fields)
    return s if s.endswith("*") else s + "*"


@st.composite
def pci_device(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    small = st.sampled_from([0, 1, 0x8086, 0x1AF4, 0xFFFF])
    return (draw(small), draw(small), draw(small), draw(small),
            draw(st.sampled_from([0x010601, 0x010000, 0x0C0330, 0x010802, 0])))


@settings(max_examples=1000, deadline=None)
@given(pci_alias(), pci_device())
def test_pcimap_entry_equals_alias_match(pattern: str, dev: tuple[int, int, int, int, int]) -> None:
    e = C.pci_entry(pattern)
    assert e is not None
    s = K.pci_modalias(*dev)
    assert K.parse_pci_modalias(s) == dev
    assert K.pci_match_entry(e, *dev) == K.fnmatch(pattern, s) == libc_fnmatch(pattern, s)


def test_pci_entry_rejects_partial_wildcards() -> None:
    assert C.pci_entry("pci:v00001234d0000AC8[0-9]sv*sd*bc*sc*i*") is None
    assert C.pci_entry("pci:v00001234*") is None
    assert C.pci_entry("pci:v*d0000ABCD*") is None  # the star could reach the subdevice
    assert C.pci_entry("pci:v00001234d*") == (0x1234, K.PCI_ANY, K.PCI_ANY, K.PCI_ANY, 0, 0)
    assert C.pci_entry("pci:v*d*sv*sd*bc01sc06i01*") == (K.PCI_ANY,) * 4 + (0x010601, 0xFFFFFF)


# -------------------------------------------------------------- the index

def small_index(config: list[ConfigFile] | None = None) -> ModuleIndex:
    modules = [
        ("crc32c_intel", "kernel/crc32c-intel.ko", ()),
        ("crc32c_generic", "kernel/crc32c_generic.ko", ()),
        ("crc16", "kernel/crc16.ko", ()),
        ("mbcache", "kernel/mbcache.ko", ()),
        ("jbd2", "kernel/jbd2.ko", ()),
        ("ext4", "kernel/ext4.ko", ("crc16", "mbcache", "jbd2")),
        ("a", "kernel/a.ko", ()), ("b", "kernel/b.ko", ("a",)), ("c", "kernel/c.ko", ()),
        ("ahci", "kernel/ahci.ko", ()), ("odd", "kernel/odd.ko", ()),
    ]
    aliases = [("crypto-crc32c", "crc32c_intel"), ("crypto-crc32c", "crc32c_generic"), ("fs-ext4", "ext4"),
               ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"), ("pci:v00001234d0000AC8[0-9]sv*sd*bc*sc*i*", "odd"),
               ("usb:v1234p*d01[0-2]*dc*", "c")]
    softdep = "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n" \
              "softdep a pre: b\nsoftdep b post: c a\n"
    return C.build_index("6.1.0-test", records(modules, aliases),
                         Builtins(("kernel/hmac.ko", "kernel/zswap.ko"), (Alias("crypto-hmac", "hmac"),)),
                         [ConfigFile("modules.softdep", softdep)] + (config or []))


def records(modules: list[tuple[str, str, tuple[str, ...]]], aliases: list[tuple[str, str]]) -> list[Module]:
    """Module records of (name, path, dependencies) with their (pattern, module) aliases."""
    return [Module(n, p, deps, tuple(a for a, m in aliases if m == n)) for n, p, deps in modules]


def test_lookup_order_of_sources() -> None:
    ix = small_index([ConfigFile("local.conf", "alias my_fs ext4\nalias crc16 jbd2\n")])
    assert ix.lookup("fs-ext4") == ["ext4"]
    assert ix.lookup("crypto-crc32c") == ["crc32c_intel", "crc32c_generic"]  # modules.order priority
    assert ix.lookup("my-fs") == ["ext4"]
    assert ix.lookup("crc16") == ["jbd2"]  # modprobe.d aliases come before module names
    assert ix.lookup("crypto-hmac") == ["hmac"] and ix.is_builtin("hmac")
    assert ix.lookup("zswap") == ["zswap"]
    assert ix.lookup("nothing") == []
    assert ix.lookup("usb:v1234pABCDd0115dc00") == ["c"]


def test_load_order_like_kmod() -> None:
    ix = small_index()
    assert ix.load_order("ext4") == ["crc32c_intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
    # a pre: b, b depends on a and has post: c a -> loops are cut, first occurrences kept
    assert ix.load_order("a") == ["a", "b", "c"]
    assert ix.load_order("hmac") == [] and ix.load_order("unknown") == []


def test_match_pci_pcimap_and_leftovers() -> None:
    ix = small_index()
    # the partial wildcard stays in the alias table
    assert [mod for mod, _pattern, _ids in ix.pci] == ["ahci"]
    assert ix.match_pci(0x8086, 0x2922, 0x1AF4, 0x1100, 0x010601) == ["ahci"]
    assert ix.match_pci(0x1234, 0xAC85, 0, 0, 0x020000) == ["odd"]
    assert ix.match("pci:v00001234d0000AC85sv00000000sd00000000bc02sc00i00") == ["odd"]
    # a malformed PCI modalias still gets exact fnmatch semantics
    odd = "pci:v00001234d0000AC85sv0sd0bc01sc06i01"
    assert ix.match(odd) == ["ahci", "odd"]
    assert libc_fnmatch("pci:v*d*sv*sd*bc01sc06i01*", odd)


def test_options_blacklist_and_config_softdep() -> None:
    conf = "options ext4 a=1\noptions ext4 b=2\nblacklist c\nsoftdep mbcache pre: crc16\n"
    ix = small_index([ConfigFile("zz.conf", conf)])
    assert ix.options("ext4") == "a=1 b=2" and ix.options("jbd2") == ""
    assert ix.is_blacklisted("c") and not ix.is_blacklisted("a")
    assert ix.softdeps_of("mbcache") == (("crc16",), ())


def test_dump_load_roundtrip_is_deterministic(tmp_path: Path) -> None:
    a, b = small_index(), small_index()
    C.dump(a, tmp_path / "a")
    C.dump(b, tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    c = ModuleIndex.load(str(tmp_path / "a"))
    assert c.data == a.data
    assert c.load_order("ext4") == a.load_order("ext4")


def test_a_damaged_index_is_a_value_error_before_marshal_reads_it() -> None:
    """Found by scripts/fuzz.py: one changed length field made marshal.loads
    allocate gigabytes (minutes at 5 GiB and growing); every damaged byte, a
    cut and a foreign file are now a ValueError, whatever marshal would do."""
    blob = C.dumps(small_index())
    assert blob[:4] == K.INDEX_MAGIC
    for at in range(0, len(blob), 7):
        damaged = bytearray(blob)
        damaged[at] ^= 0x40
        with pytest.raises(ValueError, match="not a liveinit module index"):
            ModuleIndex.loads(bytes(damaged))
    for bad in (blob[:-1], blob[:8], b"", b"not marshal"):
        with pytest.raises(ValueError, match="not a liveinit module index"):
            ModuleIndex.loads(bad)


def test_from_moddir_text_files(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("kernel/b.ko: kernel/a.ko\nkernel/a.ko:\n")
    (tmp_path / "modules.order").write_text("kernel/a.ko\nkernel/b.ko\n")
    (tmp_path / "modules.alias").write_text("alias fs-b b\nalias fs-* a\n")
    (tmp_path / "modules.softdep").write_text("softdep b post: fs-zz\n")
    (tmp_path / "modules.builtin").write_text("kernel/x.ko\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "o.conf").write_text("options a z=1\n")
    ix = C.from_moddir(tmp_path, (conf,))
    assert ix.lookup("fs-b") == ["a", "b"]
    assert ix.load_order("b") == ["a", "b"]  # fs-zz resolves to a, already there
    assert ix.options("a") == "z=1" and ix.is_builtin("x") and ix.path("b") == "kernel/b.ko"


def test_build_drops_patterns_glibc_refuses() -> None:
    ix = C.build_index("k", [Module("a", "a.ko", aliases=("x[[:nope:]]*", "y[", "z*"))])
    assert ix.lookup("zz") == ["a"] and ix.lookup("xq") == [] and ix.lookup("y[") == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, st.sampled_from(["alias", "license", "file"]),
                          st.text(alphabet="abc-_=:*09", max_size=8)), max_size=6))
def test_parse_builtin_modinfo_roundtrip(items: list[tuple[str, str, str]]) -> None:
    data = b"".join(f"{m}.{k}={v}".encode() + b"\0" for m, k, v in items)
    assert C.parse_builtin_modinfo(data) == [(m.replace("-", "_"), k, v) for m, k, v in items]


_alias_pattern = st.one_of(
    pci_alias(),
    st.lists(st.one_of(st.sampled_from(list("ab:-_0F")), st.just("*"), st.just("?"), _py_bracket),
             max_size=8).map(lambda t: "x" + "".join(t)),
    st.lists(st.sampled_from(list("ab:-0F*")), max_size=30).map(lambda t: "usb:v1234p" + "".join(t)),
)
_modalias = st.one_of(
    pci_device().map(lambda d: K.pci_modalias(*d)),
    st.text(alphabet="ab:-_0F", max_size=10).map(lambda t: "x" + t),
    st.text(alphabet="ab:-0F", max_size=30).map(lambda t: "usb:v1234p" + t),
    st.text(alphabet="pci:v0F", max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_alias_pattern, st.sampled_from(["m1", "m2", "m3", "m4"])), max_size=12),
       st.lists(_modalias, min_size=1, max_size=6))
def test_bucketed_index_equals_brute_force_fnmatch(aliases: list[tuple[str, str]], probes: list[str]) -> None:
    """Prefix buckets, the exact table and the PCI map give what matching every pattern gives."""
    ix = C.build_index("k", records([(m, f"{m}.ko", ()) for m in ("m1", "m2", "m3", "m4")], aliases))
    for s in probes:
        want = {m for p, m in aliases
                if K.normalize_alias(p) is not None
                and libc_fnmatch(K.normalize_alias(p), K.normalize_alias(s))}
        assert set(ix.match_aliases(s)) == want, s
        assert set(ModuleIndex.loads(C.dumps(ix)).match_aliases(s)) == want, s


# -------------------------------------------------------------- the PCI modalias parser

def reference_pci_ids(s: str) -> tuple[int, int, int, int, int] | None:
    """What the kernel's format string admits, as a regex: the oracle for parse_pci_modalias."""
    m = re.fullmatch("pci:v([0-9A-F]{8})d([0-9A-F]{8})sv([0-9A-F]{8})sd([0-9A-F]{8})"
                     "bc([0-9A-F]{2})sc([0-9A-F]{2})i([0-9A-F]{2})", s)
    if m is None:
        return None
    v, d, sv, sd, bc, sc, pi = (int(g, 16) for g in m.groups())
    return (v, d, sv, sd, bc << 16 | sc << 8 | pi)


_ids = st.tuples(*([st.integers(0, 0xFFFFFFFF)] * 4), st.integers(0, 0xFFFFFF))


@settings(max_examples=500, deadline=None)
@given(_ids, st.integers(0, 52), st.sampled_from(list("0aF g_+-:*x")), st.booleans())
def test_parse_pci_modalias_accepts_exactly_what_the_kernel_writes(
        ids: tuple[int, int, int, int, int], pos: int, char: str, mutate: bool) -> None:
    s = K.pci_modalias(*ids)
    assert K.parse_pci_modalias(s) == ids
    if mutate:  # one character changed: lower-case hex, signs, underscores, a moved key letter...
        s = s[:pos] + char + s[pos + 1:]
    assert K.parse_pci_modalias(s) == reference_pci_ids(s), s
    assert K.parse_pci_modalias(s + "0") is None and K.parse_pci_modalias(s[:-1]) is None


def test_parse_pci_modalias_rejects_near_misses() -> None:
    good = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
    assert K.parse_pci_modalias(good) == (0x8086, 0x2922, 0x1AF4, 0x1100, 0x010601)
    for bad in (good.lower(), good.replace("d0000", "x0000", 1), good.replace("i01", "i0_"),
                good.replace("v0000", "v+000", 1), good.replace("sv", "SV"), "usb:" + good[4:]):
        assert K.parse_pci_modalias(bad) is None, bad


# -------------------------------------------------------------- more parser round trips

_words = st.text(alphabet="abcxyz019_=,", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Command)), names, st.lists(_words, min_size=1, max_size=3)),
                max_size=8))
def test_parse_config_roundtrip(lines: list[tuple[Command, str, list[str]]]) -> None:
    """Every directive written as modprobe.d text reads back normalised; comments and blanks are skipped."""
    text = "# header\n\n"
    want = []
    for cmd, name, words in lines:
        norm = name.replace("-", "_")
        if cmd is Command.BLACKLIST:
            text += f"blacklist {name}\n"
            want.append(Directive(cmd, norm))
        elif cmd is Command.ALIAS:
            text += f"alias {name} {words[0]}-x {' '.join(words[1:])}\n"
            want.append(Directive(cmd, norm, words[0] + "_x"))
        else:
            text += f"{cmd} {name} {' '.join(words)}\n"
            want.append(Directive(cmd, norm, " ".join(words)))
    assert C.parse_config(text) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(pci_alias(), st.just("pci:v00001234d0000AC8[0-9]sv*sd*bc*sc*i*"),
                                    st.just("usb:v*p*")), names), max_size=8))
def test_pcimap_lines_roundtrip(pairs: list[tuple[str, str]]) -> None:
    """modules.pcimap as written reads back to the entries pci_entry gives; the rest is reported."""
    aliases = [Alias(p, m.replace("-", "_")) for p, m in pairs]
    lines, bad = C.pcimap_lines(aliases)
    assert lines[0] == C.PCIMAP_HEADER
    pci = [a for a in aliases if a.pattern.startswith("pci:")]
    entries = [(a.module, C.pci_entry(a.pattern)) for a in pci]
    assert C.parse_pcimap("".join(lines)) == [PcimapEntry(m, ids) for m, ids in entries if ids is not None]
    assert bad == [a for a in pci if C.pci_entry(a.pattern) is None]


@settings(max_examples=200, deadline=None)
@given(st.lists(names, max_size=6))
def test_parse_builtin_roundtrip(mods: list[str]) -> None:
    text = "".join(f"kernel/x/{m}.ko\n\n" for m in mods)
    assert C.parse_builtin(text) == [m.replace("-", "_") for m in mods]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(names, st.lists(st.sampled_from(["fs-a", "x:*", "pci:v*d*sv*sd*bc01sc06i01*"]),
                                          max_size=2, unique=True),
                          st.lists(st.sampled_from(["pre: m_a", "post: m_b m_c", "pre: x post: y"]),
                                   max_size=2)),
                max_size=5, unique_by=lambda t: t[0].replace("-", "_")))
def test_depmod_files_read_back_to_the_records(tmp_path_factory: pytest.TempPathFactory,
                                               mods: list[tuple[str, list[str], list[str]]]) -> None:
    """Records written as depmod's files (modules.dep/alias/softdep/order) read back
    equal, and give the same index."""
    tmp = tmp_path_factory.mktemp("depmod")
    records_ = [Module(n.replace("-", "_"), f"kernel/{n}.ko", (), tuple(a), tuple(s)) for n, a, s in mods]
    (tmp / "modules.dep").write_text("".join(f"{m.path}:\n" for m in reversed(records_)))
    (tmp / "modules.order").write_text("".join(f"{m.path}\n" for m in records_))
    (tmp / "modules.alias").write_text("".join(f"alias {a} {m.name}\n" for m in records_ for a in m.aliases))
    (tmp / "modules.softdep").write_text(C.softdep_text(records_))
    assert C.read_depmod_modules(tmp) == records_
    assert C.from_moddir(tmp).data == C.build_index(tmp.name, records_).data
