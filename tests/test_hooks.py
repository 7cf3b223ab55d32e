"""Kernel hooks (packer/hooks.py): install/remove into a temp root, the
coexistence rule with initramfs-tools, and the hook scripts run for real
against a stub `liveinit` on PATH."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from packer import config, hooks
from packer.cli import main
from packer.errors import CommandError

POSTINST, POSTRM, PLUGIN = (h.path for h in hooks.hook_files())


def _p(root: Path, path: object) -> Path:
    return root / str(path).lstrip("/")


def test_install_writes_hooks_and_config_then_is_idempotent(tmp_path: Path) -> None:
    done = hooks.install(tmp_path)
    assert len(done) == 4
    for h in hooks.hook_files():
        p = _p(tmp_path, h.path)
        assert p.read_text() == h.text and p.stat().st_mode & 0o777 == 0o755
    assert _p(tmp_path, hooks.CONFIG).read_text() == hooks.DEFAULT_CONFIG
    assert hooks.install(tmp_path) == []
    assert hooks.installed(tmp_path)


def test_install_keeps_the_users_config_and_updates_an_old_hook(tmp_path: Path) -> None:
    conf = _p(tmp_path, hooks.CONFIG)
    conf.parent.mkdir(parents=True)
    conf.write_text("host-only = true\n")
    old = _p(tmp_path, POSTINST)
    old.parent.mkdir(parents=True)
    old.write_text(f"#!/bin/sh\n{hooks.MARKER}: an older version\n")
    assert hooks.install(tmp_path) == [f"installed {h.path}" for h in hooks.hook_files()]
    assert conf.read_text() == "host-only = true\n"
    assert old.read_text() == hooks.postinst_hook()


def test_install_and_remove_refuse_a_foreign_file(tmp_path: Path) -> None:
    foreign = _p(tmp_path, POSTRM)
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(CommandError, match="not written by liveinit"):
        hooks.install(tmp_path)
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"
    assert not _p(tmp_path, POSTINST).exists() or hooks._ours(_p(tmp_path, POSTINST))
    with pytest.raises(CommandError, match="not written by liveinit"):
        hooks.remove(tmp_path)
    assert foreign.exists()


def test_remove_deletes_only_the_hooks(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    done = hooks.remove(tmp_path)
    assert done == [f"removed {h.path}" for h in hooks.hook_files()]
    assert not any(_p(tmp_path, h.path).exists() for h in hooks.hook_files())
    assert _p(tmp_path, hooks.CONFIG).exists()
    assert hooks.remove(tmp_path) == []


def test_default_config_is_a_valid_pack_config(tmp_path: Path) -> None:
    conf = tmp_path / "pack.toml"
    conf.write_text(hooks.DEFAULT_CONFIG)
    assert config.load_toml(conf) == {}
    # Every commented example is a real key of the pack config.
    examples = [ln[2:].split("#")[0] for ln in hooks.DEFAULT_CONFIG.splitlines() if " = " in ln]
    conf.write_text("\n".join(examples) + "\n")
    assert set(config.load_toml(conf)) == {"host_only", "layers", "crypttab", "keymap", "modules", "cmdline",
                                           "compress"}


@pytest.mark.parametrize("hook", hooks.hook_files(), ids=lambda h: h.path.name)
def test_hook_scripts_are_valid_sh(hook: hooks.HookFile, tmp_path: Path) -> None:
    for sh in ("sh", "dash", "bash"):
        if shutil.which(sh):
            subprocess.run([sh, "-n"], input=hook.text, text=True, check=True)


def _divert(root: Path, *args: str) -> str:
    return subprocess.run(["dpkg-divert", "--root", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _initramfs_tools(root: Path) -> None:
    """What initramfs-tools installs that --replace is about."""
    for g in hooks.OTHER_GENERATORS[:1]:
        for path in g.hooks:
            _p(root, path).parent.mkdir(parents=True, exist_ok=True)
            _p(root, path).write_text("#!/bin/sh -e\nupdate-initramfs -c -k \"$1\"\n")
            _p(root, path).chmod(0o755)
        assert g.config is not None
        _p(root, g.config).parent.mkdir(parents=True, exist_ok=True)
        _p(root, g.config).write_text("update_initramfs=yes\n")
        tool = root / "usr/sbin" / g.tool
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)


def test_replace_sets_initramfs_tools_aside_and_restore_brings_it_back(tmp_path: Path) -> None:
    root = tmp_path
    _initramfs_tools(root)
    gen = hooks.OTHER_GENERATORS[0]
    assert gen.config is not None
    with pytest.raises(CommandError, match="hooks are not installed"):
        hooks.replace(root)
    hooks.install(root)
    assert hooks.other_generator(root) == "initramfs-tools"
    done = hooks.replace(root)
    # Its two hooks and its config diverted (dracut's too: it may be installed later), the config replaced.
    assert len([d for d in done if d.startswith("set ")]) == 5
    hook = _p(root, gen.hooks[0])
    assert not hook.exists() and hook.with_name(hook.name + hooks.DISABLED_SUFFIX).exists()
    assert "update_initramfs=no" in _p(root, gen.config).read_text()
    assert _divert(root, "--listpackage", str(gen.hooks[0])) == "LOCAL"
    assert hooks.other_generator(root) is None and hooks.replaced(root)
    assert hooks.replace(root) == []                                 # idempotent
    # A package installed after --replace: dpkg would write its hook to the diverted name.
    later = str(hooks.OTHER_GENERATORS[1].hooks[0])
    assert _divert(root, "--truename", later) == later + hooks.DISABLED_SUFFIX

    hooks.restore(root)
    assert hook.read_text().startswith("#!/bin/sh -e\nupdate-initramfs")
    assert _p(root, gen.config).read_text() == "update_initramfs=yes\n"
    assert hooks.other_generator(root) == "initramfs-tools" and not hooks.replaced(root)
    assert _divert(root, "--list") == ""
    assert hooks.restore(root) == []


def test_replace_refuses_a_foreign_diversion(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    path = str(hooks.OTHER_GENERATORS[0].hooks[0])
    _divert(tmp_path, "--local", "--divert", path + ".mine", "--add", path)
    with pytest.raises(CommandError, match="already diverted"):
        hooks.replace(tmp_path)


def test_replace_sets_initrd_generator_where_kernel_install_is_the_entry_point(tmp_path: Path) -> None:
    _p(tmp_path, hooks.KERNEL_INSTALL_DIR).mkdir(parents=True)
    conf = _p(tmp_path, hooks.INSTALL_CONF)
    conf.parent.mkdir(parents=True)
    conf.write_text("layout=bls\n")
    hooks.install(tmp_path)
    hooks.replace(tmp_path)
    assert conf.read_text() == "layout=bls\ninitrd_generator=liveinit\n"
    hooks.remove(tmp_path)
    assert conf.read_text() == "layout=bls\n"
    conf.write_text("initrd_generator=dracut\n")
    hooks.install(tmp_path)
    with pytest.raises(CommandError, match="already chooses"):
        hooks.replace(tmp_path)


# The scripts themselves, run by sh against a stub `liveinit` that records its
# arguments and writes --output (or fails when asked to).

STUB = """#!/bin/sh
echo "$@" >> "$STUB_LOG"
[ -z "$STUB_FAIL" ] || { echo "modules: no such directory" >&2; exit 3; }
while [ $# -gt 0 ]; do [ "$1" = --output ] && echo image > "$2"; shift; done
"""


def _run_hook(root: Path, path: object, *args: str, fail: bool = False, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Run a hook with its absolute paths moved under `root`."""
    text = _p(root, path).read_text()
    for absolute in ("/etc/", "/var/log/", "/lib/modules/"):
        text = text.replace(absolute, f"{root}{absolute}")
    bin_dir = root / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "liveinit").write_text(STUB)
    (bin_dir / "liveinit").chmod(0o755)
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(root / "stub.log"),
            "STUB_FAIL": "1" if fail else "", **(env or {})}
    return subprocess.run(["sh", "-c", text, "hook", *args], env=full, capture_output=True, text=True,
                          check=False)


