/* What the test init's files share: system call numbers and the helpers in init.c. No libc. */
#ifndef KVMKIT_INIT_H
#define KVMKIT_INIT_H

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_ioctl 16
#define SYS_poll 7
#define SYS_pread64 17
#define SYS_pwrite64 18
#define SYS_pause 34
#define SYS_getpid 39
#define SYS_socket 41
#define SYS_connect 42
#define SYS_accept 43
#define SYS_sendto 44
#define SYS_recvfrom 45
#define SYS_shutdown 48
#define SYS_bind 49
#define SYS_listen 50
#define SYS_setsockopt 54
#define SYS_uname 63
#define SYS_fsync 74
#define SYS_fdatasync 75
#define SYS_sync 162
#define SYS_mount 165
#define SYS_umount2 166
#define SYS_reboot 169
#define SYS_time 201
#define SYS_getdents64 217
#define SYS_clock_gettime 228

#define LINUX_REBOOT_MAGIC1 0xfee1deadL
#define LINUX_REBOOT_MAGIC2 672274793L
#define LINUX_REBOOT_CMD_RESTART 0x01234567L
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedcL

struct timespec64 {
	long sec, nsec;
};

long sys3(long n, long a, long b, long c);
long sys4(long n, long a, long b, long c, long d);
long sys5(long n, long a, long b, long c, long d, long e);
long sys6(long n, long a, long b, long c, long d, long e, long f);
unsigned long len(const char *s);
/* The marker line being built: put() appends, say() writes it (with a newline) and starts anew. */
void put(const char *s);
void put_num(long v);
void say(long fd);
void flush_line(long fd);
/* How many bytes the line being built has. */
unsigned long line_used(void);
long slurp(const char *path, char *buf, unsigned long n);
long now_ns(void);
const char *env_value(char **env, const char *key);
extern char line[256];
extern char small[256];

void mount_sys(void);

/* init_net.c: `kvmkit_init=net` and `netup`. */
void net_checks(long out, char **envp);
void net_up(long out, char **envp);

/* init_vsock.c: `kvmkit_init=vsock`: the phases integration-tests' vsock_linux.rs drives. */
void vsock_checks(long out, char **envp);

/* init_shell.c: `kvmkit_init=shell`: a prompt and built-in commands on /dev/hvc0 until `exit`. */
void shell(long out);

/* init_control.c: `kvmkit_init=control`. Returns only if nothing happened for `minutes` (ten if 0), with
 * `power_off` set if the guest should power off rather than reboot. */
void control_wait(long out, int *power_off, long minutes);

#endif
