// SPDX-License-Identifier: MIT OR GPL-2.0
//
// rigwatch: the floating-point rounding mode a process leaves behind when it
// is switched out. RandomX (Monero's proof of work) changes the SSE rounding
// mode constantly (its CFROUND instruction writes MXCSR.RC); ordinary
// programs leave it at round-to-nearest (RC = 0) for their whole life. The
// kernel saves MXCSR with the task's FPU registers on every context switch
// and then fires x86_fpu_regs_deactivated, so counting the switches whose
// saved RC is not 0 gives, per thread group, how often a process is caught
// hashing RandomX-style. The same signal as cryptnono's `monero` detector
// and Kubescape's R1007, loaded here through CO-RE against the running
// kernel's BTF (no kernel headers, nothing compiled on the host).
//
// Cost on the common path (RC == 0): one load, a shift and mask, a compare.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

// Only the fields read, named as in the kernel: CO-RE relocates their
// offsets against /sys/kernel/btf/vmlinux when the program is loaded.
struct fxregs_state {
	__u32 mxcsr;
} __attribute__((preserve_access_index));

struct xregs_state {
	struct fxregs_state i387;
} __attribute__((preserve_access_index));

union fpregs_state {
	struct xregs_state xsave;
} __attribute__((preserve_access_index));

struct fpstate {
	union fpregs_state regs;
} __attribute__((preserve_access_index));

struct fpu {
	struct fpstate *fpstate;
} __attribute__((preserve_access_index));

// Per thread group: switches caught with a non-default rounding mode, and
// the modes seen (bit RC set for each RC value). Per CPU, so no update
// races; LRU, so a flood of processes evicts the oldest, never fails.
struct rounding {
	__u64 odd;
	__u64 modes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct rounding);
} rounding SEC(".maps");

SEC("tp_btf/x86_fpu_regs_deactivated")
int BPF_PROG(fpu_deactivated, struct fpu *fpu)
{
	struct fpstate *st = fpu->fpstate;
	__u32 mxcsr = st->regs.xsave.i387.mxcsr;
	__u32 rc = (mxcsr >> 13) & 3;
	if (rc == 0)
		return 0;
	// in the switch, `current` is still the task being switched out
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct rounding *r = bpf_map_lookup_elem(&rounding, &tgid);
	if (r) {
		r->odd += 1;
		r->modes |= 1ULL << rc;
	} else {
		struct rounding first = { .odd = 1, .modes = 1ULL << rc };
		bpf_map_update_elem(&rounding, &tgid, &first, BPF_NOEXIST);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
