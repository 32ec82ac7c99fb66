/*
 * hearth-vsock: the Linux guest's vsock end for the tests (busybox has no vsock tool).
 * /init starts it as `hearth-vsock PORT` when the command line has hearth.vsock=PORT.
 *
 * It listens on vsock port PORT and serves each connection in a child process of its
 * own (so a connection held open never blocks the next one), line by line:
 *   dial P TEXT   connects to the host (CID 2) port P, sends "TEXT\n", reads one line
 *                 back and answers "dialed P: <that line>\n" (or "dial P failed: errno N")
 *   anything else is echoed back unchanged.
 * It reports on the console when it listens, accepts and when a connection ends.
 *
 * Freestanding (raw system calls, no libc), so that it adds a few KiB to the initramfs
 * rather than a static libc: every byte of the initramfs costs boot time on an
 * emulating KVM. x86-64 only, like the guest kernel.
 */

typedef unsigned long size_t;
typedef long ssize_t;

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_rt_sigaction 13
#define SYS_socket 41
#define SYS_connect 42
#define SYS_accept 43
#define SYS_bind 49
#define SYS_listen 50
#define SYS_fork 57
#define SYS_exit_group 231

#define AF_VSOCK 40
#define SOCK_STREAM 1
#define VMADDR_CID_ANY 0xffffffffu
#define VMADDR_CID_HOST 2u
#define SIGCHLD 17
#define SIG_IGN 1

struct sockaddr_vm {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_zero[4];
};

struct kernel_sigaction {
	unsigned long handler;
	unsigned long flags;
	unsigned long restorer;
	unsigned long mask;
};

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

#define sys3(n, a, b, c) syscall6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) syscall6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

static void __attribute__((noreturn)) quit(int status)
{
	for (;;)
		sys3(SYS_exit_group, status, 0, 0);
}


static int write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		long w = sys3(SYS_write, fd, buf, n);
		if (w == -4) /* EINTR */
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Appends text and numbers to a line buffer (bounded). */
struct line {
	char buf[512];
	size_t n;
};

static void put(struct line *l, const char *s)
{
	while (*s && l->n < sizeof l->buf - 1)
		l->buf[l->n++] = *s++;
}

