"""The boot lab: machine profiles, QEMU runner and serial-console reading."""
