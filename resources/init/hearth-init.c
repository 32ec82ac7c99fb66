/*
 * hearth-init: PID 1 of `hearth run -- CMD`, carried into the guest in the initramfs
 * hearth writes at start-up (src/run_cmd/). Built statically by hearth's build.rs.
 *
 * It connects to hearth over vsock (host CID 2): a control stream (port 10000, "init
 * started", then the command's status), the command's stdout (10001), stderr (10002) and
 * stdin (10003). It mounts the host's root (virtio-fs tag "hearth-root") read-only under
 * a tmpfs overlay (so /tmp is the host's, writable in the guest only), or, given a root
 * disk, that disk's filesystem (read-only or not as the disk is); then fresh
 * proc/sys/dev/dev/shm/run, and each shared directory at its host path;
 * then runs the command in the host's working directory with the host's environment,
 * waits for it, lets hearth drain its output, sends the status and reboots (the kernel's
 * reboot=k resets through the i8042, which ends the VM).
 *
 * /hearth/run, written by hearth, is a list of NUL-terminated fields:
 *   "cwd" DIR | "arg" ARG | "env" NAME=VALUE | "share" TAG PATH ("ro"|"rw")
 *   | "root" DEVICE ("ro"|"rw")
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define PORT_CONTROL 10000
#define PORT_STDOUT 10001
#define PORT_STDERR 10002
#define PORT_STDIN 10003
#define MAX_FIELDS 65536

static int err_fd = 2; /* the console until the stderr stream is up */

static void say(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	if (write(err_fd, "hearth-init: ", 13) < 0 || write(err_fd, buf, n) < 0) {
		/* nowhere else to report it */
	}
}

static void die(void)
{
	/* hearth sees the VM end without a status: it reports a failure (125). */
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static int vsock_connect(unsigned port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		say("cannot create a vsock socket: %s", strerror(errno));
		die();
	}
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = VMADDR_CID_HOST,
		.svm_port = port,
	};
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		say("cannot connect to hearth on vsock port %u: %s", port, strerror(errno));
		die();
	}
	return fd;
}

/* mkdir -p; errors show up in the mount that follows. */
static void mkdirs(const char *path)
{
	char buf[4096];
	size_t len = strlen(path);
	if (len >= sizeof buf)
		return;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(buf, 0755);
			*p = '/';
		}
	}
	mkdir(buf, 0755);
}

static int do_mount(const char *src, const char *target, const char *type,
		    unsigned long flags, const char *data)
{
	mkdirs(target);
	if (mount(src, target, type, flags, data) < 0) {
		say("cannot mount %s (%s) on %s: %s", src, type, target, strerror(errno));
		return -1;
	}
	return 0;
}

static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		if (!buf)
			return NULL;
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r;
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
	}
	close(fd);
	buf[n] = 0;
	*len = n;
	return buf;
}

/* Writes all of buf; false when the peer is gone. */
static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return 0;
		p += w;
		len -= w;
	}
	return 1;
}

/* Half-closes our side and waits for hearth to close its own: everything sent is out. */
static void finish_stream(int fd)
{
	char buf[256];
	shutdown(fd, SHUT_WR);
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
	}
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

/*
 * Mounts the root disk on target with the first block filesystem type the kernel has
 * (/proc/filesystems) that takes it, as mount(8) does without -t.
 */
static int mount_disk(const char *dev, const char *target, unsigned long flags)
{
	/* The disk is probed before init runs; wait a little in case it is not there yet. */
	for (int i = 0; i < 50 && access(dev, F_OK) < 0; i++)
		sleep_ms(100);
	mkdirs(target);
	mkdir("/proc", 0755);
	if (mount("proc", "/proc", "proc", 0, NULL) < 0) {
		say("cannot mount /proc to list filesystems: %s", strerror(errno));
		return -1;
	}
	size_t len = 0;
	char *types = read_file("/proc/filesystems", &len);
	umount("/proc");
	if (!types) {
		say("cannot read /proc/filesystems");
		return -1;
	}
	char tried[512] = "";
	int err = ENODEV;
	for (char *line = strtok(types, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strncmp(line, "nodev", 5))
			continue;
		const char *type = line + strspn(line, " \t");
		if (mount(dev, target, type, flags, NULL) == 0) {
			free(types);
			return 0;
		}
		/* EINVAL: not this type; anything else says more about the disk. */
		if (errno != EINVAL || err == ENODEV)
			err = errno;
		size_t at = strlen(tried);
		snprintf(tried + at, sizeof tried - at, "%s%s", at ? ", " : "", type);
	}
	free(types);
	say("cannot mount the root disk %s (tried %s): %s", dev, tried[0] ? tried : "no block filesystem", strerror(err));
	return -1;
}

