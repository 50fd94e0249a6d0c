/*
 * pause: the process that holds a Pod sandbox's namespaces open.
 *
 * It does what upstream's build/pause/linux/pause.c does, written here because no
 * registry is reachable to pull registry.k8s.io/pause: sleep until told to stop,
 * exit on SIGINT/SIGTERM, and reap zombies when it is PID 1 of a PID namespace
 * shared by the Pod's containers (shareProcessNamespace).
 *
 * Built static (scripts/node-images.sh) so the image holds this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  (void)signo;
  /* Reap every exited child; -1 and ECHILD end the loop. */
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    puts("pause (strait tools/node/pause)");
    return 0;
  }
  if (getpid() != 1) {
    /* Not an error: kubelet never runs it so, but say why it is idle. */
    fprintf(stderr, "pause: warning: not PID 1, zombies are not reaped here\n");
  }
  struct sigaction stop = {.sa_handler = on_stop};
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0) {
    perror("pause: sigaction(SIGINT/SIGTERM)");
    return 1;
  }
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction(SIGCHLD)");
    return 2;
  }
  for (;;) {
    pause();
  }
}
