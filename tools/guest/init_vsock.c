/*
 * The test init's vsock check (`kvmkit_init=vsock`), for a guest with a virtio socket device. The
 * host side is integration-tests' vsock_linux.rs, which drives each phase in turn:
 *
 *   KVMKIT-VSOCK-READY cid=C             listening on ports 5000 to 5003 (C: the guest's CID)
 *   KVMKIT-VSOCK-ECHO bytes=N bad=B fnv=F us=T
 *                                        port 5000, one connection: every byte read is written back
 *                                        until the host closes its side; the N bytes read are
 *                                        compared with the stream of seed 4 (B differ) and hashed
 *                                        (FNV-1a 64, F in hex)
 *   KVMKIT-VSOCK-G2H bytes=N echoed=E bad=B fnv=F us=T
 *                                        a connection to the host (CID 2) port 6000: N bytes
 *                                        (kvmkit_vsock_bytes=N, default 1 MiB) of the stream of
 *                                        seed 3 sent, while the E bytes the host echoes are read and
 *                                        compared with it (B differ); F hashes what was sent
 *   KVMKIT-VSOCK-MANY in=I out=O         port 5001: 100 connections accepted, all held open, then
 *                                        each one's line `h<i>\n` answered with `guest:h<i>\n`
 *                                        (I answered); then 100 connections to the host's port
 *                                        6001, all open at once, each sending `g<i>\n` and reading
 *                                        `host:g<i>\n` (O right)
 *   KVMKIT-VSOCK-VANISH read=R wrote=W end=E
 *                                        port 5002: the host sends some bytes and disappears while
 *                                        the guest keeps writing; E is the error that ends the
 *                                        writes (-32 EPIPE, -104 ECONNRESET), 0 if none came
 *   KVMKIT-VSOCK-STALL held=1            port 5003: a connection accepted and never read, until a
 *                                        second connection on the port says the host is done
 *
 * With `kvmkit_vsock_bench=1` (tools/bench-vsock) it first echoes the byte-at-a-time round trips
 * of one connection on port 5004 (`KVMKIT-VSOCK-PING n=K`: K bytes echoed), then runs the echo and
 * the stream to the host, and stops there.
 *
 * The stream is init_net.c's: a 64-bit xorshift state stepped once per 8 bytes, little-endian.
 */
#include "init.h"

#define AF_VSOCK 40
#define SOCK_STREAM 1
#define SHUT_WR 1
#define POLLIN 1
#define POLLOUT 4
#define VMADDR_CID_ANY 0xffffffffu
#define HOST_CID 2
#define IOCTL_VM_SOCKETS_GET_LOCAL_CID 0x7b9
#define MANY 100

struct sockaddr_vm {
	unsigned short family;
	unsigned short reserved;
	unsigned int port;
	unsigned int cid;
	unsigned char flags;
	unsigned char zero[3];
};

struct pollfd {
	int fd;
	short events, revents;
};

struct stream {
	unsigned long state;
	unsigned char block[8];
	int used;
};

static void stream_init(struct stream *s, unsigned long seed)
{
	s->state = seed;
	s->used = 8;
}

static unsigned char stream_next(struct stream *s)
{
	if (s->used == 8) {
		unsigned long x = s->state;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		s->state = x;
		for (int i = 0; i < 8; i++)
			s->block[i] = (unsigned char)(x >> (8 * i));
		s->used = 0;
	}
	return s->block[s->used++];
}

static unsigned long fnv(unsigned long h, const unsigned char *p, long n)
{
	for (long i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3UL;
	}
	return h;
}

#define FNV_START 0xcbf29ce484222325UL

