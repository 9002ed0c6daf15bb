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
static bool *canary = NULL; // canary[i]: backend i is a canary
static size_t backend_count = 0;
// Shared by every instance: round-robin positions, [0] stable, [1] canary.
static switchyard_policy_host_own_counter_t turn[2];

static bool fail(policy_string_t *err, const char *message) {
    policy_string_dup(err, message);
    return false;
}

static switchyard_policy_host_own_counter_t counter(const char *name) {
    policy_string_t n;
    policy_string_set(&n, name);
    return switchyard_policy_host_constructor_counter(&n);
}

bool exports_switchyard_policy_selector_configure(
    exports_switchyard_policy_selector_config_t *config,
    exports_switchyard_policy_selector_list_backend_t *backends,
    policy_string_t *err) {
    bool ok = config->len == 0 || fail(err, "this policy takes no policy-config keys");
    free(canary);
    backend_count = backends->len;
    canary = calloc(backend_count ? backend_count : 1, sizeof(bool));
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

bool exports_switchyard_policy_selector_select(
    exports_switchyard_policy_selector_borrow_request_t req,
    exports_switchyard_policy_selector_list_backend_state_t *backends,
    exports_switchyard_policy_selector_decision_t *ret,
    policy_string_t *err) {
    policy_string_t name, value;
    policy_string_set(&name, "x-canary");
    bool want = false;
    if (switchyard_policy_types_method_request_header(req, &name, &value)) {
        want = value.len == 1 && value.ptr[0] == '1';
        policy_string_free(&value);
    }
    size_t eligible = 0;
    for (size_t i = 0; i < backends->len && i < backend_count; i++) {
        eligible += backends->ptr[i].healthy && canary[i] == want;
    }
    bool ok = eligible > 0;
    if (!ok) {
        fail(err, "no healthy backend in this group");
    } else {
        uint64_t n = switchyard_policy_host_method_counter_fetch_add(
                         switchyard_policy_host_borrow_counter(turn[want]), 1) % eligible;
        for (size_t i = 0; i < backends->len && i < backend_count; i++) {
            if (backends->ptr[i].healthy && canary[i] == want && n-- == 0) {
                ret->backend = (uint32_t)i;
                break;
            }
        }
        ret->set_cookie.is_some = false;
    }
    exports_switchyard_policy_selector_list_backend_state_free(backends);
    return ok;
}
