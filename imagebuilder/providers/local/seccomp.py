"""The seccomp filter of a sandbox step: a classic BPF program (what bubblewrap's `--seccomp FD` loads
just before it runs the step) refusing with EPERM the system calls a build step never needs: mounting and
pivoting (no host path can be brought in), kernel modules, kexec, reboot, swap, clock and kernel-log
changes, ptrace and cross-process memory access, file handles (open_by_handle_at reaches files outside a
bind), bpf/perf/userfaultfd/io_uring/keyrings (kernel attack surface), new namespaces (clone/unshare with
CLONE_NEW* flags, setns), and raw or packet sockets when the step has no network. Built here (x86_64
numbers, no libseccomp binding needed) so the argv and the program are plain data a test can read.
"""

from __future__ import annotations

import errno
import os
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)
DENIED: dict[str, int] = {
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
NR_CLONE, NR_UNSHARE, NR_CLONE3, NR_SOCKET = 56, 272, 435, 41
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)
AF_PACKET, SOCK_RAW, SOCK_TYPE_MASK = 17, 3, 0xF

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_ALU_AND_K = 0x54
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000

_NR, _ARCH = 0, 4


def _arg(n: int) -> int:
    """Offset of the low 32 bits of argument n in struct seccomp_data (little endian)."""
    return 16 + 8 * n


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def program(*, network: bool) -> bytes:
    """The filter as bytes of `struct sock_filter[]`."""
    deny = RET_ERRNO | errno.EPERM
    enosys = RET_ERRNO | errno.ENOSYS
    out: list[bytes] = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, deny),  # 32-bit or foreign-ABI system calls: refused outright
        _insn(_LD_W_ABS, 0, 0, _NR),
        _insn(_JGE_K, 0, 1, X32_SYSCALL_BIT),
        _insn(_RET_K, 0, 0, deny),
    ]
    for nr in sorted(DENIED.values()):
        out += [_insn(_JEQ_K, 0, 1, nr), _insn(_RET_K, 0, 0, deny)]
    # clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc fall back to clone.
    out += [_insn(_JEQ_K, 0, 1, NR_CLONE3), _insn(_RET_K, 0, 0, enosys)]
    for nr in (NR_CLONE, NR_UNSHARE):  # flags in argument 0 for both
        out += [
            _insn(_JEQ_K, 0, 4, nr),
            _insn(_LD_W_ABS, 0, 0, _arg(0)),
            _insn(_JSET_K, 0, 1, NAMESPACE_FLAGS),
            _insn(_RET_K, 0, 0, deny),
            _insn(_RET_K, 0, 0, RET_ALLOW),
        ]
    if not network:
        out += [
            _insn(_JEQ_K, 0, 7, NR_SOCKET),
            _insn(_LD_W_ABS, 0, 0, _arg(0)),
            _insn(_JEQ_K, 4, 0, AF_PACKET),
            _insn(_LD_W_ABS, 0, 0, _arg(1)),
            _insn(_ALU_AND_K, 0, 0, SOCK_TYPE_MASK),
            _insn(_JEQ_K, 1, 0, SOCK_RAW),
            _insn(_RET_K, 0, 0, RET_ALLOW),
            _insn(_RET_K, 0, 0, deny),
        ]
    out.append(_insn(_RET_K, 0, 0, RET_ALLOW))
    return b"".join(out)


def program_fd(*, network: bool) -> int:
    """A sealed-in-practice memfd holding the program, positioned at 0, for `bwrap --seccomp FD`; the
    caller passes it to bwrap and closes it afterwards."""
    fd = os.memfd_create("imagebuilder-seccomp", 0)
    os.write(fd, program(network=network))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
