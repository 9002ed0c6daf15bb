// Canary routing: requests with `X-Canary: 1` go to the backends named
// `canary-*`, all others round-robin over the rest.
//
// Ownership follows wit-bindgen's C conventions: the lists an export
// receives are the callee's to free; strings passed to imports are only
// borrowed; an error string returned must be allocated (it is freed after
// the call).
#include <stdlib.h>
#include <string.h>

#include "policy.h"

// Per instance; rebuilt by `configure` in every new instance.
static bool *canary = NULL;  // canary[i]: backend i is a canary
static bool *healthy = NULL; // healthy[i]: as `select` was last told
static size_t backend_count = 0;
// Shared by every instance: round-robin positions, [0] stable, [1] canary.
static uint32_t turn[2];

static bool fail(policy_string_t *err, const char *message) {
    policy_string_dup(err, message);
    return false;
}

static uint32_t counter(const char *name) {
    policy_string_t n;
    policy_string_set(&n, name);
    return switchyard_policy_host_counter(&n);
}

bool exports_switchyard_policy_selector_configure(
    exports_switchyard_policy_selector_config_t *config,
    exports_switchyard_policy_selector_list_backend_t *backends,
    policy_string_t *err) {
    bool ok = config->len == 0 || fail(err, "this policy takes no policy-config keys");
    free(canary);
    free(healthy);
    backend_count = backends->len;
    canary = calloc(backend_count ? backend_count : 1, sizeof(bool));
    healthy = calloc(backend_count ? backend_count : 1, sizeof(bool));
    bool any = false;
    for (size_t i = 0; i < backend_count; i++) {
        policy_string_t *name = &backends->ptr[i].name;
        canary[i] = name->len >= 7 && memcmp(name->ptr, "canary-", 7) == 0;
        any = any || canary[i];
    }
    if (ok && !any) {
        ok = fail(err, "no backend is named canary-*");
    }
    if (ok) {
        turn[0] = counter("stable");
        turn[1] = counter("canary");
    }
    exports_switchyard_policy_selector_config_free(config);
    exports_switchyard_policy_selector_list_backend_free(backends);
    return ok;
}

// `maybe_health` is NULL when the backends' health is what this instance
// was told last time.
bool exports_switchyard_policy_selector_select(
    exports_switchyard_policy_selector_list_backend_health_t *maybe_health,
    uint32_t *ret,
    policy_string_t *err) {
    if (maybe_health != NULL) {
        for (size_t i = 0; i < backend_count; i++) {
            healthy[i] = i < maybe_health->len && maybe_health->ptr[i].healthy;
        }
        exports_switchyard_policy_selector_list_backend_health_free(maybe_health);
    }
    policy_string_t name, value;
    policy_string_set(&name, "x-canary");
    bool want = false;
    if (switchyard_policy_request_header(&name, &value)) {
        want = value.len == 1 && value.ptr[0] == '1';
        policy_string_free(&value);
    }
    size_t eligible = 0;
    for (size_t i = 0; i < backend_count; i++) {
        eligible += healthy[i] && canary[i] == want;
    }
    if (eligible == 0) {
        return fail(err, "no healthy backend in this group");
    }
    uint64_t n = switchyard_policy_host_counter_add(turn[want], 1) % eligible;
    for (size_t i = 0; i < backend_count; i++) {
        if (healthy[i] && canary[i] == want && n-- == 0) {
            *ret = (uint32_t)i;
            break;
        }
    }
    return true;
}
