"""hvstore: one volume interface over distributed storage for libvirt/QEMU hosts."""

__version__ = "0.1.0"
