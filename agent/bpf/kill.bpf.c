// SPDX-License-Identifier: MIT OR GPL-2.0
//
// rigwatch: who kills whom. Mining trojans kill the rival miners already on
// a host (`pkill -9 xmrig`, `ps | grep | xargs kill -9`, or from the miner
// itself) before they start their own; by the next pass the rivals are gone
// and nothing in /proc says who did it. signal_generate fires when a
// signal is queued: for SIGKILL and SIGTERM sent by a user-space process
// (kill, tgkill, pidfd_send_signal: si_code <= 0) to another process and
// delivered, the sender (pid, parent, uid, start times, comms) and the
// target (pid, parent, uid, start time, comm) go into a ring buffer that
// user space drains. Signals the kernel sends (the OOM killer, SIGCHLD,
// SIGPIPE…) carry no user siginfo and are left alone. CO-RE against the
// running kernel's BTF, like rounding.bpf.c.
//
// Cost: the tracepoint fires for every signal queued (SIGCHLD on each
// exit); the common path is one compare of the signal number.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define SIGKILL 9
#define SIGTERM 15
#define TRACE_SIGNAL_DELIVERED 0

// Only the fields read, named as in the kernel (si_code sits in an
// anonymous struct; CO-RE finds it by name).
struct kernel_siginfo {
	int si_signo;
	int si_errno;
	int si_code;
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	const struct cred *real_cred;
	__u64 start_boottime;
	char comm[16];
} __attribute__((preserve_access_index));

struct kill_event {
	__u32 pid; // sender (thread group)
	__u32 ppid;
	__u32 uid;
	__u32 sig;
	__u32 target;
	__u32 target_ppid;
	__u32 target_uid;
	__u32 pad;
	__u64 start_boottime_ns;
	__u64 parent_start_boottime_ns;
	__u64 target_start_boottime_ns;
	char comm[16];
	char target_comm[16];
	char parent_comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} kills SEC(".maps");

SEC("tp_btf/signal_generate")
int BPF_PROG(on_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	if (sig != SIGKILL && sig != SIGTERM)
		return 0;
	if (result != TRACE_SIGNAL_DELIVERED)
		return 0;
	// SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1): the kernel's own
	if ((unsigned long)info <= 1)
		return 0;
	if (BPF_CORE_READ(info, si_code) > 0)
		return 0; // SI_KERNEL and the fault codes: not kill(2)
	__u32 me = bpf_get_current_pid_tgid() >> 32;
	__u32 target = BPF_CORE_READ(task, tgid);
	if (me == target)
		return 0;
	struct kill_event *e = bpf_ringbuf_reserve(&kills, sizeof(*e), 0);
	if (!e)
		return 0; // full: dropped, never waited for
	struct task_struct *cur = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = BPF_CORE_READ(cur, real_parent);
	e->pid = me;
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->sig = sig;
	e->target = target;
	e->target_ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->target_uid = BPF_CORE_READ(task, real_cred, uid.val);
	e->pad = 0;
	e->start_boottime_ns = BPF_CORE_READ(cur, group_leader, start_boottime);
	e->parent_start_boottime_ns = BPF_CORE_READ(parent, group_leader, start_boottime);
	e->target_start_boottime_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	BPF_CORE_READ_STR_INTO(&e->target_comm, task, group_leader, comm);
	BPF_CORE_READ_STR_INTO(&e->parent_comm, parent, group_leader, comm);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
