/* security: CurveZMQ encryption and client authentication for every crl
 * socket (DESIGN.md §9), and the "no keys = loopback only" bind rule.
 * Owns the process's keys (zeroed on destroy), the list of allowed client
 * public keys and a ZAP handler thread (RFC 27, inproc://zeromq.zap.01)
 * that accepts only those keys on server sockets.
 *
 * Key folder (network.curve_keys_dir), as written by crl-keygen:
 *   server.key, server.pub   the servers' key pair (learner, broker, relay);
 *                            clients only need server.pub
 *   clients/NAME.pub            public keys allowed to connect (actors, the
 *                            learner as the broker's publisher, relays)
 *   client.key               this process's client key pair (default of
 *                            network.curve_client_key)
 * Integration in a process: security_new() once per ZeroMQ context, then
 * security_bind() / security_connect() instead of zmq_bind / zmq_connect
 * (or security_server_socket / security_client_socket before them). */
#ifndef CRL_SECURITY_H
#define CRL_SECURITY_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* A Z85 CurveZMQ key: 40 characters + NUL. */
#define SECURITY_Z85_LEN 40

typedef struct security security_t;

typedef struct {
    uint64_t accepted;      /* ZAP requests accepted (listed client keys) */
    uint64_t refused;       /* ZAP requests refused (unlisted keys, bad requests) */
    uint64_t allowed_keys;  /* client keys currently listed */
} security_counters_t;

/* Loads the keys named by cfg->network (curve_keys_dir, curve_client_key).
 * With an empty curve_keys_dir the object is in "plain" mode: socket calls
 * set nothing (binds still obey security_check_bind). Otherwise every key
 * file present is parsed now (errors name the file: malformed, wrong magic,
 * Z85 invalid, public key not matching the secret one); a secret key
 * readable by group/others is loaded with a warning. Files a role needs
 * but that are absent (server.key for a server, server.pub or the client
 * key for a client) are reported by the socket call that needs them. The
 * ZAP handler thread starts on the first server socket, in zmq_ctx, which
 * must outlive this object's sockets (destroy this object before or after
 * zmq_ctx_term: both work). NULL with err on failure. */
security_t *security_new(const crl_config_t *cfg, void *zmq_ctx, char *err, size_t errlen);

/* Frees everything, stops the ZAP thread (within ~100 ms) and zeroes the
 * secret keys; *sec = NULL. NULL is a no-op. */
void security_destroy(security_t **sec);

/* 1 in CurveZMQ mode, 0 in plain mode. */
int security_is_curve(const security_t *sec);

/* Makes sock a CurveZMQ server (ZMQ_CURVE_SERVER, the server secret key,
 * ZMQ_ZAP_DOMAIN = what) before zmq_bind; starts the ZAP handler on first
 * use. what names the socket in logs ("work", "fetch", ...; at most 63
 * chars). Plain mode: does nothing. 0 or -errno (logged, naming the file
 * or the ZeroMQ error). */
int security_server_socket(security_t *sec, void *sock, const char *what);

/* Makes sock a CurveZMQ client (this process's key pair + server.pub)
 * before zmq_connect. Plain mode: does nothing. 0 or -errno (logged). */
int security_client_socket(security_t *sec, void *sock);

/* security_check_bind + security_server_socket + zmq_bind. err names the
 * endpoint and the reason. 0 or -errno. */
int security_bind(security_t *sec, void *sock, const char *what, const char *endpoint, char *err,
                  size_t errlen);

/* security_client_socket + zmq_connect. 0 or -errno with err set. */
int security_connect(security_t *sec, void *sock, const char *endpoint, char *err, size_t errlen);

/* Whether a process with cfg may bind endpoint: loopback, ipc:// and
 * inproc:// always; anything else needs network.curve_keys_dir, or
 * network.insecure=true — then a loud warning is logged (anyone who can
 * reach the port can read and inject messages). 0, or -EPERM with err
 * saying what to set. */
int security_check_bind(const crl_config_t *cfg, const char *endpoint, char *err, size_t errlen);

/* Re-reads <curve_keys_dir>/clients/NAME.pub (e.g. on SIGHUP, so an operator
 * can admit a new actor without restarting). On any bad file the previous
 * list is kept and -EINVAL returned (logged, naming the file). Connections
 * already accepted stay up. Returns the number of keys now listed, or
 * -errno; 0 in plain mode. Thread-safe against the ZAP thread. */
int security_reload_clients(security_t *sec);

/* Thread-safe snapshot. */
void security_get_counters(const security_t *sec, security_counters_t *c);

/* ---- key files (used by crl-keygen and the tests) ---- */

/* 1 when s holds exactly a valid 40-character Z85 CurveZMQ key. */
int security_z85_valid(const char *s);

/* Creates a key pair and writes dir/name.key (mode 0600: magic line,
 * name, public and secret key) and dir/name.pub (mode 0644: magic line,
 * name, public key), each written to a temporary file, fsynced and then
 * linked in place. Refuses (-EEXIST) if either exists unless force. name:
 * letters, digits, '.', '_', '-', not starting with '.'. pub (may be NULL)
 * receives the public key. 0 or -errno with err set. */
int security_keygen(const char *dir, const char *name, int force, char pub[SECURITY_Z85_LEN + 1],
                    char *err, size_t errlen);

/* Reads a NAME.key file: public and secret key (Z85, NUL-terminated);
 * checks the public key matches the secret one. Warns (log) when the file
 * is readable by group/others. 0 or -errno with err naming the file. */
int security_load_key(const char *path, char pub[SECURITY_Z85_LEN + 1],
                      char secret[SECURITY_Z85_LEN + 1], char *err, size_t errlen);

/* Reads a NAME.pub file. 0 or -errno with err naming the file. */
int security_load_pub(const char *path, char pub[SECURITY_Z85_LEN + 1], char *err, size_t errlen);

#endif
