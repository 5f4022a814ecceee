/*
 * The test init's wait for the host's control plane (`kvmkit_init=control`), for kvmkit's API tests:
 *
 *   KVMKIT-INPUT name=NAME               each input device the kernel found (the i8042's keyboard,
 *                                        the ACPI power button), from sysfs
 *   KVMKIT-CONTROL-READY inputs=N        then, five times a second:
 *   KVMKIT-TICK n                        n counts up: a paused guest prints none; with a disk
 *                                        (/dev/vda, writable) each tick also writes "KVMKIT-TICK n\n"
 *                                        over its first bytes and syncs it
 *   KVMKIT-CTRL-ALT-DEL                  Ctrl-Alt-Del was typed on the keyboard; the init reboots
 *   KVMKIT-POWER-BUTTON                  the power button was pressed; the init powers off
 *
 * Keys come from the kernel's evdev devices (/dev/input/eventN, devtmpfs), as systemd-logind reads
 * them; a kernel without CONFIG_VT has no Ctrl-Alt-Del handling of its own. After ten minutes with
 * neither (`kvmkit_control_minutes=N` on the command line: N minutes, for long soaks), the init
 * gives up and reboots.
 */
#include "init.h"

#define O_NONBLOCK 04000
#define POLLIN 1
#define EV_KEY 1
#define KEY_LEFTCTRL 29
#define KEY_LEFTALT 56
#define KEY_DELETE 111
#define KEY_POWER 116
#define MAX_INPUTS 8
#define TICK_MS 200
#define TICKS_PER_MINUTE (60 * 1000 / TICK_MS)

struct pollfd {
	int fd;
	short events, revents;
};

struct input_event {
	long sec, usec;
	unsigned short type, code;
	int value;
};

static struct input_event events[16];

/* prefix, the digit n, suffix: "/dev/input/event3", "/sys/class/input/event3/device/name". */
static const char *input_path(char *buf, const char *prefix, int n, const char *suffix)
{
	unsigned long p = 0;
	for (const char *c = prefix; *c; c++)
		buf[p++] = *c;
	buf[p++] = (char)('0' + n);
	for (const char *c = suffix; *c; c++)
		buf[p++] = *c;
	buf[p] = 0;
	return buf;
}

void control_wait(long out, int *power_off, long minutes)
{
	static char path[96];
	struct pollfd fds[MAX_INPUTS];
	int n = 0;
	mount_sys();
	for (int i = 0; i < MAX_INPUTS; i++) {
		long fd = sys3(SYS_open, (long)input_path(path, "/dev/input/event", i, ""),
			       O_NONBLOCK, 0);
		if (fd < 0)
			continue;
		put("KVMKIT-INPUT name=");
		put(slurp(input_path(path, "/sys/class/input/event", i, "/device/name"), small,
			  sizeof(small)) < 0 ? "?" : small);
		say(out);
		fds[n].fd = (int)fd;
		fds[n].events = POLLIN;
		n++;
	}
	long disk = sys3(SYS_open, (long)"/dev/vda", 2 /* O_RDWR */, 0);
	put("KVMKIT-CONTROL-READY inputs=");
	put_num(n);
	put(disk >= 0 ? " disk=vda" : " disk=none");
	say(out);
	int ctrl = 0, alt = 0;
	long tick = 0;
	long give_up = (minutes > 0 ? minutes : 10) * TICKS_PER_MINUTE;
	while (tick < give_up) {
		long ready = sys3(SYS_poll, (long)fds, n, TICK_MS);
		if (ready <= 0) {
			put("KVMKIT-TICK ");
			put_num(++tick);
			if (disk >= 0) {
				sys4(SYS_pwrite64, disk, (long)line, (long)line_used(), 0);
				sys4(SYS_pwrite64, disk, (long)"\n", 1, (long)line_used());
				sys3(SYS_fdatasync, disk, 0, 0);
			}
			say(out);
			continue;
		}
		for (int i = 0; i < n; i++) {
			if (!(fds[i].revents & POLLIN))
				continue;
			long got = sys3(SYS_read, fds[i].fd, (long)events, sizeof(events));
			for (long e = 0; got > 0 && e < got / (long)sizeof(events[0]); e++) {
				struct input_event *ev = &events[e];
				if (ev->type != EV_KEY)
					continue;
				int down = ev->value != 0;
				if (ev->code == KEY_LEFTCTRL)
					ctrl = down;
				else if (ev->code == KEY_LEFTALT)
					alt = down;
				else if (ev->code == KEY_DELETE && down && ctrl && alt) {
					put("KVMKIT-CTRL-ALT-DEL");
					say(out);
					*power_off = 0;
					return;
				} else if (ev->code == KEY_POWER && down) {
					put("KVMKIT-POWER-BUTTON");
					say(out);
					*power_off = 1;
					return;
				}
			}
		}
	}
	put("KVMKIT-CONTROL-GAVE-UP");
	say(out);
}
