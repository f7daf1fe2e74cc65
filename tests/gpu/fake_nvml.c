/*
 * A fake NVML (libnvidia-ml) for rigwatch's GPU tests. It exports the entry
 * points that the GPU sensor calls through nvml-wrapper, with the ABI of the
 * real library (the struct layouts of nvml.h / nvml-wrapper-sys 0.10), and
 * reports the GPUs, processes and utilisations a test asks for. It touches no
 * hardware and no driver.
 *
 * Tests compile it themselves:  cc -shared -fPIC -o DIR/libnvidia-ml.so.1 fake_nvml.c
 * and load it through rigwatch's real loading code (RIGWATCH_NVML_LIBRARY, or
 * the sensor's configured library path).
 *
 * What it reports is read on every call (so a test may change it between two
 * passes), from the file `fake_nvml.conf` in the directory the library was
 * loaded from, one `key=value` per line:
 *
 *   procs=PID:UTIL:MEM_MIB[:g][@DEV],...   processes on the GPUs: SM utilisation
 *                                          (percent), memory (MiB); `:g` lists
 *                                          it as a graphics process (else
 *                                          compute); `@DEV` the device index
 *                                          (default 0)
 *   devices=N                 number of GPUs (default 1, at most 8)
 *   device_util=P             each GPU's own utilisation (default: the highest
 *                             process utilisation on it)
 *   power_mw=N                each GPU's power draw in milliwatts (default 187000)
 *   process_util=unsupported  nvmlDeviceGetProcessUtilization answers NOT_SUPPORTED
 *   init=driver_not_loaded    nvmlInit fails as it does without the kernel driver
 *
 * The environment variable FAKE_NVML_PROCS, when set, replaces `procs`
 * (end-to-end tests set it on the rigwatch they start).
 *
 * Like the real library, process utilisation samples carry a CPU timestamp
 * in microseconds, and only samples newer than the caller's last-seen
 * timestamp are returned (NVML_ERROR_NOT_FOUND when there are none); a
 * process at 0 % has no sample. For the tests to check how they are called,
 * the library exports counters: fake_nvml_init_calls, fake_nvml_shutdown_calls,
 * fake_nvml_util_calls and fake_nvml_last_seen (the last-seen timestamp of the
 * latest sample query).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVICES 8
#define MAX_PROCS 64

struct fake_device {
    unsigned index;
};
typedef struct fake_device *nvmlDevice_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* nvmlProcessInfo_v2_t, which is also what the _v3 functions fill */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

struct fake_proc {
    unsigned pid, util, mem_mib, dev;
    int graphics;
};

struct fake_config {
    unsigned devices;
    int device_util; /* -1: derived */
    unsigned power_mw;
    int process_util_unsupported;
    int init_driver_not_loaded;
    unsigned nprocs;
    struct fake_proc procs[MAX_PROCS];
};

/* counters the tests read with dlsym */
int fake_nvml_init_calls = 0;
int fake_nvml_shutdown_calls = 0;
int fake_nvml_util_calls = 0;
unsigned long long fake_nvml_last_seen = 0;

static struct fake_device devices[MAX_DEVICES] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
static int initialised = 0;
static const unsigned long long TOTAL_MEMORY = 24ULL << 30;

static void parse_procs(struct fake_config *c, const char *s) {
    c->nprocs = 0;
    while (s && *s && c->nprocs < MAX_PROCS) {
        struct fake_proc p = {0, 0, 0, 0, 0};
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        char item[128];
        if (len >= sizeof item) len = sizeof item - 1;
        memcpy(item, s, len);
        item[len] = 0;
        if (sscanf(item, "%u:%u:%u", &p.pid, &p.util, &p.mem_mib) == 3) {
            p.graphics = strstr(item, ":g") != NULL;
            const char *at = strchr(item, '@');
            if (at) p.dev = (unsigned)atoi(at + 1);
            c->procs[c->nprocs++] = p;
        }
        s = end ? end + 1 : NULL;
    }
}

/* The configuration, read afresh on every call. */
static void load_config(struct fake_config *c) {
    memset(c, 0, sizeof *c);
    c->devices = 1;
    c->device_util = -1;
    c->power_mw = 187000;
    Dl_info info;
    if (dladdr((void *)&load_config, &info) && info.dli_fname) {
        char path[4096];
        snprintf(path, sizeof path, "%s", info.dli_fname);
        char *slash = strrchr(path, '/');
        if (slash) {
            snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "fake_nvml.conf");
            FILE *f = fopen(path, "r");
            if (f) {
                char line[4096];
                while (fgets(line, sizeof line, f)) {
                    line[strcspn(line, "\r\n")] = 0;
                    if (!strncmp(line, "procs=", 6)) parse_procs(c, line + 6);
                    else if (!strncmp(line, "devices=", 8)) c->devices = (unsigned)atoi(line + 8);
                    else if (!strncmp(line, "device_util=", 12)) c->device_util = atoi(line + 12);
                    else if (!strncmp(line, "power_mw=", 9)) c->power_mw = (unsigned)atoi(line + 9);
                    else if (!strcmp(line, "process_util=unsupported")) c->process_util_unsupported = 1;
                    else if (!strcmp(line, "init=driver_not_loaded")) c->init_driver_not_loaded = 1;
                }
                fclose(f);
            }
        }
    }
    const char *env = getenv("FAKE_NVML_PROCS");
    if (env) parse_procs(c, env);
    if (c->devices > MAX_DEVICES) c->devices = MAX_DEVICES;
}

