/*
 * The floor under "socket ready": a statically linked C program that only binds and
 * listens on the socket given after --api-sock, then waits. No VMM can be ready sooner
 * than exec and libc start-up allow; fc_api bench times this program beside the VMMs.
 */
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int s;

	if (argc < 3 || strlen(argv[2]) >= sizeof(addr.sun_path))
		return 2;
	strcpy(addr.sun_path, argv[2]);
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof(addr)) || listen(s, 8))
		return 1;
	pause();
	return 0;
}
