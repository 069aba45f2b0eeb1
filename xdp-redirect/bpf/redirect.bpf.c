// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// meshpath's XDP program: the first thing a frame meets on a pod-facing veth (node side), on the
// node's host port (our end of the veth pair whose other end the node's stack owns) and on the node
// uplink. It decides only "dataplane's, kernel's or nobody's": frames the dataplane owns go to the
// AF_XDP socket of their rx queue (xsks_map), the node's own traffic is passed to the kernel untouched.
//   pod veth, host port: everything that comes in is the dataplane's.
//   uplink: UDP to the node address on a tunnel port (VXLAN 8472, Geneve 6081, WireGuard 51871) from
//           a node of the mesh (tunnel_peers_*); IP frames for a local pod prefix; replies to masqueraded flows
//           (TCP/UDP to a port of the masquerade range, echo replies with such an identifier, ICMP
//           errors quoting such a packet). Everything else (ARP, ND, etcd, ssh, ...) is the kernel's.
// Fail closed: a frame that is the dataplane's but has no socket on its queue (the agent is starting,
// restarting, or dead) is dropped and counted, never handed to the kernel, which would forward it
// without anti-spoofing or policy. Tunnel datagrams from anyone but a known node are dropped and
// counted too, so a host on the underlay cannot flood the worker.
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
#define ROLE_HOST 2

#define PORT_VXLAN 8472
#define PORT_GENEVE 6081
// Cilium's WireGuard port: encrypted traffic between nodes, the dataplane's to decrypt.
#define PORT_WIREGUARD 51871

#define MAX_QUEUES 64
#define MAX_TUNNEL_PEERS 16384

// Counter slots of `verdicts`: the loader reads them as copied-out statistics.
#define VERDICT_PASS 0
#define VERDICT_TO_XSK 1
#define VERDICT_DROP_NO_SOCKET 2
#define VERDICT_DROP_UNKNOWN_PEER 3
#define VERDICT_SLOTS 4

enum owner { KERNEL, DATAPLANE, NOBODY };

// The first eight bytes every ICMP and ICMPv6 message shares (linux/icmp.h pulls in libc headers
// that -target bpf cannot build).
struct icmp_head {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 echo_id;
	__be16 echo_seq;
};

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

struct node_config {
	__u32 role;
	__u32 has_ipv4;
	__u32 has_ipv6;
	__be32 ipv4;
	__u8 ipv6[16];
	// The masquerade port range in host order; first == 0: no masquerading.
	__u16 masq_first;
	__u16 masq_last;
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
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_TUNNEL_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_v4);
	__type(value, __u8);
} tunnel_peers_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_TUNNEL_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_v6);
	__type(value, __u8);
} tunnel_peers_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VERDICT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __always_inline int is_tunnel_port(__be16 port)
{
	return port == bpf_htons(PORT_VXLAN) || port == bpf_htons(PORT_GENEVE) ||
	       port == bpf_htons(PORT_WIREGUARD);
}

static __always_inline int addr6_eq(const __u8 *a, const __u8 *b)
{
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static __always_inline int masq_port(const struct node_config *cfg, __be16 port)
{
	__u16 p = bpf_ntohs(port);
	return cfg->masq_first && p >= cfg->masq_first && p <= cfg->masq_last;
}

// The source port (TCP, UDP) or echo identifier (ICMP `echo_type`) of a packet quoted at `l4`,
// in the masquerade range: an ICMP error about a masqueraded flow.
static __always_inline int quoted_is_masq(const struct node_config *cfg, __u8 proto, void *l4,
					  void *end, __u8 icmp_proto, __u8 echo_type)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__be16 *sport = l4;
		if ((void *)(sport + 1) > end)
			return 0;
		return masq_port(cfg, *sport);
	}
	if (proto == icmp_proto) {
		struct icmp_head *icmp = l4;
		if ((void *)(icmp + 1) > end || icmp->type != echo_type)
			return 0;
		return masq_port(cfg, icmp->echo_id);
	}
	return 0;
}

static __always_inline int masq_reply_v4(const struct node_config *cfg, struct iphdr *ip, void *l4,
					 void *end)
{
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		struct udphdr *ports = l4;
		if ((void *)(ports + 1) > end)
			return 0;
		return masq_port(cfg, ports->dest);
	}
	if (ip->protocol != IPPROTO_ICMP)
		return 0;
	struct icmp_head *icmp = l4;
	if ((void *)(icmp + 1) > end)
		return 0;
	if (icmp->type == ICMP_ECHOREPLY)
		return masq_port(cfg, icmp->echo_id);
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return 0;
	struct iphdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > end || inner->ihl < 5)
		return 0;
	return quoted_is_masq(cfg, inner->protocol, (void *)inner + inner->ihl * 4, end,
			      IPPROTO_ICMP, ICMP_ECHO);
}