int main(void)
{
	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int control = vsock_connect(PORT_CONTROL);
	int out = vsock_connect(PORT_STDOUT);
	int errs = vsock_connect(PORT_STDERR);
	int in = vsock_connect(PORT_STDIN);
	err_fd = errs;

	size_t len = 0;
	char *run = read_file("/hearth/run", &len);
	if (!run) {
		say("cannot read /hearth/run: %s", strerror(errno));
		die();
	}
	char **fields = calloc(MAX_FIELDS, sizeof *fields);
	size_t nfields = 0;
	for (size_t at = 0; at < len && nfields < MAX_FIELDS; at += strlen(run + at) + 1)
		fields[nfields++] = run + at;

	char **argv = calloc(nfields + 1, sizeof *argv);
	char **envp = calloc(nfields + 1, sizeof *envp);
	const char *cwd = "/";
	const char *root_dev = NULL;
	int root_ro = 0;
	size_t *shares = calloc(nfields + 1, sizeof *shares); /* where each "share" is */
	size_t argc = 0, envc = 0, nshares = 0;
	for (size_t i = 0; i < nfields; i++) {
		const char *k = fields[i];
		if (!strcmp(k, "cwd") && i + 1 < nfields) {
			cwd = fields[++i];
		} else if (!strcmp(k, "arg") && i + 1 < nfields) {
			argv[argc++] = fields[++i];
		} else if (!strcmp(k, "env") && i + 1 < nfields) {
			envp[envc++] = fields[++i];
		} else if (!strcmp(k, "share") && i + 3 < nfields) {
			shares[nshares++] = i; /* mounted once the root is up */
			i += 3;
		} else if (!strcmp(k, "root") && i + 2 < nfields) {
			root_dev = fields[i + 1];
			root_ro = !strcmp(fields[i + 2], "ro");
			i += 2;
		}
	}
	if (argc == 0) {
		say("no command to run");
		die();
	}

	if (root_dev) {
		/* The root disk's filesystem, as read-only as the disk. */
		if (mount_disk(root_dev, "/newroot", root_ro ? MS_RDONLY : 0) < 0)
			die();
	} else {
		/* The host's root, read-only, under a writable tmpfs overlay. */
		if (do_mount("hearth-root", "/lower", "virtiofs", MS_RDONLY, NULL) < 0)
			die();
		do_mount("tmpfs", "/upper", "tmpfs", 0, "mode=0755");
		mkdir("/upper/data", 0755);
		mkdir("/upper/work", 0755);
		if (do_mount("overlay", "/newroot", "overlay", 0,
			     "lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work") < 0) {
			say("the root stays read-only");
			if (mount("/lower", "/newroot", NULL, MS_BIND, NULL) < 0) {
				say("cannot bind the root: %s", strerror(errno));
				die();
			}
		}
	}
	do_mount("proc", "/newroot/proc", "proc", 0, NULL);
	do_mount("sysfs", "/newroot/sys", "sysfs", 0, NULL);
	do_mount("devtmpfs", "/newroot/dev", "devtmpfs", 0, NULL);
	mount("devpts", "/newroot/dev/pts", "devpts", 0, NULL);
	do_mount("tmpfs", "/newroot/dev/shm", "tmpfs", 0, "mode=1777");
	/* /run is the host's live state (sockets, pid files): a fresh one. /tmp stays the
	 * host's under the overlay, so a working directory or file there is found; on a
	 * read-only root disk it is a fresh tmpfs, so the command has somewhere to write. */
	do_mount("tmpfs", "/newroot/run", "tmpfs", 0, "mode=0755");
	if (root_dev && root_ro)
		do_mount("tmpfs", "/newroot/tmp", "tmpfs", 0, "mode=1777");

	for (size_t s = 0; s < nshares; s++) {
		const char *tag = fields[shares[s] + 1], *path = fields[shares[s] + 2];
		int ro = !strcmp(fields[shares[s] + 3], "ro");
		char target[4096];
		snprintf(target, sizeof target, "/newroot%s", path);
		if (do_mount(tag, target, "virtiofs", ro ? MS_RDONLY : 0, NULL) < 0)
			die();
	}

	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0) {
		say("cannot switch to the new root: %s", strerror(errno));
		die();
	}

	pid_t child = fork();
	if (child < 0) {
		say("fork: %s", strerror(errno));
		die();
	}
	if (child == 0) {
		setsid();
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errs, 2) < 0)
			_exit(125);
		err_fd = 2;
		/* A root disk need not have the host's working directory: / then, quietly. */
		if (chdir(cwd) < 0 && !root_dev)
			say("cannot enter %s in the guest (%s); running in /", cwd, strerror(errno));
		/* execvpe searches the PATH of the environment given. */
		for (size_t i = 0; i < envc; i++) {
			if (!strncmp(envp[i], "PATH=", 5))
				setenv("PATH", envp[i] + 5, 1);
		}
		execvpe(argv[0], argv, envp);
		int e = errno;
		say("%s: %s", argv[0], strerror(e));
		_exit(e == ENOENT ? 127 : 126);
	}
	close(in);

	int status = 0;
	for (;;) {
		int st;
		pid_t p = wait(&st);
		if (p < 0 && errno == EINTR)
			continue;
		if (p < 0) {
			say("wait: %s", strerror(errno));
			status = 125 << 8;
			break;
		}
		/* Orphans are reaped here too, as PID 1 must. */
		if (p == child) {
			status = st;
			break;
		}
	}
	unsigned char code;
	if (WIFEXITED(status))
		code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		code = 128 + WTERMSIG(status);
	else
		code = 125;

	finish_stream(out);
	finish_stream(errs);
	sync();
	if (root_dev && !root_ro) {
		/* What the command left running would keep the disk busy. Read-only again, ext4
		 * writes its journal out to the filesystem itself, so the image is whole on the
		 * host (debugfs, a loop mount) without a replay. */
		kill(-1, SIGKILL);
		while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
		}
		if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
			say("cannot remount the root disk read-only: %s", strerror(errno));
	}
	if (write_all(control, &code, 1))
		finish_stream(control);
	reboot(RB_AUTOBOOT);
	say("reboot: %s", strerror(errno));
	return code;
}
