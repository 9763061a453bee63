/* topology: hwloc pinning (see topology.h). */
#include "topology.h"

#include <errno.h>
#include <hwloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, int b)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, a, b);
}

int topology_pin(const config_int_list_t *cpus, char *err, size_t errlen)
{
    hwloc_topology_t topo = NULL;
    hwloc_bitmap_t want = NULL;
    char *text = NULL;
    int rc = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!cpus || cpus->n == CONFIG_CPUS_AUTO || cpus->n == 0)
        return 0; /* auto: the OS (or whoever started us) decides */
    if (cpus->n < 0 || cpus->n > CONFIG_MAX_LIST) {
        if (err && errlen)
            snprintf(err, errlen, "cpus: bad list length %d", cpus->n);
        return -EINVAL;
    }
    if (hwloc_topology_init(&topo) != 0) {
        rc = errno ? -errno : -ENOMEM;
        set_err(err, errlen, "%s failed (errno %d)", "hwloc_topology_init", -rc);
        topo = NULL;
        goto fail;
    }
    if (hwloc_topology_load(topo) != 0) {
        rc = errno ? -errno : -EIO;
        set_err(err, errlen, "%s failed (errno %d)", "hwloc_topology_load", -rc);
        goto fail;
    }
    want = hwloc_bitmap_alloc();
    if (!want) {
        rc = -ENOMEM;
        set_err(err, errlen, "%s failed (errno %d)", "hwloc_bitmap_alloc", ENOMEM);
        goto fail;
    }
    /* The complete set = CPUs that exist; the allowed set = those our
     * cgroup/cpuset lets us use. Tell the two failures apart. */
    hwloc_const_bitmap_t complete = hwloc_topology_get_complete_cpuset(topo);
    hwloc_const_bitmap_t allowed = hwloc_topology_get_allowed_cpuset(topo);
    for (int i = 0; i < cpus->n; i++) {
        int id = cpus->v[i];
        if (id < 0 || !hwloc_bitmap_isset(complete, (unsigned)id)) {
            char have[256];
            if (hwloc_bitmap_list_snprintf(have, sizeof have, complete) < 0)
                snprintf(have, sizeof have, "?");
            if (err && errlen)
                snprintf(err, errlen, "cpu %d does not exist on this machine (cpus: %s)", id, have);
            rc = -EINVAL;
            goto fail;
        }
        if (!hwloc_bitmap_isset(allowed, (unsigned)id)) {
            char have[256];
            if (hwloc_bitmap_list_snprintf(have, sizeof have, allowed) < 0)
                snprintf(have, sizeof have, "?");
            if (err && errlen)
                snprintf(err, errlen, "cpu %d is not available to this process (allowed cpus: %s)", id, have);
            rc = -EINVAL;
            goto fail;
        }
        if (hwloc_bitmap_set(want, (unsigned)id) != 0) {
            rc = -ENOMEM;
            set_err(err, errlen, "%s failed (errno %d)", "hwloc_bitmap_set", ENOMEM);
            goto fail;
        }
    }
    if (hwloc_set_cpubind(topo, want, HWLOC_CPUBIND_PROCESS) != 0) {
        rc = errno ? -errno : -EIO;
        if (err && errlen)
            snprintf(err, errlen, "hwloc_set_cpubind: %s", strerror(-rc));
        goto fail;
    }
    if (hwloc_bitmap_list_asprintf(&text, want) >= 0 && text)
        log_info("pinned to cpus %s", text);
    free(text);
    hwloc_bitmap_free(want);
    hwloc_topology_destroy(topo);
    return 0;

fail:
    hwloc_bitmap_free(want);
    if (topo)
        hwloc_topology_destroy(topo);
    return rc;
}

int topology_n_cores(void)
{
    hwloc_topology_t topo = NULL;
    int n = 0;
    if (hwloc_topology_init(&topo) == 0) {
        if (hwloc_topology_load(topo) == 0)
            n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
        hwloc_topology_destroy(topo);
    }
    if (n <= 0) {
        long m = sysconf(_SC_NPROCESSORS_ONLN);
        n = m > 0 ? (int)m : 1;
    }
    return n;
}

int topology_n_bound_cpus(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}