static __always_inline int masq_reply_v6(const struct node_config *cfg, struct ipv6hdr *ip6,
					 void *end)
{
	void *l4 = ip6 + 1;
	if (ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP) {
		struct udphdr *ports = l4;
		if ((void *)(ports + 1) > end)
			return 0;
		return masq_port(cfg, ports->dest);
	}
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	struct icmp_head *icmp = l4;
	if ((void *)(icmp + 1) > end)
		return 0;
	if (icmp->type == ICMPV6_ECHO_REPLY)
		return masq_port(cfg, icmp->echo_id);
	if (icmp->type < ICMPV6_DEST_UNREACH || icmp->type > ICMPV6_PARAMPROB)
		return 0;
	struct ipv6hdr *inner = (void *)(icmp + 1);
	if ((void *)(inner + 1) > end)
		return 0;
	return quoted_is_masq(cfg, inner->nexthdr, inner + 1, end, IPPROTO_ICMPV6,
			      ICMPV6_ECHO_REQUEST);
}

static __always_inline enum owner uplink_owns_ipv4(void *l3, void *end,
						   const struct node_config *cfg)
{
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return KERNEL;

	struct prefix_v4 key = { .prefixlen = 32 };
	__builtin_memcpy(key.addr, &ip->daddr, 4);
	if (bpf_map_lookup_elem(&pod_prefixes_v4, &key))
		return DATAPLANE;

	if (!cfg->has_ipv4 || ip->daddr != cfg->ipv4)
		return KERNEL;
	// Only a first (or unfragmented) datagram carries the transport header.
	if (ip->frag_off & bpf_htons(0x1fff))
		return KERNEL;
	void *l4 = l3 + ip->ihl * 4;
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > end)
			return KERNEL;
		if (is_tunnel_port(udp->dest)) {
			__builtin_memcpy(key.addr, &ip->saddr, 4);
			return bpf_map_lookup_elem(&tunnel_peers_v4, &key) ? DATAPLANE : NOBODY;
		}
	}
	return masq_reply_v4(cfg, ip, l4, end) ? DATAPLANE : KERNEL;
}

static __always_inline enum owner uplink_owns_ipv6(void *l3, void *end,
						   const struct node_config *cfg)
{
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > end)
		return KERNEL;

	struct prefix_v6 key = { .prefixlen = 128 };
	__builtin_memcpy(key.addr, &ip6->daddr, 16);
	if (bpf_map_lookup_elem(&pod_prefixes_v6, &key))
		return DATAPLANE;

	if (!cfg->has_ipv6 || !addr6_eq(ip6->daddr.in6_u.u6_addr8, cfg->ipv6))
		return KERNEL;
	// Tunnels are sent without extension headers; anything else to the node is the kernel's.
	if (ip6->nexthdr == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > end)
			return KERNEL;
		if (is_tunnel_port(udp->dest)) {
			__builtin_memcpy(key.addr, &ip6->saddr, 16);
			return bpf_map_lookup_elem(&tunnel_peers_v6, &key) ? DATAPLANE : NOBODY;
		}
	}
	return masq_reply_v6(cfg, ip6, end) ? DATAPLANE : KERNEL;
}

static __always_inline enum owner uplink_owns(struct xdp_md *ctx, const struct node_config *cfg)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return KERNEL;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return uplink_owns_ipv4(eth + 1, end, cfg);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return uplink_owns_ipv6(eth + 1, end, cfg);
	return KERNEL;
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
	// An array map always has its element; without it nothing here can be trusted.
	if (!cfg) {
		count(VERDICT_DROP_NO_SOCKET);
		return XDP_DROP;
	}
	enum owner owner = cfg->role == ROLE_UPLINK ? uplink_owns(ctx, cfg) : DATAPLANE;
	if (owner == KERNEL) {
		count(VERDICT_PASS);
		return XDP_PASS;
	}
	if (owner == NOBODY) {
		count(VERDICT_DROP_UNKNOWN_PEER);
		return XDP_DROP;
	}
	int action = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_DROP);
	count(action == XDP_REDIRECT ? VERDICT_TO_XSK : VERDICT_DROP_NO_SOCKET);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
