/* What the files of `amqp-delegate shell` share: shell.c runs the prompt and
 * the -e CODE and FILE batches; shell_env.c makes the environment their code
 * runs in (worker calls by name, completion); line_input.c reads the lines
 * (with line editing, history and Tab completion on a terminal). */
#ifndef AD_CLI_SHELL_H
#define AD_CLI_SHELL_H

#include <signal.h>
#include <stddef.h>

#include <lua.h>

/* ---- shell_env.c ---- */

/* Makes the environment (registry), the global `help` and the stubs' class.
 * Raises on failure (memory). */
void shell_env_open(lua_State *L);

/* Pushes the environment the prompt's chunks run in. */
void shell_env_push(lua_State *L);

/* Remembers the names that `text` calls (name(...), name "x", name {...}):
 * those names, when no global has them, call the worker of that name. */
void shell_env_note_calls(lua_State *L, const char *text, size_t length);

/* The index-th (from 0) completion of `word`: globals, fields, methods,
 * keywords and the workers that answered; NULL past the last. The strings
 * stay valid until the next call with index 0. */
const char *shell_env_complete(lua_State *L, const char *word, int index);

/* ---- line_input.c ---- */

/* Completions for the line editor (shell_env_complete's shape). */
typedef const char *(*line_complete_fn)(void *data, const char *word, int index);

/* Starts reading lines from standard input. With `editing` (and a line
 * editor compiled in): line editing, the history file and Tab completion.
 * `interrupted` is set by the caller's SIGINT handler. */
void line_input_open(int editing, volatile sig_atomic_t *interrupted, line_complete_fn complete,
                     void *data);

/* Whether lines are edited (the terminal echoes nothing itself then). */
int line_input_editing(void);

/* The next line without its newline (free it), or NULL at the end of the
 * input or when Ctrl-C interrupted the reading (*interrupted is then set).
 * The prompt is shown when standard input is a terminal. */
char *line_input_read(const char *prompt);

/* Adds a line to the history (editing only). */
void line_input_remember(const char *line);

/* Saves the history ($HOME/.amqp_delegate_history, mode 0600); idempotent. */
void line_input_close(void);

#endif
