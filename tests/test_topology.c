/* Tests of common/topology: pinning with hwloc. Criterion forks each test,
 * so pinning here only affects that test's process. */
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <string.h>

#include "topology.h"

Test(topology, pin_to_cpu0_sets_affinity)
{
    config_int_list_t cpus = {.n = 1, .v = {0}};
    char err[256] = "";
    int rc = topology_pin(&cpus, err, sizeof err);
    cr_assert_eq(rc, 0, "topology_pin({0}) = %d (%s), expected 0", rc, err);
    cpu_set_t set;
    CPU_ZERO(&set);
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    cr_assert_eq(CPU_COUNT(&set), 1, "expected 1 cpu in the affinity mask, got %d", CPU_COUNT(&set));
    cr_assert(CPU_ISSET(0, &set), "cpu 0 not in the affinity mask");
    cr_assert_eq(topology_n_bound_cpus(), 1);
}

Test(topology, auto_is_noop)
{
    cpu_set_t before, after;
    CPU_ZERO(&before);
    CPU_ZERO(&after);
    cr_assert_eq(sched_getaffinity(0, sizeof before, &before), 0);
    config_int_list_t cpus = {.n = CONFIG_CPUS_AUTO};
    char err[256] = "";
    cr_assert_eq(topology_pin(&cpus, err, sizeof err), 0, "%s", err);
    cr_assert_eq(topology_pin(NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sched_getaffinity(0, sizeof after, &after), 0);
    cr_assert(CPU_EQUAL(&before, &after), "auto changed the affinity (%d -> %d cpus)",
              CPU_COUNT(&before), CPU_COUNT(&after));
}

Test(topology, invalid_cpu_is_named)
{
    config_int_list_t cpus = {.n = 2, .v = {0, 4000}};
    char err[256] = "";
    int rc = topology_pin(&cpus, err, sizeof err);
    cr_assert_eq(rc, -EINVAL, "expected -EINVAL, got %d", rc);
    cr_assert(strstr(err, "4000") != NULL, "error does not name cpu 4000: \"%s\"", err);
    cpus.n = 1;
    cpus.v[0] = -3;
    rc = topology_pin(&cpus, err, sizeof err);
    cr_assert_eq(rc, -EINVAL);
    cr_assert(strstr(err, "-3") != NULL, "error does not name cpu -3: \"%s\"", err);
}

Test(topology, counts_are_positive)
{
    int n = topology_n_cores();
    cr_assert(n >= 1 && n <= 4096, "topology_n_cores() = %d", n);
    cr_assert(topology_n_bound_cpus() >= 1);
}
