/* A persistent thread pool. The calling thread takes part in every job as
 * worker 0. Each thread owns an equal run of the job's task indices and takes
 * them from the front; once its run is done it takes other threads' tasks
 * from the back of theirs, so uneven tasks still balance. A thread thus works
 * through neighbouring tasks (one stream of weight rows while decoding, which
 * the hardware prefetchers follow) and claims them on a cache line of its
 * own. A decoding step runs a few hundred short jobs, so between jobs workers
 * first spin on the job counter for a while (a wake-up through the kernel
 * costs tens of microseconds) and only then sleep on a condition variable. */
#include <stdatomic.h>
#include <stdlib.h>

#include "lb_internal.h"
#include "threadpool.h"

#if defined(_WIN32)
#include <windows.h>
typedef HANDLE lb_thread_t;
typedef SRWLOCK lb_mutex_t;
typedef CONDITION_VARIABLE lb_cond_t;
static void lb_mutex_init(lb_mutex_t *m) { InitializeSRWLock(m); }
static void lb_mutex_destroy(lb_mutex_t *m) { (void)m; }
static void lb_mutex_lock(lb_mutex_t *m) { AcquireSRWLockExclusive(m); }
static void lb_mutex_unlock(lb_mutex_t *m) { ReleaseSRWLockExclusive(m); }
static void lb_cond_init(lb_cond_t *c) { InitializeConditionVariable(c); }
static void lb_cond_destroy(lb_cond_t *c) { (void)c; }
static void lb_cond_wait(lb_cond_t *c, lb_mutex_t *m) { SleepConditionVariableSRW(c, m, INFINITE, 0); }
static void lb_cond_broadcast(lb_cond_t *c) { WakeAllConditionVariable(c); }
static void lb_yield(void) { SwitchToThread(); }
#else
#include <pthread.h>
#include <sched.h>
#include <time.h>
typedef pthread_t lb_thread_t;
typedef pthread_mutex_t lb_mutex_t;
typedef pthread_cond_t lb_cond_t;
static void lb_mutex_init(lb_mutex_t *m) { pthread_mutex_init(m, NULL); }
static void lb_mutex_destroy(lb_mutex_t *m) { pthread_mutex_destroy(m); }
static void lb_mutex_lock(lb_mutex_t *m) { pthread_mutex_lock(m); }
static void lb_mutex_unlock(lb_mutex_t *m) { pthread_mutex_unlock(m); }
static void lb_cond_init(lb_cond_t *c) { pthread_cond_init(c, NULL); }
static void lb_cond_destroy(lb_cond_t *c) { pthread_cond_destroy(c); }
static void lb_cond_wait(lb_cond_t *c, lb_mutex_t *m) { pthread_cond_wait(c, m); }
static void lb_cond_broadcast(lb_cond_t *c) { pthread_cond_broadcast(c); }
static void lb_yield(void) { sched_yield(); }
#endif

/* A thread's run of tasks [front, back), packed in one word so that its owner
 * (taking the front) and a thief (taking the back) agree through one CAS. */
typedef struct lb_run {
    _Alignas(64) atomic_ullong fb; /* front in the low 32 bits, back in the high */
    char pad_[64 - sizeof(atomic_ullong)];
} lb_run;

/* Tasks per job piece: the run bounds are 32-bit. */
#define LB_PIECE_TASKS 0x7fffffffLL

typedef struct lb_worker {
    struct lb_pool *pool;
    int id;
    lb_thread_t thread;
} lb_worker;

struct lb_pool {
    int n_threads;
    lb_worker *workers; /* n_threads - 1 of them */
    int n_started;

    lb_mutex_t mutex;
    lb_cond_t wake;     /* a new job or shutdown, for sleeping workers */
    _Alignas(64) atomic_ullong generation; /* bumped per job */
    _Alignas(64) atomic_int n_finished;    /* workers done with the current job */
    atomic_int shutdown;
    atomic_int n_sleeping; /* workers in (or about to enter) the condition wait */

    /* the current job */
    lb_task_fn fn;
    void *ctx;
    int64_t base;    /* task index of the piece's first task */
    lb_run *runs;    /* [n_threads], 64-byte aligned inside runs_mem */
    void *runs_mem;
};

