// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// meshpath's XDP program: the first thing a frame meets on a pod-facing veth (node side) or on the
// node uplink. It decides only "dataplane's or kernel's": frames the dataplane owns go to the AF_XDP
// socket of their rx queue (xsks_map), everything else is passed to the kernel untouched.
//   pod veth: everything a pod sends is the dataplane's.
//   uplink:   UDP to the node address on a tunnel port (VXLAN 8472, Geneve 6081), and IP frames for a
//             local pod prefix; the node's own traffic (ARP, ND, etcd, ssh, ...) is the kernel's.
// One object is loaded per interface, so xsks_map is keyed by that interface's rx queue alone.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROLE_POD 0
#define ROLE_UPLINK 1

#define PORT_VXLAN 8472
#define PORT_GENEVE 6081

#define MAX_QUEUES 64

// Counter slots of `verdicts`: the loader reads them as copied-out statistics.
#define VERDICT_PASS 0
#define VERDICT_TO_XSK 1

struct node_config {
	__u32 role;
	__u32 has_ipv4;
	__u32 has_ipv6;
	__be32 ipv4;
	__u8 ipv6[16];
};

struct prefix_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct prefix_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_v4);
	__type(value, __u8);
} pod_prefixes_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_v6);
	__type(value, __u8);
} pod_prefixes_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __always_inline int is_tunnel_port(__be16 port)
{
	return port == bpf_htons(PORT_VXLAN) || port == bpf_htons(PORT_GENEVE);
}

static __always_inline int addr6_eq(const __u8 *a, const __u8 *b)
{
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static __always_inline int uplink_owns_ipv4(void *l3, void *end, const struct node_config *cfg)
{
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;

	struct prefix_v4 key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &ip->daddr, 4);
	if (bpf_map_lookup_elem(&pod_prefixes_v4, &key))
		return 1;

	// Only a first (or unfragmented) datagram carries the UDP header.
	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
		return 0;
	if (!cfg->has_ipv4 || ip->daddr != cfg->ipv4)
		return 0;
	struct udphdr *udp = l3 + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		return 0;
	return is_tunnel_port(udp->dest);
}

static __always_inline int uplink_owns_ipv6(void *l3, void *end, const struct node_config *cfg)
{
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > end)
		return 0;

	struct prefix_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	if (bpf_map_lookup_elem(&pod_prefixes_v6, &key))
		return 1;

	// Tunnels are sent without extension headers; anything else to the node is the kernel's.
	if (ip6->nexthdr != IPPROTO_UDP || !cfg->has_ipv6)
		return 0;
	if (!addr6_eq(ip6->daddr.in6_u.u6_addr8, cfg->ipv6))
		return 0;
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > end)
		return 0;
	return is_tunnel_port(udp->dest);
}

static __always_inline int uplink_owns(struct xdp_md *ctx, const struct node_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return uplink_owns_ipv4(eth + 1, end, cfg);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return uplink_owns_ipv6(eth + 1, end, cfg);
	return 0;
}

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&verdicts, &slot);
	if (n)
		*n += 1;
}

SEC("xdp")
int meshpath_redirect(struct xdp_md *ctx)
{
	__u32 zero = 0;
	const struct node_config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg) {
		count(VERDICT_PASS);
		return XDP_PASS;
	}
	if (cfg->role == ROLE_UPLINK && !uplink_owns(ctx, cfg)) {
		count(VERDICT_PASS);
		return XDP_PASS;
	}
	count(VERDICT_TO_XSK);
	// Without a bound socket on this queue the frame falls back to the kernel.
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
