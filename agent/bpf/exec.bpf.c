// SPDX-License-Identifier: MIT OR GPL-2.0
//
// rigwatch: every exec, with its command line, as it happens. The proc
// connector says only "pid N exec'd"; by the time /proc/N is read a dropper's
// `curl | sh` or a miner started for 5 ms is gone. On sched_process_exec the
// new program's argv is already in its memory: it is copied (up to
// ARGV_MAX bytes) with the pid, parent, uid, start time and the file
// executed into a ring buffer that user space drains. CO-RE against the
// running kernel's BTF, like rounding.bpf.c.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define ARGV_MAX 1024 // a power of two: the copy is bounded by a mask
#define FILE_MAX 256

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	__u64 start_boottime;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct exec_event {
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 argv_len;
	__u64 start_boottime_ns;
	char comm[16];
	char filename[FILE_MAX];
	char argv[ARGV_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} execs SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	struct exec_event *e = bpf_ringbuf_reserve(&execs, sizeof(*e), 0);
	if (!e)
		return 0; // full: user space counts what it missed by the gap
	e->pid = BPF_CORE_READ(p, tgid);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->start_boottime_ns = BPF_CORE_READ(p, start_boottime);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	const char *fname = BPF_CORE_READ(bprm, filename);
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), fname) < 0)
		e->filename[0] = 0;
	__u64 start = BPF_CORE_READ(p, mm, arg_start);
	__u64 end = BPF_CORE_READ(p, mm, arg_end);
	__u64 len = end > start ? end - start : 0;
	if (len > ARGV_MAX - 1)
		len = ARGV_MAX - 1; // 64-bit all along: the verifier sees the bound
	if (bpf_probe_read_user(e->argv, len, (void *)start) < 0)
		len = 0;
	e->argv_len = len;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
