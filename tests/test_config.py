"""Settings: one table feeds argparse and TOML; every flag has a key and vice versa,
and a config file says exactly what the same flags say."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import cmd_pack, config
from packer.errors import CommandError

NOT_SETTINGS = {"--config", "--help", "--quiet", "--verbose"}   # how to run, not what to build


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cmd_pack.configure(p, "pack")
    return p


def _flag_names(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in NOT_SETTINGS and not opt.startswith("--no-"):
                names.add(opt[2:])
    return names


def test_every_flag_has_a_toml_key_and_every_key_a_flag() -> None:
    keys = {s.name for s in config.SETTINGS}
    assert _flag_names(_parser()) == keys


def test_table_matches_packconfig_fields_and_defaults() -> None:
    assert [s.field for s in config.SETTINGS] == [f.name for f in fields(config.PackConfig)]
    defaults = {f.name: f.default for f in fields(config.PackConfig)}
    for s in config.SETTINGS:
        assert defaults[s.field] == s.default, s.name


def test_no_flags_no_file_gives_the_defaults() -> None:
    assert config.from_args(_parser().parse_args([])) == config.PackConfig()


# A value for each kind, as a flag list and as a TOML literal.
def _sample(s: config.Setting, draw: st.DrawFn) -> tuple[list[str], str]:
    word = draw(st.text(alphabet="abcxyz019_-./", min_size=1, max_size=12).filter(
        lambda t: not t.startswith("-") and "," not in t))
    if s.kind is config.Kind.BOOL:
        on = draw(st.booleans())
        return [f"--{s.name}" if on else f"--no-{s.name}"], "true" if on else "false"
    if s.kind is config.Kind.INT:
        n = draw(st.integers(min_value=0, max_value=2**31))
        return [f"--{s.name}={n}"], str(n)
    if s.kind is config.Kind.CHOICE:
        c = draw(st.sampled_from(s.choices))
        return [f"--{s.name}={c}"], f'"{c}"'
    if s.kind is config.Kind.LIST:
        items = draw(st.lists(st.sampled_from(["a", "b*", "x/y", "ext4", "z-1"]), min_size=1, max_size=3))
        return [f"--{s.name}={i}" for i in items], "[" + ", ".join(f'"{i}"' for i in items) + "]"
    path = "/abs/" + word if s.kind is config.Kind.PATH else word
    return [f"--{s.name}={path}"], f'"{path}"'


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_toml_file_equals_the_same_flags(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(config.SETTINGS), unique=True, min_size=1))
    argv: list[str] = []
    toml: list[str] = []
    for s in chosen:
        flags, literal = _sample(s, data.draw)
        argv += flags
        toml.append(f"{s.name} = {literal}")
    f = tmp_path_factory.mktemp("cfg") / "pack.toml"
    f.write_text("\n".join(toml) + "\n")
    from_flags = config.from_args(_parser().parse_args(argv))
    from_file = config.from_args(_parser().parse_args(["--config", str(f)]))
    assert from_flags == from_file


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "pack.toml"
    f.write_text('compress = "xz"\nmodules = ["nvme"]\nmicrocode = false\n')
    cfg = config.from_args(_parser().parse_args(["--config", str(f), "--compress", "gzip"]))
    assert (cfg.compress, cfg.modules, cfg.microcode) == ("gzip", ("nvme",), False)


def test_lists_accept_commas_and_repeats() -> None:
    cfg = config.from_args(_parser().parse_args(["--modules", "a,b", "--modules", "c"]))
    assert cfg.modules == ("a", "b", "c")


@pytest.mark.parametrize("text, message", [
    ('compresion = "xz"\n', "unknown key 'compresion'"),
    ("compress = 3\n", "wrong type"),
    ('compress = "rar"\n', "not one of"),
    ("host-only = 1\n", "wrong type"),
    ("source-date-epoch = true\n", "wrong type"),
    ("compress = \n", "not valid TOML"),
])
def test_bad_config_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "pack.toml"
    f.write_text(text)
    with pytest.raises(CommandError, match=message):
        config.from_args(_parser().parse_args(["--config", str(f)]))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="cannot read config file"):
        config.from_args(_parser().parse_args(["--config", str(tmp_path / "none.toml")]))


def test_source_date_epoch_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert config.PackConfig().epoch == 1700000000
    assert config.PackConfig(source_date_epoch=5).epoch == 5
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(CommandError, match="SOURCE_DATE_EPOCH"):
        _ = config.PackConfig().epoch


def test_extra_files_default_destination() -> None:
    cfg = config.PackConfig(files=("/etc/hosts", "/tmp/a.conf:/etc/modprobe.d/a.conf"))
    assert cfg.extra_files() == [(Path("/etc/hosts"), "etc/hosts"),
                                 (Path("/tmp/a.conf"), "etc/modprobe.d/a.conf")]


def test_check_cmdline_lists_every_error_of_the_shared_parser() -> None:
    config.check_cmdline("")
    config.check_cmdline("quiet rootdelay=5 root=LABEL=live toram liveinit.break=findroot")
    text = "liveinit.brk=findroot rootdelay=soon quiet"
    with pytest.raises(CommandError) as e:
        config.check_cmdline(text)
    msg = str(e.value)
    assert msg.startswith(f"--cmdline {text!r} is not a valid kernel command line")
    assert "liveinit.brk: unknown liveinit parameter" in msg and "rootdelay=soon" in msg
    assert "CMDLINE.md" in e.value.hint


def test_pack_refuses_a_bad_cmdline_before_any_work(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from packer import cli
    out = tmp_path / "x.img"
    # --moddir does not exist: the cmdline is refused before modules are even looked at.
    rc = cli.main(["pack", "-o", str(out), "--moddir", str(tmp_path / "none"),
                   "--cmdline", "quiet liveinit.persistance=yes"])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "--cmdline 'quiet liveinit.persistance=yes' is not a valid kernel command line" in err
    assert "liveinit.persistance: unknown liveinit parameter" in err
