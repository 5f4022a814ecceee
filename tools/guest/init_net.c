/*
 * The test init's network check (`kvmkit_init=net`), for a guest with one virtio-net card, eth0:
 *
 *   KVMKIT-NET mac=M up=R addr=R         eth0's MAC (sysfs), and the results of bringing it up with
 *                                        the address kvmkit_ip=A.B.C.D (a /24)
 *   KVMKIT-NET-PING sent=3 received=N rtt_us=T
 *                                        ICMP echo to kvmkit_peer=A.B.C.D (a raw socket), the best
 *                                        round trip
 *   KVMKIT-NET-TX bytes=N ret=R us=T     a TCP connection to the peer's port 5001 that carries N bytes
 *                                        (kvmkit_netbytes=N, default 1 MiB) of a pseudo-random stream
 *                                        (seed 1), then closes
 *   KVMKIT-NET-RX bytes=N bad=B us=T     a TCP connection to the peer's port 5002, read to its end and
 *                                        compared byte for byte with the same stream (seed 2)
 *
 * The stream: a 64-bit xorshift state (x ^= x << 13; x ^= x >> 7; x ^= x << 17), stepped once per 8
 * bytes, each state written little-endian. The host side (integration-tests' kvmkit-net-peer)
 * generates and checks the same stream.
 */
#include "init.h"

#define AF_INET 2
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOCK_RAW 3
#define IPPROTO_ICMP 1
#define SIOCSIFADDR 0x8916
#define SIOCSIFNETMASK 0x891c
#define SIOCGIFFLAGS 0x8913
#define SIOCSIFFLAGS 0x8914
#define IFF_UP 0x1
#define SOL_SOCKET 1
#define SO_RCVTIMEO 20
#define SHUT_WR 1

struct sockaddr_in {
	unsigned short family;
	unsigned short port; /* network order */
	unsigned int addr;   /* network order */
	unsigned char zero[8];
};

struct ifreq {
	char name[16];
	union {
		struct sockaddr_in addr;
		short flags;
		unsigned char pad[24];
	} u;
};

struct timeval {
	long sec, usec;
};

/* "a.b.c.d" in network order, or 0. */
static unsigned int parse_ip(const char *s)
{
	unsigned int ip = 0;
	for (int part = 0; part < 4; part++) {
		unsigned int v = 0;
		if (!s || *s < '0' || *s > '9')
			return 0;
		while (*s >= '0' && *s <= '9')
			v = v * 10 + (unsigned)(*s++ - '0');
		if (v > 255 || (part < 3 && *s++ != '.'))
			return 0;
		ip |= v << (8 * part);
	}
	return ip;
}

static struct sockaddr_in peer_at(unsigned int ip, unsigned short port)
{
	struct sockaddr_in a = { AF_INET, (unsigned short)(port >> 8 | port << 8), ip, { 0 } };
	return a;
}

static struct ifreq eth0(void)
{
	struct ifreq r = { "eth0", { { 0 } } };
	return r;
}

/* Brings eth0 up with address `ip`/24; returns the first failure, or 0. */
static long configure(unsigned int ip, long *up)
{
	long s = sys3(SYS_socket, AF_INET, SOCK_DGRAM, 0);
	if (s < 0)
		return s;
	struct ifreq r = eth0();
	r.u.addr = peer_at(ip, 0);
	long ret = sys3(SYS_ioctl, s, SIOCSIFADDR, (long)&r);
	r = eth0();
	r.u.addr = peer_at(0x00ffffff, 0);
	if (ret == 0)
		ret = sys3(SYS_ioctl, s, SIOCSIFNETMASK, (long)&r);
	r = eth0();
	*up = sys3(SYS_ioctl, s, SIOCGIFFLAGS, (long)&r);
	r.u.flags |= IFF_UP;
	if (*up == 0)
		*up = sys3(SYS_ioctl, s, SIOCSIFFLAGS, (long)&r);
	sys3(SYS_close, s, 0, 0);
	return ret;
}

