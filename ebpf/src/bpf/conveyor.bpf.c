// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//
// Conveyor's XDP program: one per member interface, two jobs.
//
// 1. Member filter. Frames of the appliance's protocol (UDP whose payload starts with the frame
//    header: magic "CV", version 4, a kind, this group's id, or one of `groups` for a sharded
//    member's other shards) pass only if their source (IPv4
//    address, UDP port) may send that kind: members of the current view send every kind;
//    candidates (members of the group file that are not in the view: joiners, and removed
//    members that come back) send only control frames (join requests), which the protocol
//    core then authenticates and admits or refuses. Everything else from anyone is dropped
//    here, before the kernel or the member's process spends anything on it. The set is
//    double-buffered: the loader fills the map that is not active, then flips `active` with
//    one aligned 4-byte write, so a frame is judged by a complete set, the old view's or the
//    new one's, never a half-written one.
// 2. Steering (the `afxdp` transport). A protocol frame for a UDP port listed in `ports` (a
//    sharded member lists one port per shard, all to one socket) is
//    redirected to the AF_XDP socket of its receive queue (`xsks`), if it arrived on the queue
//    the port's socket is bound to; on another queue, or with no socket registered yet, it
//    goes to the kernel's stack, where the member's UDP socket takes it (counted: nothing is
//    lost, it only takes the slow path).
//
// Everything that is not the appliance's protocol passes untouched (ssh, ARP, IPv6, other UDP).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Keep in step with `Stats` in src/lib.rs.
enum stat {
	STAT_MEMBER = 0,      // protocol frame from a member of the view: passed on
	STAT_NOT_MEMBER = 1,  // protocol frame from anyone else: dropped
	STAT_OTHER = 2,       // not the appliance's protocol: passed
	STAT_OTHER_GROUP = 3, // the protocol, another group id: passed (its MAC fails there)
	STAT_JOINER = 4,      // control frame from a candidate: passed on
	STAT_NOT_IN_VIEW = 5, // data or status frame from a candidate: dropped
	STAT_REDIRECTED = 6,  // handed to the AF_XDP socket
	STAT_MISSTEERED = 7,  // for a socket of another queue: passed to the stack
	STAT_NO_SOCKET = 8,   // for a port whose queue has no socket yet: passed to the stack
	STAT_COUNT = 9,
};

struct member_key {
	__u32 addr; // IPv4 source address, network byte order
	__u16 port; // UDP source port, network byte order
	__u16 pad;
};

struct config {
	__u32 group;  // the group id frames must carry
	__u32 filter; // 1: judge sources by the member maps
};

// Value of the member maps: the frame kinds (bit 1 << kind) the source may send.
#define KINDS_ALL 0xe
#define KINDS_CONTROL 0x8

#define MEMBERS_MAX 1024
#define QUEUES_MAX 64
#define GROUPS_MAX 64
#define PORTS_MAX 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEMBERS_MAX);
	__type(key, struct member_key);
	__type(value, __u32);
} members0 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEMBERS_MAX);
	__type(key, struct member_key);
	__type(value, __u32);
} members1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); // 0: members0 is the view's set, 1: members1
} active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

// More group ids admitted beside config.group (a sharded member's other shards: each shard is
// a group of its own, on its own ports): group id -> 1.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GROUPS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} groups SEC(".maps");

// Destination UDP port (host byte order) -> the receive queue whose socket serves it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORTS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

// Receive queue -> its AF_XDP socket.
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, QUEUES_MAX);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 s)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &s);
	if (c)
		*c += 1;
}

SEC("xdp")
int conveyor_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto other;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		goto other;
	// Fragments carry no UDP header or only part of a frame: not the protocol's.
	if (ip->frag_off & bpf_htons(0x3fff))
		goto other;
	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		goto other;
	__u8 *h = (void *)(udp + 1);
	if ((void *)(h + 8) > end)
		goto other;
	// Frame header: magic 0x5643 little endian ("CV"), version 4, kind, group (u32 LE).
	if (h[0] != 0x43 || h[1] != 0x56 || h[2] != 4 || h[3] > 7)
		goto other;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		goto other;
	__u32 group = (__u32)h[4] | ((__u32)h[5] << 8) | ((__u32)h[6] << 16) | ((__u32)h[7] << 24);
	if (group != cfg->group && !bpf_map_lookup_elem(&groups, &group)) {
		count(STAT_OTHER_GROUP);
		return XDP_PASS;
	}

	if (cfg->filter) {
		struct member_key key = {
			.addr = ip->saddr,
			.port = udp->source,
			.pad = 0,
		};
		__u32 *which = bpf_map_lookup_elem(&active, &zero);
		__u32 *kinds;
		if (which && *which == 1)
			kinds = bpf_map_lookup_elem(&members1, &key);
		else
			kinds = bpf_map_lookup_elem(&members0, &key);
		if (!kinds) {
			count(STAT_NOT_MEMBER);
			return XDP_DROP;
		}
		if (!(*kinds & (1u << h[3]))) {
			count(STAT_NOT_IN_VIEW);
			return XDP_DROP;
		}
		count(*kinds == KINDS_ALL ? STAT_MEMBER : STAT_JOINER);
	}

	__u32 port = bpf_ntohs(udp->dest);
	__u32 *queue = bpf_map_lookup_elem(&ports, &port);
	if (!queue)
		return XDP_PASS;
	if (*queue != ctx->rx_queue_index) {
		count(STAT_MISSTEERED);
		return XDP_PASS;
	}
	long verdict = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	count(verdict == XDP_REDIRECT ? STAT_REDIRECTED : STAT_NO_SOCKET);
	return verdict;

other:
	count(STAT_OTHER);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
