/*
 * The workload of `cargo xtask vm-test`: a client that opens N loopback connections and never
 * closes them, to a server (a thread of the same process) that closes its ends once all are
 * open; the client holds its ends HOLD seconds, in CLOSE_WAIT. Built static, so that it runs in
 * the VM's initramfs, which has no C library, on every architecture the test boots.
 *
 * usage: leak N HOLD
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 64

static int listener;
static int connections;

static void pause_ms(long ms)
{
	struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&pause, NULL);
}

/* Accepts every connection, then closes the server's ends a second later. */
static void *serve(void *unused)
{
	int accepted[MAX_CONNECTIONS];
	(void)unused;
	for (int i = 0; i < connections; i++) {
		accepted[i] = accept(listener, NULL, NULL);
		if (accepted[i] < 0) {
			perror("accept");
			exit(1);
		}
	}
	pause_ms(1000);
	for (int i = 0; i < connections; i++)
		close(accepted[i]);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s N HOLD_SECONDS\n", argv[0]);
		return 2;
	}
	connections = atoi(argv[1]);
	int hold = atoi(argv[2]);
	if (connections < 1 || connections > MAX_CONNECTIONS || hold < 0) {
		fprintf(stderr, "N is 1 to %d, HOLD_SECONDS at least 0\n", MAX_CONNECTIONS);
		return 2;
	}
	struct sockaddr_in address = { .sin_family = AF_INET };
	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t length = sizeof(address);
	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&address, length) < 0 ||
	    listen(listener, MAX_CONNECTIONS) < 0 ||
	    getsockname(listener, (struct sockaddr *)&address, &length) < 0) {
		perror("listen");
		return 1;
	}
	pthread_t server;
	if (pthread_create(&server, NULL, serve, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}
	/* The client: connects and never closes (the leak). */
	for (int i = 0; i < connections; i++) {
		int client = socket(AF_INET, SOCK_STREAM, 0);
		if (client < 0 || connect(client, (struct sockaddr *)&address, length) < 0) {
			perror("connect");
			return 1;
		}
		pause_ms(200);
	}
	pthread_join(server, NULL);
	sleep(hold);
	return 0;
}