static unsigned short checksum(const unsigned char *p, unsigned long n)
{
	unsigned long sum = 0;
	for (unsigned long i = 0; i + 1 < n; i += 2)
		sum += (unsigned long)(p[i] | p[i + 1] << 8);
	if (n & 1)
		sum += p[n - 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (unsigned short)~sum;
}

static unsigned char packet[1500];

/* Three ICMP echoes to `ip`: how many came back, and the best round trip. */
static void ping(long out, unsigned int ip)
{
	long s = sys3(SYS_socket, AF_INET, SOCK_RAW, IPPROTO_ICMP);
	struct timeval timeout = { 3, 0 };
	sys5(SYS_setsockopt, s, SOL_SOCKET, SO_RCVTIMEO, (long)&timeout, sizeof(timeout));
	struct sockaddr_in to = peer_at(ip, 0);
	long received = 0, best = -1;
	for (unsigned short seq = 1; s >= 0 && seq <= 3; seq++) {
		unsigned char echo[64] = { 8, 0, 0, 0, 0x4b, 0x4b, 0, (unsigned char)seq };
		unsigned short c = checksum(echo, sizeof(echo));
		echo[2] = (unsigned char)c;
		echo[3] = (unsigned char)(c >> 8);
		long t0 = now_ns();
		if (sys6(SYS_sendto, s, (long)echo, sizeof(echo), 0, (long)&to, sizeof(to)) < 0)
			continue;
		for (;;) {
			long n = sys6(SYS_recvfrom, s, (long)packet, sizeof(packet), 0, 0, 0);
			if (n < 0)
				break;
			unsigned long ihl = (unsigned long)(packet[0] & 15) * 4;
			unsigned char *icmp = packet + ihl;
			if ((unsigned long)n >= ihl + 8 && icmp[0] == 0 && icmp[4] == 0x4b && icmp[7] == seq) {
				long us = (now_ns() - t0) / 1000;
				received++;
				if (best < 0 || us < best)
					best = us;
				break;
			}
		}
	}
	if (s >= 0)
		sys3(SYS_close, s, 0, 0);
	put("KVMKIT-NET-PING sent=3 received=");
	put_num(received);
	put(" rtt_us=");
	put_num(best);
	say(out);
}

/* The next 8 bytes of the stream whose state is `x`. */
static void stream_fill(unsigned long *x, unsigned char *buf, unsigned long n)
{
	for (unsigned long i = 0; i < n; i += 8) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		for (unsigned long k = 0; k < 8 && i + k < n; k++)
			buf[i + k] = (unsigned char)(*x >> (8 * k));
	}
}

static unsigned char chunk[16384], expect[16384];

static long connect_to(unsigned int ip, unsigned short port)
{
	long s = sys3(SYS_socket, AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = peer_at(ip, port);
	if (s >= 0) {
		long c = sys3(SYS_connect, s, (long)&a, sizeof(a));
		if (c < 0) {
			sys3(SYS_close, s, 0, 0);
			return c;
		}
	}
	return s;
}

/* Sends `total` bytes of stream 1 to the peer's port 5001. */
static void send_stream(long out, unsigned int ip, long total)
{
	unsigned long x = 1;
	long sent = 0, ret = 0, t0 = now_ns();
	long s = connect_to(ip, 5001);
	if (s < 0)
		ret = s;
	while (s >= 0 && sent < total) {
		long n = total - sent < (long)sizeof(chunk) ? total - sent : (long)sizeof(chunk);
		stream_fill(&x, chunk, (unsigned long)n);
		for (long off = 0; off < n;) {
			long w = sys3(SYS_write, s, (long)chunk + off, n - off);
			if (w <= 0) {
				ret = w < 0 ? w : -1;
				goto done;
			}
			off += w;
		}
		sent += n;
	}
done:
	if (s >= 0) {
		sys3(SYS_shutdown, s, SHUT_WR, 0);
		/* Wait for the peer to close: everything sent has then been read. */
		while (sys3(SYS_read, s, (long)chunk, sizeof(chunk)) > 0)
			;
		sys3(SYS_close, s, 0, 0);
	}
	put("KVMKIT-NET-TX bytes=");
	put_num(sent);
	put(" ret=");
	put_num(ret);
	put(" us=");
	put_num((now_ns() - t0) / 1000);
	say(out);
}

/* Reads the peer's port 5002 to its end, checking it against stream 2. */
static void receive_stream(long out, unsigned int ip)
{
	unsigned long x = 2;
	long got = 0, bad = 0, t0 = now_ns();
	long s = connect_to(ip, 5002);
	unsigned long have = 0, used = 0; /* bytes of `expect` made, and compared */
	while (s >= 0) {
		long n = sys3(SYS_read, s, (long)chunk, sizeof(chunk));
		if (n <= 0) {
			if (n < 0)
				bad = n;
			break;
		}
		for (long i = 0; i < n; i++) {
			if (used == have) {
				stream_fill(&x, expect, sizeof(expect));
				have = sizeof(expect);
				used = 0;
			}
			bad += chunk[i] != expect[used++];
		}
		got += n;
	}
	if (s >= 0)
		sys3(SYS_close, s, 0, 0);
	else
		bad = s;
	put("KVMKIT-NET-RX bytes=");
	put_num(got);
	put(" bad=");
	put_num(bad);
	put(" us=");
	put_num((now_ns() - t0) / 1000);
	say(out);
}

void net_up(long out, char **envp)
{
	unsigned int ip = parse_ip(env_value(envp, "kvmkit_ip="));
	long up = -1;
	long addr = configure(ip, &up);
	put("KVMKIT-NET mac=");
	put(slurp("/sys/class/net/eth0/address", small, sizeof(small)) < 0 ? "?" : small);
	put(" up=");
	put_num(up);
	put(" addr=");
	put_num(addr);
	say(out);
}

void net_checks(long out, char **envp)
{
	unsigned int peer = parse_ip(env_value(envp, "kvmkit_peer="));
	const char *bytes = env_value(envp, "kvmkit_netbytes=");
	long total = 0;
	for (const char *c = bytes ? bytes : "1048576"; *c >= '0' && *c <= '9'; c++)
		total = total * 10 + (*c - '0');
	net_up(out, envp);
	ping(out, peer);
	send_stream(out, peer, total);
	receive_stream(out, peer);
}
