"""liveinit's boot-time runtime: the PID 1 that runs inside the initramfs.

Import-light on purpose: every module here may be imported at boot, where
each import costs about ten times what it costs natively (QEMU TCG)."""