def test_postinst_hook_makes_initrd_img_when_liveinit_is_the_generator(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    boot = tmp_path / "boot"
    boot.mkdir()
    res = _run_hook(tmp_path, POSTINST, "6.1.0-9-amd64", f"{boot}/vmlinuz-6.1.0-9-amd64",
                    env={"DEB_MAINT_PARAMS": "configure 6.1.0-9"})
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""                  # Debian hooks keep stdout clean (debconf)
    assert (boot / "initrd.img-6.1.0-9-amd64").read_text() == "image\n"
    argv = (tmp_path / "stub.log").read_text().split()
    assert argv[:2] == ["pack", "--config"] and argv[2].endswith("/etc/liveinit/pack.toml")
    assert argv[argv.index("--kver") + 1] == "6.1.0-9-amd64"
    # Only on configure: an abort-upgrade run does nothing.
    (tmp_path / "stub.log").unlink()
    res = _run_hook(tmp_path, POSTINST, "6.1.0-9-amd64", env={"DEB_MAINT_PARAMS": "abort-upgrade 6.1.0-9"})
    assert res.returncode == 0 and not (tmp_path / "stub.log").exists()


def test_postinst_hook_writes_beside_an_active_initramfs_tools(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    hook = _p(tmp_path, hooks.OTHER_GENERATORS[0].hooks[0])
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    stub_tool = tmp_path / "stub-bin" / "update-initramfs"
    stub_tool.parent.mkdir()
    stub_tool.write_text("#!/bin/sh\n")
    stub_tool.chmod(0o755)
    boot = tmp_path / "boot"
    res = _run_hook(tmp_path, POSTINST, "6.1.0-9-amd64", f"{boot}/vmlinuz-6.1.0-9-amd64")
    assert res.returncode == 0, res.stderr
    assert "initramfs-tools makes" in res.stderr
    assert (boot / "liveinit.img-6.1.0-9-amd64").exists()
    assert not (boot / "initrd.img-6.1.0-9-amd64").exists()


def test_postinst_hook_failure_names_the_kernel_and_the_log(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "initrd.img-6.1.0-9-amd64").write_text("previous\n")
    res = _run_hook(tmp_path, POSTINST, "6.1.0-9-amd64", f"{boot}/vmlinuz-6.1.0-9-amd64", fail=True)
    assert res.returncode == 3
    log = tmp_path / "var/log/liveinit/initramfs-6.1.0-9-amd64.log"
    assert "kernel 6.1.0-9-amd64" in res.stderr and str(log) in res.stderr
    assert "modules: no such directory" in res.stderr and "modules: no such directory" in log.read_text()
    # The previous image is kept, no partial one is left.
    assert (boot / "initrd.img-6.1.0-9-amd64").read_text() == "previous\n"
    assert sorted(p.name for p in boot.iterdir()) == ["initrd.img-6.1.0-9-amd64"]


def test_postinst_hook_without_a_version_fails_as_debian_hooks_do(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    assert _run_hook(tmp_path, POSTINST).returncode == 2
    assert _run_hook(tmp_path, POSTRM).returncode == 0


def test_postrm_hook_deletes_liveinits_images(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    boot = tmp_path / "boot"
    boot.mkdir()
    for name in ("initrd.img-6.1.0-9-amd64", "liveinit.img-6.1.0-9-amd64", "initrd.img-6.1.0-8-amd64"):
        (boot / name).write_text("x")
    res = _run_hook(tmp_path, POSTRM, "6.1.0-9-amd64", f"{boot}/vmlinuz-6.1.0-9-amd64",
                    env={"DEB_MAINT_PARAMS": "remove"})
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in boot.iterdir()) == ["initrd.img-6.1.0-8-amd64"]


def test_install_plugin_runs_only_as_the_chosen_generator(tmp_path: Path) -> None:
    hooks.install(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    args = ("add", "6.1.0-9-amd64", str(tmp_path / "entry"), str(tmp_path / "vmlinuz"))
    env = {"KERNEL_INSTALL_STAGING_AREA": str(staging)}
    assert _run_hook(tmp_path, PLUGIN, *args, env=env).returncode == 0
    assert not (staging / "initrd").exists()
    env["KERNEL_INSTALL_INITRD_GENERATOR"] = "liveinit"
    res = _run_hook(tmp_path, PLUGIN, *args, env=env)
    assert res.returncode == 0, res.stderr
    assert (staging / "initrd").read_text() == "image\n"
    (staging / "initrd").unlink()
    assert _run_hook(tmp_path, PLUGIN, *args, "/boot/given.img", env=env).returncode == 0
    assert not (staging / "initrd").exists()
    assert _run_hook(tmp_path, PLUGIN, *args, fail=True, env=env).returncode == 3


def test_cli_install_hooks_into_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-hooks", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"installed {POSTINST}" in out and "made by liveinit" in out
    assert main(["install-hooks", "--root", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["install-hooks", "--root", str(tmp_path), "--remove"]) == 0
    assert not _p(tmp_path, POSTINST).exists()
    assert main(["install-hooks", "--root", str(tmp_path / "missing")]) == 1
    assert os.path.isdir(tmp_path)
