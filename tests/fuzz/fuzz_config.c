/* fuzz_config: config_load_json on arbitrary bytes over the defaults, then
 * config_validate. Properties: no crash / leak / UB; a refusal says why
 * and leaves the config unchanged (as documented); an accepted config
 * prints with config_to_json and reads back to the identical struct (the
 * effective config of a run, runs/NAME/config.json, must reproduce it). */
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static crl_config_t g_def, g_cfg, g_back;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[4096];
    char *json = malloc(size + 1);
    FUZZ_CHECK(json != NULL, "out of memory");
    memcpy(json, data, size);
    json[size] = '\0';

    FUZZ_CHECK(config_defaults(&g_def) == 0, "defaults are bad");
    g_cfg = g_def;
    err[0] = '\0';
    int rc = config_load_json(&g_cfg, json, "fuzz.json", err, sizeof err);
    free(json);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && err[0], "config_load_json rc %d err '%s'", rc, err);
        FUZZ_CHECK(memcmp(&g_cfg, &g_def, sizeof g_cfg) == 0, "a refused config changed the struct (%s)",
                   err);
        return 0;
    }
    err[0] = '\0';
    rc = config_validate(&g_cfg, err, sizeof err);
    FUZZ_CHECK(rc == 0 || (rc == -EINVAL && err[0]), "config_validate rc %d err '%s'", rc, err);

    char *out = config_to_json(&g_cfg);
    FUZZ_CHECK(out != NULL, "config_to_json failed");
    FUZZ_CHECK(config_defaults(&g_back) == 0, "defaults are bad");
    rc = config_load_json(&g_back, out, "effective.json", err, sizeof err);
    FUZZ_CHECK(rc == 0, "the effective config does not load back: %s", err);
    if (memcmp(&g_back, &g_cfg, sizeof g_cfg) != 0) {
        /* Name the first key that differs, for the report. */
        size_t nk = 0;
        const config_key_t *keys = config_schema(&nk);
        char a[1024], b[1024];
        for (size_t i = 0; i < nk; i++) {
            if (memcmp((char *)&g_back + keys[i].offset, (char *)&g_cfg + keys[i].offset,
                       keys[i].size) != 0) {
                config_get(&g_cfg, keys[i].key, a, sizeof a);
                config_get(&g_back, keys[i].key, b, sizeof b);
                FUZZ_CHECK(0, "key %s: loaded '%s', read back '%s'", keys[i].key, a, b);
            }
        }
        FUZZ_CHECK(0, "structs differ outside the schema's fields");
    }
    free(out);
    return 0;
}
