/* Preloaded last into the lua5.4 and amqp-delegate processes of the instrumented spec runs
 * (scripts/instrumented-specs.sh): under ASan, lua5.4, which is not instrumented but loads our
 * instrumented module, and the instrumented host executable; under valgrind, lua5.4. In a
 * program that AMQP_DELEGATE_PRELOAD_IN names (space-separated; others, such as the shell
 * script that starts valgrind, pass LD_PRELOAD on untouched), its constructor:
 *   1. sends UBSan's reports to files AMQP_DELEGATE_UBSAN_LOG.PID when that is set: gcc's
 *      libubsan ignores UBSAN_OPTIONS=log_path when libasan is loaded too, and its reports
 *      would otherwise only reach a stderr that no spec may read;
 *   2. removes LD_PRELOAD from the environment, so that the shells, node and rabbitmqctl that
 *      the specs start run without the sanitizer runtimes or our preloads (lua5.4 processes
 *      get them again from the lua5.4 wrapper put first in PATH, hosts from
 *      AMQP_DELEGATE_WRAPPER). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int listed(const char *name, const char *list) {
  size_t length = strlen(name);
  for (const char *p = list; *p;) {
    size_t word = strcspn(p, " ");
    if (word == length && strncmp(p, name, length) == 0) return 1;
    p += word;
    p += strspn(p, " ");
  }
  return 0;
}

__attribute__((constructor)) static void sanitizer_preload(void) {
  const char *programs = getenv("AMQP_DELEGATE_PRELOAD_IN");
  if (!programs || !listed(program_invocation_short_name, programs)) return;
  const char *path = getenv("AMQP_DELEGATE_UBSAN_LOG");
  if (path && *path) {
    void *ubsan = dlopen("libubsan.so.1", RTLD_NOW | RTLD_NOLOAD);
    void (*set_report_path)(const char *) =
        ubsan ? (void (*)(const char *))dlsym(ubsan, "__sanitizer_set_report_path") : NULL;
    if (set_report_path)
      set_report_path(path);
    else
      fprintf(stderr, "spec/sanitize/preload.c: libubsan is not loaded: UBSan reports go to stderr\n");
  }
  unsetenv("LD_PRELOAD");
}
