/*
 * The test init's shell on the virtio console (`kvmkit_init=shell`): a prompt on /dev/hvc0 and a
 * few built-in commands, for the tests that drive a guest terminal as a person would (through a
 * pty, through tmux). The terminal is the guest kernel's: canonical mode, echo, CR to NL on input
 * and NL to CR NL on output, as for a getty.
 *
 *   uname           the kernel's name and release: "Linux 6.1.192"
 *   echo WORDS      WORDS
 *   size            the terminal's size as the kernel has it (TIOCGWINSZ): "rows 40 cols 120"
 *   cat FILE        the start of FILE (256 bytes)
 *   exit            leave the shell (init then reboots or powers off)
 * Anything else: "sh: WORD: not found".
 */
#include "init.h"

#define TIOCGWINSZ 0x5413

struct winsize {
	unsigned short rows, cols, xpixel, ypixel;
};

static int starts(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

void shell(long out)
{
	static char cmd[256];
	static struct utsname_small {
		char f[6][65];
	} uts;
	mount_sys();
	long fd = sys3(SYS_open, (long)"/dev/hvc0", 02 | 0400 /* O_RDWR|O_NOCTTY */, 0);
	put("KVMKIT-SHELL open=");
	put_num(fd);
	say(out);
	if (fd < 0)
		return;
	for (;;) {
		put("kvmkit-guest# ");
		flush_line(fd);
		long n = sys3(SYS_read, fd, (long)cmd, sizeof(cmd) - 1);
		if (n <= 0)
			break;
		while (n > 0 && (cmd[n - 1] == '\n' || cmd[n - 1] == '\r' || cmd[n - 1] == ' '))
			n--;
		cmd[n] = 0;
		if (n == 0)
			continue;
		if (starts(cmd, "exit") && (cmd[4] == 0 || cmd[4] == ' ')) {
			break;
		} else if (starts(cmd, "uname")) {
			long u = sys3(SYS_uname, (long)&uts, 0, 0);
			put(u == 0 ? uts.f[0] : "?");
			put(" ");
			put(u == 0 ? uts.f[2] : "?");
		} else if (starts(cmd, "echo ")) {
			put(cmd + 5);
		} else if (starts(cmd, "size")) {
			struct winsize ws = {0, 0, 0, 0};
			long r = sys3(SYS_ioctl, fd, TIOCGWINSZ, (long)&ws);
			put("rows ");
			put_num(r == 0 ? ws.rows : r);
			put(" cols ");
			put_num(r == 0 ? ws.cols : r);
		} else if (starts(cmd, "cat ")) {
			put(slurp(cmd + 4, small, sizeof(small)) < 0 ? "cat: cannot read" : small);
		} else {
			put("sh: ");
			put(cmd);
			put(": not found");
		}
		say(fd);
	}
	put("KVMKIT-SHELL-EXIT");
	say(out);
	sys3(SYS_close, fd, 0, 0);
}