static int device_index(nvmlDevice_t d, const struct fake_config *c) {
    if (!initialised || d == NULL || d < devices || d >= devices + MAX_DEVICES) return -1;
    if (d->index >= c->devices) return -1;
    return (int)d->index;
}

static unsigned long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL;
}

nvmlReturn_t nvmlInit_v2(void) {
    struct fake_config c;
    load_config(&c);
    fake_nvml_init_calls++;
    if (c.init_driver_not_loaded) return NVML_ERROR_DRIVER_NOT_LOADED;
    initialised = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    fake_nvml_shutdown_calls++;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!version || length < 12) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(version, length, "550.54.15");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    struct fake_config c;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    load_config(&c);
    *count = c.devices;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    struct fake_config c;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    load_config(&c);
    if (!device || index >= c.devices) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !name) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "Fake NVIDIA GPU %d", i);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !uuid) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(uuid, length, "GPU-fa4e0000-0000-4000-8000-00000000000%d", i);
    return NVML_SUCCESS;
}

static unsigned device_used_mib(const struct fake_config *c, int dev, unsigned *max_util) {
    unsigned used = 0, top = 0;
    for (unsigned k = 0; k < c->nprocs; k++) {
        if ((int)c->procs[k].dev != dev) continue;
        used += c->procs[k].mem_mib;
        if (c->procs[k].util > top) top = c->procs[k].util;
    }
    if (max_util) *max_util = top;
    return used;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !u) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned top = 0;
    device_used_mib(&c, i, &top);
    u->gpu = c.device_util >= 0 ? (unsigned)c.device_util : top;
    u->memory = top / 2;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *m) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !m) return NVML_ERROR_INVALID_ARGUMENT;
    m->total = TOTAL_MEMORY;
    m->used = (unsigned long long)device_used_mib(&c, i, NULL) << 20;
    m->free = m->total > m->used ? m->total - m->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !m) return NVML_ERROR_INVALID_ARGUMENT;
    m->total = TOTAL_MEMORY;
    m->reserved = 0;
    m->used = (unsigned long long)device_used_mib(&c, i, NULL) << 20;
    m->free = m->total > m->used ? m->total - m->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    struct fake_config c;
    load_config(&c);
    if (device_index(device, &c) < 0 || !power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = c.power_mw;
    return NVML_SUCCESS;
}

static nvmlReturn_t running(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos, int graphics) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = 0;
    for (unsigned k = 0; k < c.nprocs; k++)
        if ((int)c.procs[k].dev == i && c.procs[k].graphics == graphics) n++;
    if (infos == NULL || *count < n) {
        *count = n;
        return n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned j = 0;
    for (unsigned k = 0; k < c.nprocs; k++) {
        if ((int)c.procs[k].dev != i || c.procs[k].graphics != graphics) continue;
        infos[j].pid = c.procs[k].pid;
        infos[j].usedGpuMemory = (unsigned long long)c.procs[k].mem_mib << 20;
        infos[j].gpuInstanceId = 0xFFFFFFFFu;
        infos[j].computeInstanceId = 0xFFFFFFFFu;
        j++;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running(d, count, infos, 0);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running(d, count, infos, 0);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running(d, count, infos, 1);
}
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running(d, count, infos, 1);
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count, unsigned long long lastSeenTimeStamp) {
    struct fake_config c;
    load_config(&c);
    int i = device_index(device, &c);
    if (i < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    if (c.process_util_unsupported) return NVML_ERROR_NOT_SUPPORTED;
    fake_nvml_util_calls++;
    fake_nvml_last_seen = lastSeenTimeStamp;
    unsigned long long ts = now_us();
    unsigned n = 0;
    if (ts > lastSeenTimeStamp)
        for (unsigned k = 0; k < c.nprocs; k++)
            if ((int)c.procs[k].dev == i && c.procs[k].util > 0) n++;
    if (n == 0) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (samples == NULL || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned j = 0;
    for (unsigned k = 0; k < c.nprocs; k++) {
        if ((int)c.procs[k].dev != i || c.procs[k].util == 0) continue;
        samples[j].pid = c.procs[k].pid;
        samples[j].timeStamp = ts;
        samples[j].smUtil = c.procs[k].util;
        samples[j].memUtil = c.procs[k].util / 2;
        samples[j].encUtil = 0;
        samples[j].decUtil = 0;
        j++;
    }
    *count = n;
    return NVML_SUCCESS;
}
