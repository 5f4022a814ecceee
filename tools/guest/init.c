/*
 * kvmkit test-guest init: a tiny static program, PID 1 in the initramfs.
 *
 * It proves that guest userspace runs and makes system calls: it asks the kernel for its PID, uname(2),
 * the wall-clock time and (from /proc/cpuinfo) the number of CPUs, prints one marker line with the
 * answers on /dev/console, runs the checks the kernel command line lists, and reboots the guest, or
 * powers it off (the kernel hands such `name=value` words to init as environment variables).
 *
 * `kvmkit_init=CHECK[,CHECK...]` lists the checks, in the order they run; one boot can run many:
 *   poweroff        power off at the end instead of rebooting
 *   disk            report each disk's size, serial and read-only flag from sysfs, mount /dev/vda
 *                   (ext4) on /mnt, print hello.txt from it, write guest-wrote.txt and sync, and try to
 *                   open /dev/vdb for writing
 *   disk-then-hang  `disk`, then print KVMKIT-DISK-SYNCED and spin instead of rebooting (the host
 *                   kills kvmkit)
 *   rootdisk        for a root filesystem on /dev/vda: print /hello.txt from it
 *   blkbench        measure /dev/vda (O_DIRECT: sequential 1 MiB writes and reads over 32 MiB, then
 *                   4 KiB reads at pseudo-random offsets) and print KVMKIT-BLKBENCH with the rates
 *   virtio          list the virtio devices the kernel bound: KVMKIT-VIRTIO count=N ids=...
 *   hvc             write KVMKIT-HVC-OK to the virtio console (/dev/hvc0) and say so on the console
 *   shell           a prompt and a few commands on /dev/hvc0 (init_shell.c) until `exit`
 *   rng             the hardware RNG the kernel uses, and bytes read from /dev/hwrng
 *   net             configure eth0 (init_net.c), ping the host, and move a byte stream over TCP
 *                   each way, checked byte for byte
 *   netup           only configure eth0 (`kvmkit_ip=`), for the host to reach the guest later
 *   vsock           talk to the host over the virtio socket device (init_vsock.c): echo, a stream
 *                   each way checked byte for byte, a hundred connections, a host that vanishes,
 *                   a connection never read (`kvmkit_vsock_bytes=N` sets the stream's size)
 *   control         last: wait for the host's control plane (init_control.c): print a tick five
 *                   times a second; Ctrl-Alt-Del typed on the keyboard reboots, the ACPI power
 *                   button powers off
 * Built with -nostdlib: no libc, so the initramfs stays a few KB (unpacking is emulated and slow).
 */
#include "init.h"

/* What gcc may call for struct copies and initializers, even freestanding. */
void *memset(void *d, int c, unsigned long n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

struct utsname {
	char sysname[65], nodename[65], release[65], version[65], machine[65], domainname[65];
};

long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

long sys5(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
	return ret;
}

long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
	return ret;
}

unsigned long len(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

char line[256];
static unsigned long used;

void put(const char *s)
{
	unsigned long n = len(s);
	for (unsigned long i = 0; i < n && used < sizeof(line) - 1; i++)
		line[used++] = s[i];
}

void put_num(long v)
{
	char buf[24];
	int i = sizeof(buf) - 1;
	int neg = v < 0;
	unsigned long u = neg ? -(unsigned long)v : (unsigned long)v;
	buf[i] = 0;
	do {
		buf[--i] = '0' + u % 10;
		u /= 10;
	} while (u);
	if (neg)
		buf[--i] = '-';
	put(&buf[i]);
}

unsigned long line_used(void)
{
	return used;
}

/* Writes the line built so far, without a newline, to fd (a prompt) and starts a new one. */
void flush_line(long fd)
{
	sys3(SYS_write, fd, (long)line, used);
	used = 0;
}

/* Writes the line built so far (plus a newline) to fd and starts a new one. */
void say(long fd)
{
	put("\n");
	sys3(SYS_write, fd, (long)line, used);
	used = 0;
}

/* Reads up to n-1 bytes of a file into buf, NUL-terminated; returns the length or a -errno. */
long slurp(const char *path, char *buf, unsigned long n)
{
	long fd = sys3(SYS_open, (long)path, 0 /* O_RDONLY */, 0);
	if (fd < 0)
		return fd;
	unsigned long got = 0;
	for (;;) {
		long r = sys3(SYS_read, fd, (long)buf + got, n - 1 - got);
		if (r <= 0)
			break;
		got += r;
	}
	sys3(SYS_close, fd, 0, 0);
	/* Drop a trailing newline: the value goes into a marker line. */
	while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == ' '))
		got--;
	buf[got] = 0;
	return got;
}

