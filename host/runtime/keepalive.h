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

#endif