/* Take one task of a run: the front one for its owner, else the back one. */
static int lb_run_take(lb_run *r, int front, int64_t *task) {
    unsigned long long v = atomic_load_explicit(&r->fb, memory_order_relaxed);
    for (;;) {
        const unsigned long long f = v & 0xffffffffULL, b = v >> 32;
        if (f >= b) {
            return 0;
        }
        const unsigned long long nv = front ? (f + 1) | (b << 32) : f | ((b - 1) << 32);
        if (atomic_compare_exchange_weak_explicit(&r->fb, &v, nv, memory_order_relaxed, memory_order_relaxed)) {
            *task = (int64_t)(front ? f : b - 1);
            return 1;
        }
    }
}

static void lb_pool_drain(lb_pool *p, int thread_id) {
    int64_t t;
    while (lb_run_take(&p->runs[thread_id], 1, &t)) {
        p->fn(p->ctx, p->base + t, thread_id);
    }
    for (int k = 1; k < p->n_threads; k++) {
        lb_run *r = &p->runs[(thread_id + k) % p->n_threads];
        while (lb_run_take(r, 0, &t)) {
            p->fn(p->ctx, p->base + t, thread_id);
        }
    }
}

/* The spin loops poll with plain atomic loads, without x86 `pause` / arm `yield`.
 * Under a hypervisor a loop of pauses triggers pause-loop exits that take the
 * virtual CPU away for far longer than a job lasts; on a 2-vCPU machine decoding
 * with 2 threads went from 22 to 63 tokens/s with another process busy, and from
 * 86 to 92 on an idle one. The spin is short (tens of microseconds) so a busy
 * machine gets its core back soon; then workers sleep. */
static inline void lb_cpu_relax(void) { atomic_signal_fence(memory_order_seq_cst); }

#define LB_SPIN_ROUNDS 20000 /* the caller's polls for the workers before it yields */

/* How long a worker polls for the next job before it sleeps. Timed, not
 * counted: 20000 polls took under 6 microseconds on a 2.6 GHz core, shorter
 * than some of a decoding step's serial stretches, and a worker then slept and
 * was woken about 8 times a token. */
#define LB_SPIN_NS 50000