char small[256];

/* "KVMKIT-DISK name=vdX sectors=N serial=S ro=R" from sysfs, if the disk exists. */
static void report_disk(long out, const char *name)
{
	static char path[64];
	const char *labels[] = { " sectors=", " serial=", " ro=" };
	put("KVMKIT-DISK name=");
	put(name);
	for (int k = 0; k < 3; k++) {
		unsigned long p = 0;
		const char *parts[] = { "/sys/block/", name, k == 0 ? "/size" : k == 1 ? "/serial" : "/ro" };
		for (int i = 0; i < 3; i++)
			for (const char *c = parts[i]; *c; c++)
				path[p++] = *c;
		path[p] = 0;
		put(labels[k]);
		if (slurp(path, small, sizeof(small)) < 0)
			put("?");
		else
			put(small);
	}
	say(out);
}


static void disk_checks(long out)
{
	mount_sys();
	report_disk(out, "vda");
	report_disk(out, "vdb");
	long m = sys5(SYS_mount, (long)"/dev/vda", (long)"/mnt", (long)"ext4", 0, 0);
	put("KVMKIT-DISK-MOUNT ret=");
	put_num(m);
	say(out);
	if (m == 0) {
		put("KVMKIT-DISK-READ ");
		if (slurp("/mnt/hello.txt", small, sizeof(small)) < 0)
			put("?");
		else
			put(small);
		say(out);
		/* O_WRONLY|O_CREAT|O_TRUNC */
		long fd = sys3(SYS_open, (long)"/mnt/guest-wrote.txt", 01 | 0100 | 01000, 0644);
		const char *text = "written by the kvmkit guest\n";
		long w = fd < 0 ? fd : sys3(SYS_write, fd, (long)text, len(text));
		long f = fd < 0 ? fd : sys3(SYS_fsync, fd, 0, 0);
		if (fd >= 0)
			sys3(SYS_close, fd, 0, 0);
		sys3(SYS_sync, 0, 0, 0);
		long u = sys3(SYS_umount2, (long)"/mnt", 0, 0);
		put("KVMKIT-DISK-WRITE write=");
		put_num(w);
		put(" fsync=");
		put_num(f);
		put(" umount=");
		put_num(u);
		say(out);
	}
	long ro = sys3(SYS_open, (long)"/dev/vdb", 01 /* O_WRONLY */, 0);
	put("KVMKIT-DISK-RO open=");
	put_num(ro);
	if (ro >= 0) {
		long w = sys3(SYS_write, ro, (long)line, 512);
		long f = sys3(SYS_fsync, ro, 0, 0);
		put(" write=");
		put_num(w);
		put(" fsync=");
		put_num(f);
	}
	say(out);
}

long now_ns(void)
{
	struct timespec64 t;
	sys3(SYS_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&t, 0);
	return t.sec * 1000000000L + t.nsec;
}

static char bench_buf[1 << 20] __attribute__((aligned(4096)));

/* KiB per second for `bytes` in `ns`. */
static long rate(long bytes, long ns)
{
	return ns > 0 ? (bytes / 1024) * 1000000L / (ns / 1000) : -1;
}

static void blk_bench(long out)
{
	const long total = 32L << 20, chunk = 1L << 20;
	sys5(SYS_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0);
	long fd = sys3(SYS_open, (long)"/dev/vda", 02 | 040000 /* O_RDWR|O_DIRECT */, 0);
	put("KVMKIT-BLKBENCH");
	if (fd < 0) {
		put(" error=");
		put_num(fd);
		say(out);
		return;
	}
	for (unsigned long i = 0; i < sizeof(bench_buf); i++)
		bench_buf[i] = (char)(i * 7);
	long bad = 0, t0 = now_ns();
	for (long off = 0; off < total; off += chunk)
		bad |= sys4(SYS_pwrite64, fd, (long)bench_buf, chunk, off) != chunk;
	bad |= sys3(SYS_fsync, fd, 0, 0) != 0;
	long t1 = now_ns();
	for (long off = 0; off < total; off += chunk)
		bad |= sys4(SYS_pread64, fd, (long)bench_buf, chunk, off) != chunk;
	long t2 = now_ns();
	const long reads = 2000;
	unsigned long x = 12345;
	for (long i = 0; i < reads; i++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		long off = (long)((x >> 33) % (unsigned long)(total / 4096)) * 4096;
		bad |= sys4(SYS_pread64, fd, (long)bench_buf, 4096, off) != 4096;
	}
	long t3 = now_ns();
	put(" seq_write_kibps=");
	put_num(rate(total, t1 - t0));
	put(" seq_read_kibps=");
	put_num(rate(total, t2 - t1));
	put(" rand_read_4k_iops=");
	put_num(t3 > t2 ? reads * 1000000000L / (t3 - t2) : -1);
	put(" errors=");
	put_num(bad);
	say(out);
}

