// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// meshpath-perf forward, way (d): the kernel-native reference for meshpath's forwarding. A benchmark
// reference only, never a second dataplane: it knows nothing of policy, services or conntrack. Each
// established flow's decision is handed to it ready-made in `flows` (what meshpath's pipeline did to
// that flow's request: the backend it chose and the tunnel headers it prepended), and it applies that
// decision in XDP as meshpath applies it in userspace: the inner destination address and port
// rewritten with their checksums, the inner TTL decremented, outer Ethernet, IPv4, UDP and VXLAN headers
// prepended (lengths and the outer IPv4 checksum written for this frame), out of the uplink through a
// devmap. So it costs what the kernel needs at the least for the same bytes on the wire.
// Frames of no known flow go to the kernel (the sink refuses what the kernel makes of them); frames it
// cannot forward (TTL expiring, no headroom) are dropped and counted.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
#define OUTER_LEN 50
#define OUTER_IP 14
#define OUTER_UDP 34
#define MAX_FLOWS 131072

// Counter slots of `counts`.
#define COUNT_REDIRECTED 0
#define COUNT_NO_FLOW 1
#define COUNT_DROPPED 2
#define COUNT_SLOTS 3

struct flow_key {
	__be32 src;
	__be32 dst;
	__be16 src_port;
	__be16 dst_port;
	__u8 protocol;
	__u8 pad[3];
};

struct flow_decision {
	// The outer headers as meshpath wrote them, with the IPv4 total length, the IPv4 checksum and
	// the UDP length zero: this program writes them for each frame.
	__u8 outer[OUTER_LEN];
	__be16 backend_port;
	__be32 backend;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_decision);
} flows SEC(".maps");

// Slot 0: the uplink.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} uplink SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct ports {
	__be16 src;
	__be16 dst;
};

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &slot);
	if (n)
		*n += 1;
}

static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

// RFC 1624: a checksum over data in which the 32-bit `from` became `to`.
static __always_inline __u16 replace4(__u16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;
	sum += (__u16)~(from & 0xffff) + (__u16)~(from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	return ~fold(sum);
}

static __always_inline __u16 replace2(__u16 check, __be16 from, __be16 to)
{
	__u32 sum = (__u16)~check + (__u16)~from + to;
	return ~fold(sum);
}

static __always_inline __u16 ipv4_checksum(const __u16 *header)
{
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += header[i];
	return ~fold(sum);
}

// The inner packet's L4 checksum field, or NULL for UDP sent without one. `ports` is in bounds.
static __always_inline __u16 *l4_checksum(struct iphdr *ip, struct ports *ports, void *end)
{
	if (ip->protocol == IPPROTO_UDP) {
		__u16 *check = (__u16 *)ports + 3;
		if ((void *)(check + 1) > end || *check == 0)
			return NULL;
		return check;
	}
	__u16 *check = (__u16 *)ports + 8;
	return (void *)(check + 1) > end ? NULL : check;
}

// The inner rewrite: destination address and port to the backend, TTL down by one.
static __always_inline int rewrite_inner(struct iphdr *ip, struct ports *ports, void *end,
					 const struct flow_decision *d)
{
	__u16 *l4 = l4_checksum(ip, ports, end);
	if (!l4 && ip->protocol == IPPROTO_TCP)
		return -1;
	if (l4) {
		__u16 sum = replace4(*l4, ip->daddr, d->backend);
		sum = replace2(sum, ports->dst, d->backend_port);
		// A UDP checksum that comes out zero is sent as all ones (zero means none).
		*l4 = (sum == 0 && ip->protocol == IPPROTO_UDP) ? 0xffff : sum;
	}
	ip->check = replace4(ip->check, ip->daddr, d->backend);
	ip->daddr = d->backend;
	ports->dst = d->backend_port;
	// TTL is the high byte of the checksummed word it shares with the protocol.
	ip->check = replace2(ip->check, bpf_htons((__u16)ip->ttl << 8), bpf_htons((__u16)(ip->ttl - 1) << 8));
	ip->ttl -= 1;
	return 0;
}

static __always_inline int encapsulate(struct xdp_md *ctx, const struct flow_decision *d)
{
	__u32 inner_len = ctx->data_end - ctx->data;
	if (bpf_xdp_adjust_head(ctx, -OUTER_LEN))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + OUTER_LEN > end)
		return -1;
	__builtin_memcpy(data, d->outer, OUTER_LEN);
	struct iphdr *outer = data + OUTER_IP;
	outer->tot_len = bpf_htons(inner_len + OUTER_LEN - OUTER_IP);
	outer->check = 0;
	outer->check = ipv4_checksum((const __u16 *)outer);
	struct udphdr_len {
		__be16 src, dst, len, check;
	} *udp = data + OUTER_UDP;
	udp->len = bpf_htons(inner_len + OUTER_LEN - OUTER_UDP);
	return 0;
}

SEC("xdp")
int mp_ref_encap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct ports *ports = (void *)(ip + 1);
	if ((void *)(ports + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	// No options, no fragments: the benchmark sends neither.
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	struct flow_key key = {
		.src = ip->saddr,
		.dst = ip->daddr,
		.src_port = ports->src,
		.dst_port = ports->dst,
		.protocol = ip->protocol,
	};
	const struct flow_decision *d = bpf_map_lookup_elem(&flows, &key);
	if (!d) {
		count(COUNT_NO_FLOW);
		return XDP_PASS;
	}
	if (ip->ttl <= 1 || rewrite_inner(ip, ports, end, d) || encapsulate(ctx, d)) {
		count(COUNT_DROPPED);
		return XDP_DROP;
	}
	count(COUNT_REDIRECTED);
	return bpf_redirect_map(&uplink, 0, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