static uint64_t lb_now_ns(void) {
#if defined(_WIN32)
    LARGE_INTEGER freq, t;
    QueryPerformanceFrequency(&freq); /* fixed at boot, read from shared memory */
    QueryPerformanceCounter(&t);
    return (uint64_t)((double)t.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

#if defined(_WIN32)
static DWORD WINAPI lb_worker_main(LPVOID arg)
#else
static void *lb_worker_main(void *arg)
#endif
{
    lb_worker *w = (lb_worker *)arg;
    lb_pool *p = w->pool;
    unsigned long long seen = 0;
    for (;;) {
        unsigned long long gen = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (gen == seen) {
            const uint64_t until = lb_now_ns() + LB_SPIN_NS;
            for (unsigned i = 1; gen == seen; i++) {
                lb_cpu_relax();
                gen = atomic_load_explicit(&p->generation, memory_order_acquire);
                if (i % 256 == 0 && lb_now_ns() > until) { /* the clock costs tens of polls */
                    break;
                }
            }
        }
        if (gen == seen) {
            lb_mutex_lock(&p->mutex);
            /* Announce the sleep before the last look at the generation; the
             * job side bumps the generation before it looks at n_sleeping.
             * Both are seq_cst, so at least one of us sees the other. */
            atomic_fetch_add(&p->n_sleeping, 1);
            while (!atomic_load(&p->shutdown) && (gen = atomic_load(&p->generation)) == seen) {
                lb_cond_wait(&p->wake, &p->mutex);
            }
            atomic_fetch_sub(&p->n_sleeping, 1);
            lb_mutex_unlock(&p->mutex);
        }
        if (atomic_load(&p->shutdown)) {
            break;
        }
        seen = gen;
        lb_pool_drain(p, w->id);
        atomic_fetch_add_explicit(&p->n_finished, 1, memory_order_release);
    }
#if defined(_WIN32)
    return 0;
#else
    return NULL;
#endif
}

lb_status lb_pool_create(int n_threads, lb_pool **out) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "thread count %d is outside 1..1024", n_threads);
    }
    lb_pool *p = (lb_pool *)calloc(1, sizeof *p);
    if (!p) {
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    }
    p->n_threads = n_threads;
    p->runs_mem = calloc((size_t)n_threads + 1, sizeof(lb_run));
    if (!p->runs_mem) {
        free(p);
        return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    }
    p->runs = (lb_run *)(((uintptr_t)p->runs_mem + 63) & ~(uintptr_t)63);
    for (int i = 0; i < n_threads; i++) {
        atomic_init(&p->runs[i].fb, 0);
    }
    lb_mutex_init(&p->mutex);
    lb_cond_init(&p->wake);
    atomic_init(&p->generation, 0);
    atomic_init(&p->n_finished, 0);
    atomic_init(&p->shutdown, 0);
    atomic_init(&p->n_sleeping, 0);
    if (n_threads > 1) {
        p->workers = (lb_worker *)calloc((size_t)(n_threads - 1), sizeof *p->workers);
        if (!p->workers) {
            lb_pool_free(p);
            return lb_fail(LB_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        lb_worker *w = &p->workers[i];
        w->pool = p;
        w->id = i + 1;
#if defined(_WIN32)
        w->thread = CreateThread(NULL, 0, lb_worker_main, w, 0, NULL);
        const int failed = w->thread == NULL;
#else
        const int failed = pthread_create(&w->thread, NULL, lb_worker_main, w) != 0;
#endif
        if (failed) {
            lb_pool_free(p);
            return lb_fail(LB_ERR_INTERNAL, "could not start worker thread %d", i + 1);
        }
        p->n_started++;
    }
    *out = p;
    return LB_OK;
}

int lb_pool_size(const lb_pool *p) { return p->n_threads; }

static void lb_pool_run_piece(lb_pool *p, int64_t n_tasks);

void lb_pool_run(lb_pool *p, lb_task_fn fn, void *ctx, int64_t n_tasks) {
    p->fn = fn;
    p->ctx = ctx;
    for (int64_t done = 0; done < n_tasks; done += LB_PIECE_TASKS) {
        p->base = done;
        lb_pool_run_piece(p, n_tasks - done < LB_PIECE_TASKS ? n_tasks - done : LB_PIECE_TASKS);
    }
}

static void lb_pool_run_piece(lb_pool *p, int64_t n_tasks) {
    /* Thread i owns tasks [n*i/T, n*(i+1)/T). The generation bump below
     * publishes the runs to the workers. */
    for (int i = 0; i < p->n_threads; i++) {
        const unsigned long long lo = (unsigned long long)(n_tasks * i / p->n_threads);
        const unsigned long long hi = (unsigned long long)(n_tasks * (i + 1) / p->n_threads);
        atomic_store_explicit(&p->runs[i].fb, lo | (hi << 32), memory_order_relaxed);
    }
    /* Few tasks: waking the others costs more than it saves. */
    const int use_workers = p->n_started > 0 && n_tasks > 1;
    if (use_workers) {
        atomic_store_explicit(&p->n_finished, 0, memory_order_relaxed);
        atomic_fetch_add(&p->generation, 1); /* seq_cst: see the worker's side */
        /* Spinning workers see the new generation by themselves; only wake
         * sleepers, which saves a lock round trip per job while decoding.
         * Taking the mutex orders the broadcast after their last check. */
        if (atomic_load(&p->n_sleeping) > 0) {
            lb_mutex_lock(&p->mutex);
            lb_cond_broadcast(&p->wake);
            lb_mutex_unlock(&p->mutex);
        }
    }
    lb_pool_drain(p, 0);
    if (use_workers) {
        /* The others are working on the same job: finishing is imminent. */
        int spins = 0;
        while (atomic_load_explicit(&p->n_finished, memory_order_acquire) < p->n_started) {
            if (++spins < LB_SPIN_ROUNDS) {
                lb_cpu_relax();
            } else {
                lb_yield();
            }
        }
    }
}

void lb_pool_free(lb_pool *p) {
    if (!p) {
        return;
    }
    atomic_store(&p->shutdown, 1);
    lb_mutex_lock(&p->mutex);
    lb_cond_broadcast(&p->wake);
    lb_mutex_unlock(&p->mutex);
    for (int i = 0; i < p->n_started; i++) {
#if defined(_WIN32)
        WaitForSingleObject(p->workers[i].thread, INFINITE);
        CloseHandle(p->workers[i].thread);
#else
        pthread_join(p->workers[i].thread, NULL);
#endif
    }
    lb_cond_destroy(&p->wake);
    lb_mutex_destroy(&p->mutex);
    free(p->runs_mem);
    free(p->workers);
    free(p);
}
