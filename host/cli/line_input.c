/* The shell's lines: on a terminal, through libedit's readline interface
 * (line editing, a history kept in $HOME/.amqp_delegate_history, Tab
 * completion); from a pipe or a file, plain lines as they come. libedit, not
 * GNU readline: readline is GPL, and this project is MIT. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef AMQP_DELEGATE_LINE_EDITING
#include <editline/readline.h>
#endif

#include "shell.h"

#define HISTORY_NAME "/.amqp_delegate_history"
#define HISTORY_LINES 1000

static struct {
  int editing, open;
  volatile sig_atomic_t *interrupted;
  line_complete_fn complete;
  void *data;
  char history[4096]; /* the file, or "" for none */
} input;

int line_input_editing(void) {
  return input.editing;
}

/* ---- plain lines ---- */

static char *read_plain(const char *prompt) {
  if (isatty(STDIN_FILENO)) {
    fputs(prompt, stdout);
    fflush(stdout);
  }
  char *line = NULL;
  size_t capacity = 0;
  errno = 0;
  ssize_t length = getline(&line, &capacity, stdin);
  if (length < 0) {
    free(line);
    if (errno == EINTR) *input.interrupted = 1;
    clearerr(stdin);
    return NULL;
  }
  if (length > 0 && line[length - 1] == '\n') line[length - 1] = '\0';
  return line;
}

#ifdef AMQP_DELEGATE_LINE_EDITING

/* ---- the line editor ---- */

static char *next_match(const char *word, int state) {
  static int index;
  if (state == 0) index = 0;
  const char *match = input.complete(input.data, word, index++);
  return match ? strdup(match) : NULL;
}

/* Tab: our completions only (no file names); a function's gets its "(". */
static char **attempt_completion(const char *word, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1;
  rl_completion_append_character = '\0';
  return rl_completion_matches(word, next_match);
}

static void history_path(void) {
  const char *home = getenv("HOME");
  input.history[0] = '\0';
  if (home && *home && strlen(home) + sizeof HISTORY_NAME <= sizeof input.history)
    snprintf(input.history, sizeof input.history, "%s%s", home, HISTORY_NAME);
}

static void open_editor(void) {
  /* A word is what Lua can index: a.b.c and a:b stay whole. */
  static char word_breaks[] = " \t\n\"'`@$><=;|&{(,+-*/%^#~[]}";
  rl_readline_name = "amqp-delegate";
  rl_catch_signals = 0; /* our SIGINT handler drops the line */
  rl_completer_word_break_characters = word_breaks;
  rl_attempted_completion_function = attempt_completion;
  using_history();
  stifle_history(HISTORY_LINES);
  history_path();
  if (input.history[0]) read_history(input.history); /* none yet: fine */
}

static char *read_edited(const char *prompt) {
  errno = 0;
  char *line = readline(prompt);
  if (!line && errno == EINTR) *input.interrupted = 1;
  return line;
}

/* The history can hold passwords typed in URLs: only its owner reads it. */
static void save_history(void) {
  if (!input.history[0]) return;
  int fd = open(input.history, O_WRONLY | O_CREAT | O_NOFOLLOW, 0600);
  if (fd < 0) return;
  close(fd);
  write_history(input.history);
}

#endif

void line_input_open(int editing, volatile sig_atomic_t *interrupted, line_complete_fn complete,
                     void *data) {
  input.interrupted = interrupted;
  input.complete = complete;
  input.data = data;
  input.open = 1;
#ifdef AMQP_DELEGATE_LINE_EDITING
  input.editing = editing;
  if (editing) open_editor();
#else
  (void)editing;
  input.editing = 0;
#endif
}

char *line_input_read(const char *prompt) {
#ifdef AMQP_DELEGATE_LINE_EDITING
  if (input.editing) return read_edited(prompt);
#endif
  return read_plain(prompt);
}

void line_input_remember(const char *line) {
#ifdef AMQP_DELEGATE_LINE_EDITING
  if (input.editing && *line) add_history(line);
#else
  (void)line;
#endif
}

void line_input_close(void) {
  if (!input.open) return;
  input.open = 0;
#ifdef AMQP_DELEGATE_LINE_EDITING
  if (input.editing) save_history();
#endif
}
