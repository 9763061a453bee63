/* topology: where a process runs. Pins the calling process to the cores a
 * config lists (`<section>.cpus`) with hwloc, and reports how many cores
 * the machine offers. Owns nothing between calls (each call loads the
 * topology, uses it and frees it: pinning happens once at start-up). */
#ifndef CRL_TOPOLOGY_H
#define CRL_TOPOLOGY_H

#include <stddef.h>

#include "config.h"

/* Binds every thread of the calling process (and threads it starts later)
 * to the listed CPUs. Entries are operating-system CPU numbers, as taskset
 * and /proc/cpuinfo count them (on a machine without hyper-threads: core
 * ids). cpus->n == CONFIG_CPUS_AUTO ("auto") or 0 leaves the binding as it
 * is and returns 0. Returns 0, or -EINVAL with err naming the first CPU id
 * that does not exist or is not available to this process (e.g. outside
 * its cgroup / cpuset), or another -errno when hwloc fails (err says
 * which call). The binding is logged at info level. */
int topology_pin(const config_int_list_t *cpus, char *err, size_t errlen);

/* Number of physical cores available to this process (at least 1; falls
 * back to sysconf(_SC_NPROCESSORS_ONLN) when hwloc cannot load). */
int topology_n_cores(void);

/* Number of CPUs (hardware threads) this process may run on now, per
 * sched_getaffinity (at least 1). Handy for "one thread per pinned CPU". */
int topology_n_bound_cpus(void);

#endif
