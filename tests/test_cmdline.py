"""Kernel command line: quoting, every parameter and its aliases, defaults
overridden by /proc/cmdline, and malformed input that never raises."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liveinit.cmdline import (DEFAULT_ROOTDELAY, ROOTWAIT_SECONDS, BootConfig,
                              RootSpec, parse, parse_root, quote, split)
from liveinit.contract import LIVE_IMAGE


# -- split ------------------------------------------------------------------
def test_split_plain_words_and_whitespace() -> None:
    assert split("  a b\tc\n") == ["a", "b", "c"]


def test_split_quoted_value_keeps_spaces_drops_quotes() -> None:
    assert split('x foo="bar baz" y') == ["x", "foo=bar baz", "y"]


def test_split_quoted_whole_word() -> None:
    assert split('"a b=c d" e') == ["a b=c d", "e"]


def test_split_quote_in_the_middle_of_a_word() -> None:
    assert split('ab"c d"ef g') == ["abc def", "g"]


def test_split_unterminated_quote_runs_to_end() -> None:
    assert split('a "b c') == ["a", "b c"]


def test_split_empty_quotes_give_an_empty_word() -> None:
    assert split('a "" b') == ["a", "", "b"]


words = st.lists(st.text(alphabet=st.characters(blacklist_characters='"',
                                                blacklist_categories=("Cs",)), max_size=12),
                 max_size=8)


@given(words)
def test_split_round_trips_quoted_words(ws: list[str]) -> None:
    assert split(" ".join(quote(w) for w in ws)) == ws


@given(st.text())
@settings(max_examples=400)
def test_parse_never_raises(text: str) -> None:
    cfg = parse(text, text[::-1])
    assert isinstance(cfg, BootConfig)
    assert cfg.union in ("overlay", "aufs", "unionfs", "bind", "none")
    assert cfg.rootdelay >= 0


@given(st.lists(st.sampled_from(["root=", "root=UUID=", "rootdelay=", "union=", "rd.break=",
                                 '"', "--", "=", "live:", "a.b", "toram", "persistence",
                                 "rd.live.overlay.size=", "x", "0801", "LABEL=", " "]),
                max_size=20))
def test_parse_never_raises_on_parameter_soup(parts: list[str]) -> None:
    cfg = parse("".join(parts))
    assert isinstance(cfg.errors, tuple)


# -- root= ------------------------------------------------------------------
@pytest.mark.parametrize("spec, kind, value", [
    ("/dev/sda1", "path", "/dev/sda1"),
    ("UUID=0A1B-2C3D", "uuid", "0a1b-2c3d"),
    ("LABEL=My Disk", "label", "My Disk"),
    ("PARTUUID=ABCDEF01-02", "partuuid", "abcdef01-02"),
    ("PARTLABEL=root", "partlabel", "root"),
    ("8:1", "devno", "8:1"),
    ("0801", "devno", "8:1"),
    ("b302", "devno", "179:2"),
    ("sda2", "path", "/dev/sda2"),
])
def test_root_specs(spec: str, kind: str, value: str) -> None:
    assert parse_root(spec) == RootSpec(kind, value, False)
    cfg = parse(f'root="{spec}"')
    assert cfg.root == RootSpec(kind, value, False)
    assert cfg.errors == ()


@pytest.mark.parametrize("spec, kind, value", [
    ("live:/dev/sr0", "path", "/dev/sr0"),
    ("live:CDLABEL=Debian", "label", "Debian"),
    ("live:LABEL=Debian", "label", "Debian"),
    ("live:UUID=1234", "uuid", "1234"),
    ("live:auto", "auto", ""),
    ("live:", "auto", ""),
])
def test_root_live_specs(spec: str, kind: str, value: str) -> None:
    assert parse("root=" + spec).root == RootSpec(kind, value, True)


def test_no_root_means_live_search() -> None:
    assert parse("quiet").root == RootSpec("auto", "", True)


@pytest.mark.parametrize("marker", ["rd.live.image", "boot=live", "liveinit.image=/x.sfs",
                                    "findiso=/a.iso"])
def test_live_markers_make_a_plain_root_spec_live(marker: str) -> None:
    assert parse(f"root=/dev/sr0 {marker}").root == RootSpec("path", "/dev/sr0", True)


@pytest.mark.parametrize("bad", ["UUID=", "live:LABEL=", "/dev/", "nfs:1.2.3.4:/x", "a/b", "x:y"])
def test_bad_root_spec_is_an_error_not_a_search(bad: str) -> None:
    """An unparseable root= must not boot whatever live medium a search finds (issue 12)."""
    cfg = parse(f'root="{bad}"')
    assert cfg.root == RootSpec("invalid", bad, False)
    assert len(cfg.errors) == 1 and cfg.errors[0].startswith(f"root={bad}:")


def test_lockdown_check_and_foreign_parameters() -> None:
    cfg = parse("rd.shell=0 rd.emergency=poweroff rd.live.check rd.retry=20 persistence-media=removable "
                "rd.retry=20 nomodeset splash hostname=kiosk")
    assert (cfg.shell, cfg.emergency, cfg.check) == (False, "poweroff", True)
    assert cfg.ignored == ("rd.retry=20 (dracut)", "persistence-media=removable (live-boot)")
    assert cfg.errors == () and cfg.init_args == ("nomodeset", "splash")
    assert parse("verify-checksums").check and parse("liveinit.check=1").check
    assert not parse("liveinit.check=0").check and parse("").shell and parse("").emergency == ""
    bad = parse("rd.emergency=explode")
    assert bad.emergency == ""
    assert bad.errors == ("rd.emergency=explode: use reboot, poweroff, halt; using halt",)


# -- plain root parameters -----------------------------------------------------
def test_rootfstype_rootflags_ro_rw() -> None:
    cfg = parse("root=/dev/vda1 rootfstype=ext4 rootflags=noatime,data=ordered rw")
    assert (cfg.rootfstype, cfg.rootflags, cfg.readonly) == ("ext4", "noatime,data=ordered", False)
    assert parse("").readonly is True
    assert parse("rw ro").readonly is True


def test_rootdelay_and_rootwait() -> None:
    assert parse("").rootdelay == DEFAULT_ROOTDELAY == 30
    assert parse("rootdelay=5").rootdelay == 5.0
    assert parse("rootdelay=2.5").rootdelay == 2.5
    assert parse("rootwait").rootdelay == ROOTWAIT_SECONDS


@pytest.mark.parametrize("bad", ["rootdelay=", "rootdelay=abc", "rootdelay=-1", "rootdelay=nan",
                                 "rootdelay=inf"])
def test_bad_rootdelay(bad: str) -> None:
    cfg = parse(bad)
    assert cfg.rootdelay == DEFAULT_ROOTDELAY
    assert "rootdelay" in cfg.errors[0]


def test_init_and_init_args() -> None:
    cfg = parse("init=/lib/systemd/systemd quiet single -- --log-level=debug foo")
    assert cfg.init == "/lib/systemd/systemd"
    assert cfg.init_args == ("single", "--log-level=debug", "foo")
    assert parse("init=bin/sh").init is None and parse("init=bin/sh").errors


# -- live image location -------------------------------------------------------
@pytest.mark.parametrize("text, path", [
    ("", LIVE_IMAGE),
    ("liveinit.image=/boot/root.sfs", "/boot/root.sfs"),
    ("liveinit.image=boot/root.sfs", "/boot/root.sfs"),
    ("live-media-path=/casper", "/casper/filesystem.squashfs"),
    ("rd.live.dir=LiveOS", "/LiveOS/squashfs.img"),
    ("rd.live.squashimg=root.img", "/LiveOS/root.img"),
    ("rd.live.dir=/x/ rd.live.squashimg=y.sfs", "/x/y.sfs"),
])
def test_live_image_path(text: str, path: str) -> None:
    assert parse(text).live_image == path


# -- union ---------------------------------------------------------------------
@pytest.mark.parametrize("text, union", [
    ("", "overlay"), ("union=aufs", "aufs"), ("liveinit.union=unionfs", "unionfs"),
    ("union=bind", "bind"), ("union=none", "none"), ("union=overlayfs", "overlay"),
    ("liveinit.union=OVERLAY", "overlay"),
])
def test_union(text: str, union: str) -> None:
    cfg = parse(text)
    assert cfg.union == union and cfg.errors == ()


def test_unknown_union() -> None:
    cfg = parse("union=zfs")
    assert cfg.union == "overlay"
    assert "union=zfs" in cfg.errors[0]


# -- toram, findiso, persistence, overlay size -------------------------------------
@pytest.mark.parametrize("text, on", [
    ("toram", True), ("rd.live.ram=1", True), ("rd.live.ram=0", False), ("liveinit.toram", True),
    ("liveinit.toram=no", False), ("toram liveinit.toram=0", False), ("", False),
])
def test_toram(text: str, on: bool) -> None:
    assert parse(text).toram is on


def test_findiso() -> None:
    assert parse("findiso=/isos/debian.iso").findiso == "/isos/debian.iso"
    assert parse("iso-scan/filename=isos/d.iso").findiso == "/isos/d.iso"


@pytest.mark.parametrize("text, spec", [
    ("", None),
    ("persistence", "LABEL=persistence"),
    ("persistence persistence-label=mine", "LABEL=mine"),
    ("liveinit.persistence=LABEL=store:/live.img", "LABEL=store:/live.img"),
    ("liveinit.persistence=/dev/sdb2", "/dev/sdb2"),
    ("rd.live.overlay=UUID=1234", "UUID=1234"),
    ("persistence liveinit.persistence=none", None),
])
def test_persistence(text: str, spec: str | None) -> None:
    assert parse(text).persistence == spec


@pytest.mark.parametrize("text, size", [
    ("", "50%"), ("liveinit.overlay_size=2g", "2g"), ("overlay-size=25%", "25%"),
    ("rd.live.overlay.size=4096", "4096m"),
])
def test_overlay_size(text: str, size: str) -> None:
    assert parse(text).overlay_size == size


def test_bad_overlay_size() -> None:
    cfg = parse("liveinit.overlay_size=lots")
    assert cfg.overlay_size == "50%" and cfg.errors


# -- modules ---------------------------------------------------------------------
def test_early_modules_accumulate_in_order() -> None:
    cfg = parse("rd.driver.pre=virtio_blk,ahci liveinit.modules=fs-ext4,ahci")
    assert cfg.modules_early == ("virtio_blk", "ahci", "fs-ext4")


def test_blacklist_all_spellings_normalised() -> None:
    cfg = parse("modprobe.blacklist=nouveau,snd-hda-intel rd.driver.blacklist=b43 "
                "module_blacklist=pcspkr liveinit.blacklist=floppy")
    assert cfg.blacklist == {"nouveau", "snd_hda_intel", "b43", "pcspkr", "floppy"}


def test_module_options() -> None:
    cfg = parse('e1000e.InterruptThrottleRate="3000 3000" usb-storage.quirks=1:2:u '
                "usbcore.nousb rd.live.image systemd.unit=rescue.target liveinit.debug")
    assert cfg.module_options == {"e1000e": 'InterruptThrottleRate="3000 3000"',
                                  "usb_storage": "quirks=1:2:u", "usbcore": "nousb"}


# -- break points, debug, quiet ------------------------------------------------------
@pytest.mark.parametrize("text, stages", [
    ("rd.break", {"handover"}),
    ("rd.break=pre-mount", {"stack"}),
    ("rd.break=initqueue,pre-pivot", {"findroot", "handover"}),
    ("rd.break=cmdline", {"cmdline"}),
    ("break", {"findroot"}),
    ("break=top", {"cmdline"}),
    ("break=modules", {"coldplug"}),
    ("break=mount", {"stack"}),
    ("break=bottom", {"handover"}),
    ("liveinit.break=early,coldplug", {"early", "coldplug"}),
])
def test_break_points(text: str, stages: set[str]) -> None:
    cfg = parse(text)
    assert cfg.break_at == stages and cfg.errors == ()


def test_unknown_break_point() -> None:
    cfg = parse("rd.break=nowhere")
    assert cfg.break_at == frozenset() and "nowhere" in cfg.errors[0]


@pytest.mark.parametrize("flag", ["debug", "rd.debug", "liveinit.debug"])
def test_debug(flag: str) -> None:
    assert parse(flag).debug and not parse("").debug


def test_quiet() -> None:
    assert parse("quiet").quiet and not parse("").quiet


# -- defaults overridden by /proc/cmdline ------------------------------------------------
def test_proc_cmdline_overrides_baked_defaults() -> None:
    cfg = parse("union=bind rootdelay=3 rw", defaults="union=aufs rootdelay=10 quiet toram")
    assert cfg.union == "bind" and cfg.rootdelay == 3 and not cfg.readonly
    assert cfg.quiet and cfg.toram   # kept from the defaults


def test_init_args_from_cmdline_replace_defaults() -> None:
    assert parse("", defaults="-- single").init_args == ("single",)
    assert parse("-- 3", defaults="-- single").init_args == ("3",)


def test_unterminated_quote_is_reported() -> None:
    cfg = parse('root=LABEL="My Disk quiet')
    assert cfg.root == RootSpec("label", "My Disk quiet", False)
    assert any("unterminated" in e for e in cfg.errors)


def test_kernel_params_are_ignored() -> None:
    cfg = parse("BOOT_IMAGE=/vmlinuz console=ttyS0,115200 initrd=/initrd.img")
    assert cfg == parse("")


@pytest.mark.parametrize("word, field, value", [
    ("liveinit.root=LABEL=X", "root", RootSpec("label", "X", False)),
    ("liveinit.rootfstype=xfs", "rootfstype", "xfs"),
    ("liveinit.rootflags=noatime", "rootflags", "noatime"),
    ("liveinit.rootdelay=7", "rootdelay", 7.0),
    ("liveinit.init=/bin/bash", "init", "/bin/bash"),
    ("liveinit.findiso=/a.iso", "findiso", "/a.iso"),
    ("liveinit.rw", "readonly", False),
    ("liveinit.quiet", "quiet", True),
    ("liveinit.image=/x.sfs", "live_image", "/x.sfs"),
    ("liveinit.union=bind", "union", "bind"),
    ("liveinit.toram", "toram", True),
    ("liveinit.persistence=LABEL=p", "persistence", "LABEL=p"),
    ("liveinit.overlay-size=1g", "overlay_size", "1g"),
    ("liveinit.debug", "debug", True),
])
def test_every_parameter_has_a_liveinit_spelling(word: str, field: str, value: object) -> None:
    cfg = parse(word)
    assert getattr(cfg, field) == value
    assert cfg.errors == ()


def test_unknown_liveinit_parameter_is_reported_not_silently_dropped() -> None:
    cfg = parse("liveinit.persistance=LABEL=x quiet")
    assert cfg.persistence is None and cfg.quiet
    assert any("liveinit.persistance" in e and "unknown" in e for e in cfg.errors)
    assert parse("liveinit.demo=poweroff").errors == ()   # the demo root's own parameter


def test_kernel_given_init_arguments_win_over_the_guess() -> None:
    # The kernel consumed `nomodeset` itself and passed only `single` to init.
    cfg = parse("nomodeset single", init_argv=("single",))
    assert cfg.init_args == ("single",)
    assert parse("nomodeset single", init_argv=()).init_args == ()
    # the image's baked `-- args` still apply when the kernel passed nothing
    assert parse("", defaults="-- emergency", init_argv=()).init_args == ("emergency",)
