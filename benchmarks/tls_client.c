/* The handshake client of benchmarks/tls_bench.py: THREADS threads, each looping for SECONDS:
 * connect, TLS handshake (offering the session of its previous connection when MODE is "resumed",
 * none when it is "full"), one GET with Connection: close, the answer read to the end, close.
 * No certificate check (it costs the client, not the server). With TLS 1.2 no ticket extension is
 * sent, so a resumption can only come from the server's session-ID cache.
 *
 *   cc -O2 -o tls_client tls_client.c -lssl -lcrypto -lpthread
 *   tls_client PORT PATH full|resumed 1.2|1.3 THREADS SECONDS SNI
 *
 * Prints one JSON line: completed, errors, reused (by the client's account), elapsed, rate. tls_bench.py
 * falls back to a Python client (threads and the ssl module) when this does not compile; that one costs
 * the load CPU about four times as much per handshake, so it is the one that limits the rate.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static SSL_CTX *ctx;
static int port, resume;
static const char *sni;
static char request[512];
static double deadline;

struct tally {
    long completed, errors, reused;
    double last;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One connection; returns 1 when a 200 answer was read to the end. */
static int one(SSL_SESSION **session, long *reused) {
    int ok = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    int one_ = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one_, sizeof one_);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return 0;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, sni);
    if (resume && *session != NULL)
        SSL_set_session(ssl, *session);
    if (SSL_connect(ssl) == 1 && SSL_write(ssl, request, (int)strlen(request)) > 0) {
        char buf[16384], head[16] = {0};
        size_t got = 0;
        int n;
        while ((n = SSL_read(ssl, buf, sizeof buf)) > 0) {
            if (got < sizeof head - 1) {
                size_t take = sizeof head - 1 - got < (size_t)n ? sizeof head - 1 - got : (size_t)n;
                memcpy(head + got, buf, take);
            }
            got += (size_t)n;
        }
        int why = SSL_get_error(ssl, n);
        /* The server ends the answer with close_notify or a bare FIN; either is the end. */
        ok = strncmp(head, "HTTP/1.1 200", 12) == 0 &&
             (why == SSL_ERROR_ZERO_RETURN || (why == SSL_ERROR_SYSCALL && ERR_peek_error() == 0));
        if (ok) {
            *reused += SSL_session_reused(ssl);
            if (resume) {
                SSL_SESSION *fresh = SSL_get1_session(ssl); /* the newest ticket (TLS 1.3) */
                if (*session != NULL)
                    SSL_SESSION_free(*session);
                *session = fresh;
            }
        }
    }
    ERR_clear_error();
    /* Marked as shut down without sending anything (the server has closed): else SSL_free takes the
     * connection for a broken one and marks its session, which we keep, as not resumable. */
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl);
    close(fd);
    return ok;
}

static void *worker(void *arg) {
    struct tally *t = arg;
    SSL_SESSION *session = NULL;
    while (now() < deadline) {
        if (one(&session, &t->reused))
            t->completed++;
        else {
            t->errors++;
            usleep(10000); /* against a refused port a thread would spin the load CPU */
        }
    }
    t->last = now();
    if (session != NULL)
        SSL_SESSION_free(session);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s PORT PATH full|resumed 1.2|1.3 THREADS SECONDS SNI\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    resume = strcmp(argv[3], "resumed") == 0;
    int version = strcmp(argv[4], "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    int threads = atoi(argv[5]);
    double seconds = atof(argv[6]);
    sni = argv[7];
    snprintf(request, sizeof request,
             "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshpy-tls-bench\r\nConnection: close\r\n\r\n",
             argv[2], sni);
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, version);
    SSL_CTX_set_max_proto_version(ctx, version);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (version == TLS1_2_VERSION)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    if (threads < 1 || threads > 1024)
        return 2;
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    struct tally *tallies = calloc((size_t)threads, sizeof *tallies);
    double start = now();
    deadline = start + seconds;
    for (int i = 0; i < threads; i++)
        pthread_create(&ids[i], NULL, worker, &tallies[i]);
    struct tally sum = {0, 0, 0, start};
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        sum.completed += tallies[i].completed;
        sum.errors += tallies[i].errors;
        sum.reused += tallies[i].reused;
        if (tallies[i].last > sum.last)
            sum.last = tallies[i].last;
    }
    double elapsed = sum.last - start;
    printf("{\"completed\": %ld, \"errors\": %ld, \"reused\": %ld, \"elapsed\": %.3f, \"rate\": %.1f, "
           "\"connections\": %d, \"mode\": \"%s\", \"tls\": \"%s\", \"client\": \"c\", \"openssl\": \"%s\"}\n",
           sum.completed, sum.errors, sum.reused, elapsed, elapsed > 0 ? sum.completed / elapsed : 0.0,
           threads, argv[3], argv[4], OpenSSL_version(OPENSSL_VERSION));
    SSL_CTX_free(ctx);
    free(ids);
    free(tallies);
    return 0;
}
