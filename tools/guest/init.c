/*
 * kvmkit test-guest init: a tiny static program, PID 1 in the initramfs.
 *
 * It proves that guest userspace runs and makes system calls: it asks the kernel for its PID, uname(2),
 * the wall-clock time and (from /proc/cpuinfo) the number of CPUs, prints one marker line with the
 * answers on /dev/console, and reboots the guest, or powers it off if the kernel command line has
 * `kvmkit_init=poweroff` (the kernel hands such `name=value` words to init as environment variables).
 * Built with -nostdlib: no libc, so the initramfs stays a few KB (unpacking is emulated and slow).
 */
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_getpid 39
#define SYS_uname 63
#define SYS_mount 165
#define SYS_reboot 169
#define SYS_time 201

#define LINUX_REBOOT_MAGIC1 0xfee1deadL
#define LINUX_REBOOT_MAGIC2 672274793L
#define LINUX_REBOOT_CMD_RESTART 0x01234567L
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedcL

struct utsname {
	char sysname[65], nodename[65], release[65], version[65], machine[65], domainname[65];
};

static long sys3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static long sys4(long n, long a, long b, long c, long d)
{
	long ret;
	register long r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

static long sys5(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
	return ret;
}

static unsigned long len(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static char line[256];
static unsigned long used;

static void put(const char *s)
{
	unsigned long n = len(s);
	for (unsigned long i = 0; i < n && used < sizeof(line) - 1; i++)
		line[used++] = s[i];
}

static void put_num(long v)
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

static struct utsname uts;
static char cpuinfo[65536];

/* Number of "processor" lines in /proc/cpuinfo, or -1. */
static long count_cpus(void)
{
	sys5(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	long fd = sys3(SYS_open, (long)"/proc/cpuinfo", 0 /* O_RDONLY */, 0);
	if (fd < 0)
		return -1;
	unsigned long got = 0;
	for (;;) {
		long n = sys3(SYS_read, fd, (long)cpuinfo + got, sizeof(cpuinfo) - 1 - got);
		if (n <= 0)
			break;
		got += n;
	}
	cpuinfo[got] = 0;
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

/* True if `env` (a NULL-terminated array) holds the string `want`. */
static int has_env(char **env, const char *want)
{
	for (; *env; env++) {
		unsigned long k = 0;
		while (want[k] && (*env)[k] == want[k])
			k++;
		if (!want[k] && !(*env)[k])
			return 1;
	}
	return 0;
}

/* `sp` is the initial stack: argc, argv[0..argc], NULL, envp..., NULL. */
void init_main(long *sp)
{
	char **envp = (char **)(sp + 1 + sp[0] + 1);
	int power_off = has_env(envp, "kvmkit_init=poweroff");
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
	put("\n");
	sys3(SYS_write, fd, (long)line, used);
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