static void put_num(struct line *l, long v)
{
	char tmp[24];
	int i = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
	if (v < 0)
		put(l, "-");
	do {
		tmp[i++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	while (i > 0) {
		char c[2] = {tmp[--i], 0};
		put(l, c);
	}
}

/* One line on the console, in one write so that it does not mix with /init's. */
static void say(const char *what, long num, const char *rest)
{
	struct line l = {.n = 0};
	put(&l, "hearth-vsock: ");
	put(&l, what);
	if (num >= 0)
		put_num(&l, num);
	if (rest)
		put(&l, rest);
	l.buf[l.n++] = '\n';
	write_all(1, l.buf, l.n);
}

static long parse_num(const char *s, const char **end)
{
	long v = 0;
	int any = 0;
	while (*s >= '0' && *s <= '9') {
		v = v * 10 + (*s++ - '0');
		any = 1;
		if (v > 0xffffffffL)
			return -1;
	}
	*end = s;
	return any ? v : -1;
}

/* Reads one line ending in '\n' into buf (NUL-terminated, without the '\n'); the
 * rest of what was read stays in buf past the line for the next call. Returns the line's
 * length, 0 on end of file with nothing pending, or a negative errno. */
struct reader {
	int fd;
	char buf[4096];
	size_t have;
	size_t skip; /* the previous line, to drop before the next */
};

static long read_line(struct reader *r, char **line)
{
	if (r->skip) {
		for (size_t i = r->skip; i < r->have; i++)
			r->buf[i - r->skip] = r->buf[i];
		r->have -= r->skip;
		r->skip = 0;
	}
	for (;;) {
		for (size_t i = 0; i < r->have; i++) {
			if (r->buf[i] == '\n') {
				r->buf[i] = 0;
				r->skip = i + 1;
				*line = r->buf;
				return (long)i + 1;
			}
		}
		if (r->have == sizeof r->buf - 1)
			return -90; /* EMSGSIZE: a line too long */
		long n = sys3(SYS_read, r->fd, r->buf + r->have, sizeof r->buf - 1 - r->have);
		if (n == -4)
			continue;
		if (n <= 0)
			return n;
		r->have += (size_t)n;
	}
}

/* "dial P TEXT": a connection to the host's port P; the answer for the caller in out. */
static void dial(const char *args, struct line *out)
{
	const char *text;
	long port = parse_num(args, &text);
	if (port < 0 || *text != ' ') {
		put(out, "dial: expected `dial PORT TEXT`");
		return;
	}
	text++;
	int fd = (int)sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	long err = fd;
	if (fd >= 0) {
		struct sockaddr_vm addr = {
			.svm_family = AF_VSOCK, .svm_port = (unsigned)port, .svm_cid = VMADDR_CID_HOST};
		err = sys3(SYS_connect, fd, &addr, sizeof addr);
	}
	struct line msg = {.n = 0};
	put(&msg, text);
	msg.buf[msg.n++] = '\n';
	struct reader r = {.fd = fd, .have = 0, .skip = 0};
	char *reply = 0;
	if (err >= 0)
		err = write_all(fd, msg.buf, msg.n) ? -32 /* EPIPE */ : 0;
	if (err >= 0) {
		err = read_line(&r, &reply);
		if (err == 0)
			err = -104; /* ECONNRESET: the host hung up without a line */
	}
	if (fd >= 0)
		sys3(SYS_close, fd, 0, 0);
	put(out, err < 0 ? "dial " : "dialed ");
	put_num(out, port);
	if (err < 0) {
		put(out, " failed: errno ");
		put_num(out, -err);
	} else {
		put(out, ": ");
		put(out, reply);
	}
}

static void __attribute__((noreturn)) serve(int fd, unsigned peer_port)
{
	struct reader r = {.fd = fd, .have = 0, .skip = 0};
	char *line;
	long n;
	while ((n = read_line(&r, &line)) > 0) {
		struct line out = {.n = 0};
		if (line[0] == 'd' && line[1] == 'i' && line[2] == 'a' && line[3] == 'l' &&
		    line[4] == ' ')
			dial(line + 5, &out);
		else
			put(&out, line);
		out.buf[out.n++] = '\n';
		if (write_all(fd, out.buf, out.n)) {
			n = -32;
			break;
		}
	}
	say("connection from host port ", peer_port, n == 0 ? " ended" : " reset");
	quit(0);
}

static void __attribute__((used)) start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	const char *end;
	long port = argc == 2 ? parse_num(argv[1], &end) : -1;
	if (port < 0 || *end) {
		say("usage: hearth-vsock PORT", -1, 0);
		quit(2);
	}
	/* Children are never waited for: let the kernel reap them. */
	struct kernel_sigaction ign = {.handler = SIG_IGN};
	sys4(SYS_rt_sigaction, SIGCHLD, &ign, 0, sizeof ign.mask);
	int fd = (int)sys3(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0) {
		say("cannot create a vsock socket: errno ", -fd, 0);
		quit(1);
	}
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK, .svm_port = (unsigned)port, .svm_cid = VMADDR_CID_ANY};
	long err = sys3(SYS_bind, fd, &addr, sizeof addr);
	if (err == 0)
		err = sys3(SYS_listen, fd, 16, 0);
	if (err < 0) {
		say("cannot listen: errno ", -err, 0);
		quit(1);
	}
	say("listening on port ", port, 0);
	for (;;) {
		struct sockaddr_vm peer;
		int alen = sizeof peer;
		long c = sys3(SYS_accept, fd, &peer, &alen);
		if (c < 0) {
			if (c != -4)
				say("accept failed: errno ", -c, 0);
			continue;
		}
		say("accepted host port ", peer.svm_port, 0);
		long pid = sys3(SYS_fork, 0, 0, 0);
		if (pid == 0) {
			sys3(SYS_close, fd, 0, 0);
			serve((int)c, peer.svm_port);
		}
		if (pid < 0)
			say("fork failed: errno ", -pid, 0);
		sys3(SYS_close, c, 0, 0);
	}
}

/* The entry point: the kernel leaves argc, argv on the stack. */
__asm__(".globl _start\n"
	"_start:\n"
	"  xor %ebp, %ebp\n"
	"  mov %rsp, %rdi\n"
	"  and $-16, %rsp\n"
	"  call start\n"
	"  hlt\n");
