// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
//
// Conveyor's member filter (XDP). Frames of the appliance's protocol (UDP whose payload starts
// with the frame header: magic "CV", version 1, this group's id) pass only if their source
// (IPv4 address, UDP port) is a member of the current view; the others are dropped here, before
// the kernel's stack or the member's process spends anything on them. Everything that is not
// the appliance's protocol passes untouched (ssh, ARP, IPv6, other UDP).
//
// The member set is double-buffered: the loader fills the map that is not active, then flips
// `active` with one aligned 4-byte write, so a frame is always checked against a complete set
// (the old view's or the new one's), never against a half-written one.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Keep in step with `Stat` in src/lib.rs.
enum stat {
	STAT_MEMBER = 0,      // protocol frame from a member: passed
	STAT_NOT_MEMBER = 1,  // protocol frame from anyone else: dropped
	STAT_OTHER = 2,       // not the appliance's protocol: passed
	STAT_OTHER_GROUP = 3, // the protocol, another group id: passed (its MAC will fail there)
	STAT_COUNT = 4,
};

struct member_key {
	__u32 addr; // IPv4 source address, network byte order
	__u16 port; // UDP source port, network byte order
	__u16 pad;
};

struct config {
	__u32 group; // the group id frames must carry
	__u32 enabled;
};

#define MEMBERS_MAX 1024

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MEMBERS_MAX);
	__type(key, struct member_key);
	__type(value, __u32); // member id
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 s, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &s);
	if (c)
		*c += 1;
	return verdict;
}

SEC("xdp")
int conveyor_member_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STAT_OTHER, XDP_PASS);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return count(STAT_OTHER, XDP_PASS);
	// Fragments other than the first carry no UDP header: not ours to judge.
	if (ip->frag_off & bpf_htons(0x1fff))
		return count(STAT_OTHER, XDP_PASS);
	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		return count(STAT_OTHER, XDP_PASS);
	__u8 *h = (void *)(udp + 1);
	if ((void *)(h + 8) > end)
		return count(STAT_OTHER, XDP_PASS);
	// Frame header: magic 0x5643 little endian ("CV"), version 1, kind, group (u32 LE).
	if (h[0] != 0x43 || h[1] != 0x56 || h[2] != 1)
		return count(STAT_OTHER, XDP_PASS);
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->enabled)
		return count(STAT_OTHER, XDP_PASS);
	__u32 group = (__u32)h[4] | ((__u32)h[5] << 8) | ((__u32)h[6] << 16) | ((__u32)h[7] << 24);
	if (group != cfg->group)
		return count(STAT_OTHER_GROUP, XDP_PASS);

	struct member_key key = {
		.addr = ip->saddr,
		.port = udp->source,
		.pad = 0,
	};
	__u32 *which = bpf_map_lookup_elem(&active, &zero);
	__u32 *member;
	if (which && *which == 1)
		member = bpf_map_lookup_elem(&members1, &key);
	else
		member = bpf_map_lookup_elem(&members0, &key);
	if (member)
		return count(STAT_MEMBER, XDP_PASS);
	return count(STAT_NOT_MEMBER, XDP_DROP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
