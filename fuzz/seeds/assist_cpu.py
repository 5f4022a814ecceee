#!/usr/bin/env python3
"""Seeds for the assist_cpu fuzz target (fuzz/fuzz_targets/assist_cpu.rs has the input layout).

Each seed is a long-mode vCPU with real page tables (a 2 MiB user page over all of guest memory)
at one of the instructions the assist finishes, or stopped at the system call bridge's breakpoint
after a SYSCALL the backend left half done. Usage: assist_cpu.py OUTPUT_DIR
"""
import struct
import sys
from pathlib import Path

PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
IDT, HANDLER, ENTRY, KSTACK, USER = 0x5000, 0x5800, 0x6000, 0x7000, 0x1000
FLAGS = 1 | 2 | 4 | 16  # paging, WP, PAE, long mode


def header(op, rip, rsp=0x8000, rcx=0, r11=0, rax=0, lstar=0, star=0, sfmask=0, bp=(1, 1)):
    h = bytes([op, FLAGS, 0]) + struct.pack("<H", 0)
    h += struct.pack("<11Q", rip, rsp, rcx, r11, rax, PML4, IDT, 0xFFF, lstar, star, sfmask)
    h += struct.pack("<2Q", *bp)
    assert len(h) == 109
    return h


def memory(code_at=None, code=b""):
    m = bytearray(PD + 8)
    struct.pack_into("<Q", m, PML4, PDPT | 7)
    struct.pack_into("<Q", m, PDPT, PD | 7)
    m += bytes(0x8000 - len(m))
    struct.pack_into("<Q", m, PD, 0x87)  # 2 MiB page at 0: present, writable, user
    if code_at is not None:
        m[code_at:code_at + len(code)] = code
    return m


INSTRUCTIONS = {
    "int3": b"\xcc",
    "fwait": b"\x9b",
    "clac": b"\x0f\x01\xca",
    "stac": b"\x0f\x01\xcb",
    "popcnt": b"\xf3\x0f\xb8\xc3",
    "rdrand": b"\x0f\xc7\xf0",
    "rdseed": b"\x0f\xc7\xf8",
    "stmxcsr": b"\x0f\xae\x1c\x25\x00\x70\x00\x00",
    "ldmxcsr": b"\x0f\xae\x14\x25\x00\x70\x00\x00",
}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, code in INSTRUCTIONS.items():
        seed = header(1, USER) + memory(USER, code)
        (out / f"seed-{name}").write_bytes(seed)
    # The bridge: LSTAR written, the #PF gate at HANDLER, and the vCPU at the handler with the
    # frame a half-done SYSCALL leaves (IF clear in its RFLAGS, RCX after a SYSCALL in user memory).
    m = memory(USER, b"\x0f\x05\x90")
    gate = struct.pack("<HHBBHIi", HANDLER & 0xFFFF, 0x10, 0, 0x8E, HANDLER >> 16, 0, 0)
    m[IDT + 14 * 16:IDT + 15 * 16] = gate
    m[HANDLER:HANDLER + 2] = b"\x90\x90"
    struct.pack_into("<6Q", m, KSTACK, 0x14, ENTRY, 0x33, 0x10002, 0x7FF0, 0x2B)
    seed = header(0, HANDLER, rsp=KSTACK, rcx=USER + 2, r11=0x246, rax=ENTRY, lstar=ENTRY,
                  star=0x0023_0010_0000_0000, sfmask=0x47700, bp=(1, 1)) + m
    (out / "seed-syscall").write_bytes(seed)


if __name__ == "__main__":
    main()