static struct utsname uts;
static char cpuinfo[65536];

/* Number of "processor" lines in /proc/cpuinfo, or -1. */
static long count_cpus(void)
{
	sys5(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	long len = slurp("/proc/cpuinfo", cpuinfo, sizeof(cpuinfo));
	if (len < 0)
		return -1;
	unsigned long got = (unsigned long)len;
	long cpus = 0;
	const char *key = "processor\t:";
	for (unsigned long i = 0; i < got; i++) {
		if (i != 0 && cpuinfo[i - 1] != '\n')
			continue;
		unsigned long k = 0;
		while (key[k] && cpuinfo[i + k] == key[k])
			k++;
		if (!key[k])
			cpus++;
	}
	return cpus;
}

/* The value of environment variable `key` ("kvmkit_ip=" with its '='), or 0. */
const char *env_value(char **env, const char *key)
{
	for (; *env; env++) {
		unsigned long k = 0;
		while (key[k] && (*env)[k] == key[k])
			k++;
		if (!key[k])
			return *env + k;
	}
	return 0;
}

/* The decimal number at the start of `s` (0 for none or a null `s`). */
static long number(const char *s)
{
	long n = 0;
	while (s && *s >= '0' && *s <= '9')
		n = n * 10 + (*s++ - '0');
	return n;
}

/* True if the comma-separated list `list` holds the item `want`. */
static int has_item(const char *list, const char *want)
{
	while (list && *list) {
		unsigned long k = 0;
		while (want[k] && list[k] == want[k])
			k++;
		if (!want[k] && (list[k] == ',' || !list[k]))
			return 1;
		while (*list && *list != ',')
			list++;
		if (*list == ',')
			list++;
	}
	return 0;
}

void mount_sys(void)
{
	sys5(SYS_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0);
	sys5(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);
}

struct dirent64 {
	unsigned long ino;
	long off;
	unsigned short reclen;
	unsigned char type;
	char name[];
};

static char dents[4096];

/* "KVMKIT-VIRTIO count=N ids=I,J,..." : the virtio devices the kernel bound, with their device ids
 * (2 block, 1 net, 4 rng...) in the kernel's order (virtio0, virtio1, ...). */
static void virtio_check(long out)
{
	static char path[96];
	static int ids[64];
	int count = 0;
	mount_sys();
	long dir = sys3(SYS_open, (long)"/sys/bus/virtio/devices", 0200000 /* O_DIRECTORY */, 0);
	for (;;) {
		long n = dir < 0 ? -1 : sys3(SYS_getdents64, dir, (long)dents, sizeof(dents));
		if (n <= 0)
			break;
		for (long at = 0; at < n;) {
			struct dirent64 *d = (struct dirent64 *)(dents + at);
			at += d->reclen;
			/* virtioN */
			if (d->name[0] != 'v' || count >= 64)
				continue;
			int index = 0;
			for (const char *c = d->name + 6; *c >= '0' && *c <= '9'; c++)
				index = index * 10 + (*c - '0');
			if (index >= 64)
				continue;
			unsigned long p = 0;
			for (const char *c = "/sys/bus/virtio/devices/"; *c; c++)
				path[p++] = *c;
			for (const char *c = d->name; *c; c++)
				path[p++] = *c;
			for (const char *c = "/device"; *c; c++)
				path[p++] = *c;
			path[p] = 0;
			long id = -1;
			if (slurp(path, small, sizeof(small)) > 2) {
				id = 0;
				for (const char *c = small + 2; *c; c++)
					id = id * 16 + (*c <= '9' ? *c - '0' : (*c | 0x20) - 'a' + 10);
			}
			ids[index] = (int)id;
			count++;
		}
	}
	if (dir >= 0)
		sys3(SYS_close, dir, 0, 0);
	put("KVMKIT-VIRTIO count=");
	put_num(count);
	put(" ids=");
	for (int i = 0; i < count; i++) {
		if (i)
			put(",");
		put_num(ids[i]);
	}
	say(out);
}

/* "KVMKIT-RNG current=NAME read=N": the kernel's hardware RNG and a read from it. */
static void rng_check(long out)
{
	static char random[32];
	mount_sys();
	put("KVMKIT-RNG current=");
	put(slurp("/sys/class/misc/hw_random/rng_current", small, sizeof(small)) < 0 ? "?" : small);
	long fd = sys3(SYS_open, (long)"/dev/hwrng", 0, 0);
	long n = fd < 0 ? fd : sys3(SYS_read, fd, (long)random, sizeof(random));
	if (fd >= 0)
		sys3(SYS_close, fd, 0, 0);
	put(" read=");
	put_num(n);
	say(out);
}

/* "KVMKIT-HVC open=FD write=N": KVMKIT-HVC-OK written to the virtio console. */
static void hvc_check(long out)
{
	mount_sys();
	long fd = sys3(SYS_open, (long)"/dev/hvc0", 02 | 0400 /* O_RDWR|O_NOCTTY */, 0);
	static const char ok[] = "KVMKIT-HVC-OK written through hvc0\n";
	long w = fd < 0 ? fd : sys3(SYS_write, fd, (long)ok, sizeof(ok) - 1);
	put("KVMKIT-HVC open=");
	put_num(fd);
	put(" write=");
	put_num(w);
	say(out);
	if (fd >= 0)
		sys3(SYS_close, fd, 0, 0);
}

/* `sp` is the initial stack: argc, argv[0..argc], NULL, envp..., NULL. */
void init_main(long *sp)
{
	char **envp = (char **)(sp + 1 + sp[0] + 1);
	const char *checks = env_value(envp, "kvmkit_init=");
	int power_off = has_item(checks, "poweroff");
	int hang = has_item(checks, "disk-then-hang");
	int disk = has_item(checks, "disk") || hang;
	long fd = sys3(SYS_open, (long)"/dev/console", 2 /* O_RDWR */, 0);
	if (fd < 0)
		fd = 1;
	long pid = sys3(SYS_getpid, 0, 0, 0);
	long u = sys3(SYS_uname, (long)&uts, 0, 0);
	put("KVMKIT-INIT-OK pid=");
	put_num(pid);
	put(" sysname=");
	put(u == 0 ? uts.sysname : "?");
	put(" release=");
	put(u == 0 ? uts.release : "?");
	put(" time=");
	put_num(sys3(SYS_time, 0, 0, 0));
	put(" cpus=");
	put_num(count_cpus());
	say(fd);
	if (has_item(checks, "virtio"))
		virtio_check(fd);
	if (has_item(checks, "rng"))
		rng_check(fd);
	if (has_item(checks, "hvc"))
		hvc_check(fd);
	if (has_item(checks, "shell"))
		shell(fd);
	if (disk)
		disk_checks(fd);
	if (has_item(checks, "net")) {
		mount_sys();
		net_checks(fd, envp);
	} else if (has_item(checks, "netup")) {
		mount_sys();
		net_up(fd, envp);
	}
	if (has_item(checks, "vsock")) {
		mount_sys();
		vsock_checks(fd, envp);
	}
	if (has_item(checks, "blkbench"))
		blk_bench(fd);
	if (has_item(checks, "rootdisk")) {
		put("KVMKIT-ROOT-READ ");
		put(slurp("/hello.txt", small, sizeof(small)) < 0 ? "?" : small);
		say(fd);
	}
	if (has_item(checks, "control"))
		control_wait(fd, &power_off, number(env_value(envp, "kvmkit_control_minutes=")));
	if (hang) {
		put("KVMKIT-DISK-SYNCED");
		say(fd);
		for (;;)
			sys3(SYS_pause, 0, 0, 0);
	}
	/* Default: restart (reboot=k on the command line makes that an i8042 reset). Power-off needs
	 * ACPI (S5 through the FADT's sleep control register); without it the kernel just halts. */
	sys4(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
	     power_off ? LINUX_REBOOT_CMD_POWER_OFF : LINUX_REBOOT_CMD_RESTART, 0);
	for (;;)
		;
}

__asm__(".globl _start\n"
	"_start:\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call init_main\n"
	"  hlt\n");
