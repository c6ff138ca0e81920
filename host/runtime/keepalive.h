/* While Lua computes: a count hook, on every thread of the runtime, sends
 * the connections' heartbeats when they are due (as Redis serves events
 * during a long script), so a task that runs for minutes without yielding
 * keeps its connection, and logs once a task that holds the loop longer
 * than the heartbeat interval. It reads nothing and runs no Lua: the frames
 * that came meanwhile wait for the loop. */
#ifndef AD_KEEPALIVE_H
#define AD_KEEPALIVE_H

#include <lua.h>

struct runtime;
struct fiber;

/* Installs the hook on thread (unless it has a hook of its own already). */
void keepalive_install(struct runtime *runtime, lua_State *thread);
/* The fiber about to run (NULL: none): a long one is named in the log. */
void keepalive_enter(struct runtime *runtime, struct fiber *fiber);
/* It yielded or ended: a hold that was logged gets its total. */
void keepalive_leave(struct runtime *runtime);

/* The host's run: no hook while Lua runs. A timer signal every 20 ms (it
 * stops while no Lua runs) sets the hook on the innermost thread of a Lua
 * entry from the loop that lasted a whole tick; it fires once, does its work
 * and takes itself off, so Lua pays nothing per instruction, a long task one
 * hook call per tick. The coroutines a task resumes are tracked
 * (tracked_coroutines.c). Returns -1 when the timer cannot be made (the hook
 * then stays on every thread). */
int keepalive_arm_lazily(struct runtime *runtime, lua_State *L);
void keepalive_stop_lazily(void);
/* Whether run arms lazily: not with AMQP_DELEGATE_KEEPALIVE=0 or =hook. */
int keepalive_lazily_wanted(void);
/* thread runs Lua now, inside the one before (fibers, tracked coroutines) */
void keepalive_push(lua_State *thread);
void keepalive_pop(void);
/* lua_resetthread, tracked: the __close handlers it runs are Lua too. */
int keepalive_resetthread(lua_State *thread);

#endif
