/*
 * Test-only userland process hider, in the manner of libprocesshider: it
 * hooks readdir/readdir64 and drops the entries named in RIGWATCH_HIDE_PIDS
 * (comma-separated pids). The tests load it with LD_PRELOAD into ONE process
 * (the scanner itself) — never through /etc/ld.so.preload.
 *
 *   cc -shared -fPIC -o hider.so hider.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

static int hidden(const char *name) {
    const char *list = getenv("RIGWATCH_HIDE_PIDS");
    size_t n = strlen(name);
    if (!list || n == 0) return 0;
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

struct dirent *readdir(DIR *d) {
    static struct dirent *(*real)(DIR *);
    if (!real) real = (struct dirent *(*)(DIR *))dlsym(RTLD_NEXT, "readdir");
    struct dirent *e;
    while ((e = real(d)) != NULL && hidden(e->d_name)) {
    }
    return e;
}

struct dirent64 *readdir64(DIR *d) {
    static struct dirent64 *(*real)(DIR *);
    if (!real) real = (struct dirent64 *(*)(DIR *))dlsym(RTLD_NEXT, "readdir64");
    struct dirent64 *e;
    while ((e = real(d)) != NULL && hidden(e->d_name)) {
    }
    return e;
}
