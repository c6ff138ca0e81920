/* User hooks (on_error, on_close) of workers and delegators. They run as
 * fibers, so a hook may itself call workers or sleep; a failing hook is
 * logged, never raised into the loop. */
#ifndef AD_HOOKS_H
#define AD_HOOKS_H

#include "errors.h"
#include "runtime.h"

/* Runs the function in user value `slot` of the userdata anchored at
 * registry reference `self_ref`, with the error object as its argument
 * (error may be NULL: no argument). Does nothing when the slot is nil. */
void hook_run(struct runtime *runtime, int self_ref, int slot, const char *hook_name,
              const struct ad_error *error);

#endif
