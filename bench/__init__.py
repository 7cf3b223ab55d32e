"""Benchmarks: liveinit side by side with other initramfs generators."""
