// SPDX-License-Identifier: MIT OR GPL-2.0
//
// rigwatch: who opened each TCP connection, recorded when it is opened. The
// capture sensor sees a pool's traffic and looks the client socket up to find
// its process; a connection that lasts 50 ms, or whose process exits, is gone
// by then. inet_sock_set_state fires on every TCP state change: at SYN_SENT
// the connecting task is current (its pid, start time, uid, comm and network
// namespace are kept per socket, in a bounded LRU map); at ESTABLISHED the
// source port is assigned, and the 4-tuple goes with that owner into a ring
// buffer that user space drains into a bounded table the capture sensor
// consults. CO-RE against the running kernel's BTF, like rounding.bpf.c.
//
// Cost: a compare on every other state change (most of them), a map update
// per connect and a lookup, delete and ring-buffer record per connection.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

// Only the fields read, named as in the kernel (the kernel's own are inside
// anonymous unions; CO-RE finds them by name).
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	__u8 s6_addr[16];
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct task_struct {
	struct task_struct *group_leader;
	__u64 start_boottime;
} __attribute__((preserve_access_index));

struct owner {
	__u32 pid;
	__u32 uid;
	__u64 start_boottime_ns;
	char comm[16];
};

struct conn_event {
	__u32 pid;
	__u32 uid;
	__u64 start_boottime_ns;
	__u32 netns;
	__u16 family;
	__u16 sport; // host order
	__u16 dport; // host order
	__u16 pad;
	__u8 saddr[16]; // IPv4 in the first 4 bytes
	__u8 daddr[16];
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct owner);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} connects SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_state, struct sock *sk, int oldstate, int newstate)
{
	__u64 key = (__u64)sk;
	if (newstate == TCP_SYN_SENT) {
		// connect(2): the caller is current
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();
		struct owner o = {};
		o.pid = bpf_get_current_pid_tgid() >> 32;
		o.uid = (__u32)bpf_get_current_uid_gid();
		o.start_boottime_ns = BPF_CORE_READ(t, group_leader, start_boottime);
		bpf_get_current_comm(o.comm, sizeof(o.comm));
		bpf_map_update_elem(&connecting, &key, &o, BPF_ANY);
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;
	struct owner *o = bpf_map_lookup_elem(&connecting, &key);
	if (!o)
		return 0; // connected before the program was attached
	if (newstate == TCP_ESTABLISHED) {
		unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
		struct conn_event *e = bpf_ringbuf_reserve(&connects, sizeof(*e), 0);
		if (e) {
			__builtin_memset(e, 0, sizeof(*e));
			e->pid = o->pid;
			e->uid = o->uid;
			e->start_boottime_ns = o->start_boottime_ns;
			__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
			e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
			e->family = family;
			e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
			e->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
			if (family == AF_INET6) {
				BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
				BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
			} else {
				BPF_CORE_READ_INTO((__be32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
				BPF_CORE_READ_INTO((__be32 *)e->daddr, sk, __sk_common.skc_daddr);
			}
			bpf_ringbuf_submit(e, 0); // full: dropped, never waited for
		}
	}
	bpf_map_delete_elem(&connecting, &key);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
