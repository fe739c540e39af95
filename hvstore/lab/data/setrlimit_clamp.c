/* LD_PRELOAD shim for sanlock in a sandbox without CAP_SYS_RESOURCE: clamps setrlimit/setrlimit64 to the
   hard limit instead of failing ("cannot set the limits for memlock"). Built by hvstore/lab/sanlock.py. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/resource.h>
static void clamp(int res, struct rlimit *want) {
    struct rlimit cur;
    if (getrlimit(res, &cur) != 0) return;
    if (cur.rlim_max != RLIM_INFINITY && (want->rlim_max == RLIM_INFINITY || want->rlim_max > cur.rlim_max))
        want->rlim_max = cur.rlim_max;
    if (want->rlim_cur == RLIM_INFINITY || want->rlim_cur > want->rlim_max) want->rlim_cur = want->rlim_max;
}
int setrlimit(__rlimit_resource_t res, const struct rlimit *rl) {
    static int (*real)(__rlimit_resource_t, const struct rlimit *);
    if (!real) real = dlsym(RTLD_NEXT, "setrlimit");
    struct rlimit want = *rl;
    clamp(res, &want);
    return real(res, &want);
}
int setrlimit64(__rlimit_resource_t res, const struct rlimit64 *rl) {
    struct rlimit want = { rl->rlim_cur, rl->rlim_max };
    return setrlimit(res, &want);
}
