#!/usr/bin/env python3
"""Writes the aarch64 built-in guest's ELF as the flat arm64 Image a VMM loads (the bytes of its
loadable segments from the link base, which is where the 64-byte Image header starts; .bss and
.noinit are not in the file: the header's image_size covers them). trapvisor's build.rs does
the same in Rust. Usage: elf2image.py ELF IMAGE"""
import struct
import sys

elf = open(sys.argv[1], "rb").read()
if elf[:4] != b"\x7fELF" or elf[4] != 2 or struct.unpack_from("<H", elf, 18)[0] != 183:
    sys.exit("elf2image: not a 64-bit aarch64 ELF")
phoff, = struct.unpack_from("<Q", elf, 32)
phentsize, phnum = struct.unpack_from("<HH", elf, 54)
loads = []
for i in range(phnum):
    p_type, _, off, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
    if p_type == 1 and filesz:
        loads.append((vaddr, off, filesz))
base = min(v for v, _, _ in loads)
end = max(v + n for v, _, n in loads)
image = bytearray(end - base)
for vaddr, off, n in loads:
    image[vaddr - base:vaddr - base + n] = elf[off:off + n]
if image[56:60] != b"ARM\x64":
    sys.exit("elf2image: no arm64 Image header at the link base")
open(sys.argv[2], "wb").write(image)
