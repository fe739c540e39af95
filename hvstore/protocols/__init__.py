"""Wire clients hvstore speaks itself (NBD to qemu-nbd, libiscsi via ctypes, Sheepdog, gfapi fix-ups)."""
