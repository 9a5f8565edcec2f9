// SPDX-License-Identifier: GPL-2.0
/* What the syscall hooks of dsock and growth need to know about the target
 * architecture (-D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64, cmake's
 * DOCKQUOTA_BPF_ARCH): syscall numbers, the name of the syscall wrapper
 * functions fexit attaches to, and where a syscall's number and arguments sit
 * in its struct pt_regs (read with direct loads: every caller has a BTF
 * pointer to the pt_regs, from tp_btf, fexit or bpf_task_pt_regs()).
 *
 * The numbers are compile-time constants, not looked up at load time: they
 * are user ABI and never change for a given architecture, and a switch on
 * constants is what keeps the tp_btf/sys_exit programs cheap. They were
 * copied from the kernel's tables and are checked against the installed UAPI
 * headers by ctest bpf_syscall_numbers (tests/tools/bpf_arch_check.sh).
 */
#ifndef DOCKQUOTA_SYSCALL_BPF_H
#define DOCKQUOTA_SYSCALL_BPF_H

#include <bpf/bpf_tracing.h>

/* DSOCK_SYSCALLS, GROWTH_SYSCALLS: each probe's dispatch, fexit list and
 * tests/bpf (and README for growth) stay in step with the ones it uses, for
 * every architecture below. */
#if defined(__TARGET_ARCH_x86)
/* x86-64 (arch/x86/entry/syscalls/syscall_64.tbl). */
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_pwrite64 18
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile64 40 /* "sendfile" in the table; the function is __x64_sys_sendfile64 */
#define NR_connect 42
#define NR_sendto 44 /* send() is sendto(): curl, Python, most SDKs */
#define NR_recvfrom 45 /* recv() is recvfrom() */
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_splice 275
#define NR_pwritev 296
#define NR_copy_file_range 326
#define NR_pwritev2 328

/* The syscall functions fexit hooks: SYSCALL_DEFINEx() emits
 * __x64_sys_<name>(const struct pt_regs *regs) on x86-64. */
#define SYSCALL_WRAPPER_PREFIX "__x64_sys_"

/* The syscall's number (the entry code keeps it in orig_ax) and its first
 * three arguments (the syscall ABI's di, si, dx). */
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG1(regs) ((regs)->di)
#define SYSCALL_ARG2(regs) ((regs)->si)
#define SYSCALL_ARG3(regs) ((regs)->dx)

/* A 64-bit syscall; ia32 entries run with __USER32_CS and number their calls
 * from their own table, so the numbers above would misread them. */
#define USER_CS 0x33 /* __USER_CS */
#define SYSCALL_NATIVE(regs) ((regs)->cs == USER_CS)

#elif defined(__TARGET_ARCH_arm64)
/* arm64 uses the generic table (include/uapi/asm-generic/unistd.h, 64-bit
 * names: __NR3264_sendfile is sendfile, i.e. sys_sendfile64). */
#define NR_close 57
#define NR_read 63
#define NR_write 64
#define NR_readv 65
#define NR_writev 66
#define NR_pwrite64 68
#define NR_pwritev 70
#define NR_sendfile64 71 /* "sendfile"; the function is __arm64_sys_sendfile64 */
#define NR_splice 76
#define NR_connect 203
#define NR_sendto 206 /* send() is sendto() */
#define NR_recvfrom 207 /* recv() is recvfrom() */
#define NR_sendmsg 211
#define NR_recvmsg 212
#define NR_copy_file_range 285
#define NR_pwritev2 287

/* arm64 selects ARCH_HAS_SYSCALL_WRAPPER (since 4.19): SYSCALL_DEFINEx()
 * emits __arm64_sys_<name>(const struct pt_regs *regs) (seen in the BTF of
 * the kernel bpf/vmlinux/arm64/ was made from). */
#define SYSCALL_WRAPPER_PREFIX "__arm64_sys_"

/* The syscall's number (the entry code keeps it in syscallno) and its first
 * three arguments (x0, x1, x2). x0 is where the syscall's return value goes,
 * so at sys_exit it holds the result: the entry code saved the first
 * argument in orig_x0 (libbpf's PT_REGS_PARM1_SYSCALL reads it there too). */
#define SYSCALL_NR(regs) ((regs)->syscallno)
#define SYSCALL_ARG1(regs) ((regs)->orig_x0)
#define SYSCALL_ARG2(regs) ((regs)->regs[1])
#define SYSCALL_ARG3(regs) ((regs)->regs[2])

/* A 64-bit (AArch64) syscall: AArch32 (compat) tasks run with the mode bit
 * PSR_MODE32_BIT set in pstate and number their calls from arm's table. */
#define PSR_MODE32_BIT 0x10
#define SYSCALL_NATIVE(regs) (!((regs)->pstate & PSR_MODE32_BIT))

#else
#error "bpf: set -D__TARGET_ARCH_x86 or -D__TARGET_ARCH_arm64 (cmake DOCKQUOTA_BPF_ARCH)"
#endif

/* fexit on the syscall wrapper <prefix><name>, handing (NR_<name>, regs, ret)
 * to the probe's own on_sys_exit(): the same path its tp_btf/sys_exit program
 * takes, with no tracepoint slow path for anyone. */
#define FEXIT_SYSCALL(name)                                                   \
	SEC("fexit/" SYSCALL_WRAPPER_PREFIX #name)                            \
	int BPF_PROG(fexit__##name, struct pt_regs *regs, long ret)           \
	{                                                                     \
		return on_sys_exit(NR_##name, regs, ret);                     \
	}

#endif