static void put_hex(unsigned long v)
{
	char s[17];
	for (int i = 15; i >= 0; i--) {
		s[i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	}
	s[16] = 0;
	put(s);
}

static unsigned char buf[65536];
static unsigned char out[16384];

static long listen_on(unsigned int port)
{
	long s = sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm a = { AF_VSOCK, 0, port, VMADDR_CID_ANY, 0, { 0 } };
	if (s < 0 || sys3(SYS_bind, s, (long)&a, sizeof(a)) < 0 || sys3(SYS_listen, s, 128, 0) < 0)
		return -1;
	return s;
}

static long accept_one(long l)
{
	return sys3(SYS_accept, l, 0, 0);
}

static long connect_host(unsigned int port)
{
	long s = sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	struct sockaddr_vm a = { AF_VSOCK, 0, port, HOST_CID, 0, { 0 } };
	if (s < 0)
		return s;
	long r = sys3(SYS_connect, s, (long)&a, sizeof(a));
	if (r < 0) {
		sys3(SYS_close, s, 0, 0);
		return r;
	}
	return s;
}

static long write_all(long s, const unsigned char *p, long n)
{
	long done = 0;
	while (done < n) {
		long w = sys3(SYS_write, s, (long)(p + done), n - done);
		if (w <= 0)
			return w < 0 ? w : -1;
		done += w;
	}
	return done;
}

/* How many of the `n` bytes at `p` differ from what `expect` yields next. */
static long mismatches(struct stream *expect, const unsigned char *p, long n)
{
	long bad = 0;
	for (long i = 0; i < n; i++)
		bad += p[i] != stream_next(expect);
	return bad;
}

/* The end of a stream check's report line: " bad=N fnv=H us=T", then the line goes out. */
static void say_check(long out_fd, long bad, unsigned long h, long t0)
{
	put(" bad=");
	put_num(bad);
	put(" fnv=");
	put_hex(h);
	put(" us=");
	put_num((now_ns() - t0) / 1000);
	say(out_fd);
}

/* Port 5000: echo everything back, checking it against stream 4. */
static void echo(long out_fd, long l)
{
	struct stream expect;
	stream_init(&expect, 4);
	long c = accept_one(l), total = 0, bad = 0, t0 = now_ns();
	unsigned long h = FNV_START;
	for (;;) {
		long n = c < 0 ? -1 : sys3(SYS_read, c, (long)buf, sizeof(buf));
		if (n <= 0)
			break;
		bad += mismatches(&expect, buf, n);
		h = fnv(h, buf, n);
		total += n;
		if (write_all(c, buf, n) < 0)
			break;
	}
	if (c >= 0) {
		sys3(SYS_shutdown, c, SHUT_WR, 0);
		sys3(SYS_close, c, 0, 0);
	}
	put("KVMKIT-VSOCK-ECHO bytes=");
	put_num(total);
	say_check(out_fd, bad, h, t0);
}

/* To the host's port 6000: send `total` bytes of stream 3 and read the echo at the same time. */
static void guest_to_host(long out_fd, long total)
{
	struct stream send, expect;
	stream_init(&send, 3);
	stream_init(&expect, 3);
	long t0 = now_ns(), s = connect_host(6000), sent = 0, echoed = 0, bad = 0, pending = 0, at = 0;
	unsigned long h = FNV_START;
	int shut = 0;
	while (s >= 0) {
		if (sent == total && !shut) {
			sys3(SYS_shutdown, s, SHUT_WR, 0);
			shut = 1;
		}
		struct pollfd p = { (int)s, POLLIN | (sent < total ? POLLOUT : 0), 0 };
		if (sys3(SYS_poll, (long)&p, 1, 30000) <= 0)
			break;
		if (p.revents & POLLOUT) {
			if (pending == 0) {
				long n = total - sent < (long)sizeof(out) ? total - sent : (long)sizeof(out);
				for (long i = 0; i < n; i++)
					out[i] = stream_next(&send);
				h = fnv(h, out, n);
				pending = n;
				at = 0;
			}
			long w = sys3(SYS_write, s, (long)(out + at), pending);
			if (w < 0)
				break;
			at += w;
			pending -= w;
			sent += w;
		}
		if (p.revents & (POLLIN | 0x10 /* POLLHUP */)) {
			long n = sys3(SYS_read, s, (long)buf, sizeof(buf));
			if (n <= 0)
				break;
			bad += mismatches(&expect, buf, n);
			echoed += n;
		}
	}
	if (s >= 0)
		sys3(SYS_close, s, 0, 0);
	put("KVMKIT-VSOCK-G2H bytes=");
	put_num(s < 0 ? s : sent);
	put(" echoed=");
	put_num(echoed);
	say_check(out_fd, bad, h, t0);
}

/* Reads one line (without its newline) into `line_buf`; its length, or -1. */
static long read_line(long s, char *line_buf, long room)
{
	long n = 0;
	while (n < room - 1) {
		char c;
		if (sys3(SYS_read, s, (long)&c, 1) != 1)
			return -1;
		if (c == '\n')
			break;
		line_buf[n++] = c;
	}
	line_buf[n] = 0;
	return n;
}

static int same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static long conns[MANY];

/* Port 5001 and the host's 6001: a hundred connections at once, each way. */
static void many(long out_fd, long l)
{
	long answered = 0, right = 0;
	for (int i = 0; i < MANY; i++)
		conns[i] = accept_one(l);
	for (int i = 0; i < MANY; i++) {
		char got[32], reply[48] = "guest:";
		if (conns[i] < 0 || read_line(conns[i], got, sizeof(got)) < 0)
			continue;
		unsigned long n = 6;
		for (const char *c = got; *c && n < sizeof(reply) - 2; c++)
			reply[n++] = *c;
		reply[n++] = '\n';
		if (write_all(conns[i], (unsigned char *)reply, (long)n) > 0)
			answered++;
	}
	for (int i = 0; i < MANY; i++)
		if (conns[i] >= 0)
			sys3(SYS_close, conns[i], 0, 0);
	for (int i = 0; i < MANY; i++)
		conns[i] = connect_host(6001);
	for (int i = 0; i < MANY; i++) {
		char msg[16] = "g", want[32] = "host:g", got[32];
		char num[8];
		int k = 0, v = i;
		do {
			num[k++] = (char)('0' + v % 10);
			v /= 10;
		} while (v);
		int m = 1, w = 6;
		while (k) {
			msg[m++] = num[k - 1];
			want[w++] = num[--k];
		}
		msg[m] = '\n';
		want[w] = 0;
		if (conns[i] < 0 || write_all(conns[i], (unsigned char *)msg, m + 1) < 0)
			continue;
		if (read_line(conns[i], got, sizeof(got)) >= 0 && same(got, want))
			right++;
	}
	for (int i = 0; i < MANY; i++)
		if (conns[i] >= 0)
			sys3(SYS_close, conns[i], 0, 0);
	put("KVMKIT-VSOCK-MANY in=");
	put_num(answered);
	put(" out=");
	put_num(right);
	say(out_fd);
}

/* Port 5002: write until the host, gone, makes the writes fail. */
static void vanish(long out_fd, long l)
{
	long c = accept_one(l), got = 0, wrote = 0, end = 0;
	for (int i = 0; i < (int)sizeof(out); i++)
		out[i] = (unsigned char)i;
	while (c >= 0 && wrote < (64L << 20)) {
		struct pollfd p = { (int)c, POLLIN | POLLOUT, 0 };
		if (sys3(SYS_poll, (long)&p, 1, 30000) <= 0)
			break;
		if (p.revents & POLLIN) {
			long n = sys3(SYS_read, c, (long)buf, sizeof(buf));
			if (n > 0)
				got += n;
		}
		if (p.revents & (POLLOUT | 8 /* POLLERR */ | 0x10 /* POLLHUP */)) {
			long w = sys3(SYS_write, c, (long)out, sizeof(out));
			if (w < 0) {
				end = w;
				break;
			}
			wrote += w;
		}
	}
	if (c >= 0)
		sys3(SYS_close, c, 0, 0);
	put("KVMKIT-VSOCK-VANISH read=");
	put_num(got);
	put(" wrote=");
	put_num(wrote);
	put(" end=");
	put_num(end);
	say(out_fd);
}

/* Port 5004 (listening since before READY): echo each byte at once, for the host to time round
 * trips. */
static void pings(long out_fd, long l)
{
	long c = l < 0 ? -1 : accept_one(l), n = 0;
	char b;
	while (c >= 0 && sys3(SYS_read, c, (long)&b, 1) == 1 && sys3(SYS_write, c, (long)&b, 1) == 1)
		n++;
	if (c >= 0)
		sys3(SYS_close, c, 0, 0);
	if (l >= 0)
		sys3(SYS_close, l, 0, 0);
	put("KVMKIT-VSOCK-PING n=");
	put_num(n);
	say(out_fd);
}

/* Port 5003: hold a connection without reading it until the host's second one. */
static void stall(long out_fd, long l)
{
	long held = accept_one(l);
	long done = accept_one(l);
	if (held >= 0)
		sys3(SYS_close, held, 0, 0);
	if (done >= 0)
		sys3(SYS_close, done, 0, 0);
	put("KVMKIT-VSOCK-STALL held=");
	put_num(held >= 0 && done >= 0);
	say(out_fd);
}

void vsock_checks(long out_fd, char **envp)
{
	const char *bytes = env_value(envp, "kvmkit_vsock_bytes=");
	long total = 0;
	for (const char *c = bytes ? bytes : "1048576"; *c >= '0' && *c <= '9'; c++)
		total = total * 10 + (*c - '0');
	const char *bench = env_value(envp, "kvmkit_vsock_bench=");
	int benching = bench && *bench == '1';
	/* Every listener exists before READY: the host connects as soon as it reads it. */
	long l[4], ping_listener = benching ? listen_on(5004) : -1;
	for (int i = 0; i < 4; i++)
		l[i] = listen_on(5000 + (unsigned)i);
	unsigned int cid = 0;
	long fd = sys3(SYS_open, (long)"/dev/vsock", 0, 0);
	if (fd >= 0) {
		sys3(SYS_ioctl, fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, (long)&cid);
		sys3(SYS_close, fd, 0, 0);
	}
	put("KVMKIT-VSOCK-READY cid=");
	put_num(l[0] < 0 || l[1] < 0 || l[2] < 0 || l[3] < 0 ? -1 : (long)cid);
	say(out_fd);
	if (l[0] < 0)
		return;
	if (benching)
		pings(out_fd, ping_listener);
	echo(out_fd, l[0]);
	guest_to_host(out_fd, total);
	if (benching)
		return;
	many(out_fd, l[1]);
	vanish(out_fd, l[2]);
	stall(out_fd, l[3]);
	for (int i = 0; i < 4; i++)
		sys3(SYS_close, l[i], 0, 0);
}
