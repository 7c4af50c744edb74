/* A persistent thread pool. The calling thread takes part in every job as
 * worker 0. Tasks are claimed from an atomic counter, so uneven tasks balance
 * themselves. A decoding step runs a few hundred short jobs, so between jobs
 * workers first spin on the job counter for a while (a wake-up through the
 * kernel costs tens of microseconds) and only then sleep on a condition
 * variable. */
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
    int64_t n_tasks;
    _Alignas(64) atomic_llong next_task; /* own cache line: every worker hits it */
    char pad_[64 - sizeof(atomic_llong)];
};

static void lb_pool_drain(lb_pool *p, int thread_id) {
    for (;;) {
        const int64_t t = (int64_t)atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->n_tasks) {
            break;
        }
        p->fn(p->ctx, t, thread_id);
    }
}

/* The spin loops poll with plain atomic loads, without x86 `pause` / arm `yield`.
 * Under a hypervisor a loop of pauses triggers pause-loop exits that take the
 * virtual CPU away for far longer than a job lasts; on a 2-vCPU machine decoding
 * with 2 threads went from 22 to 63 tokens/s with another process busy, and from
 * 86 to 92 on an idle one. The spin is short (tens of microseconds) so a busy
 * machine gets its core back soon; then workers sleep. */
static inline void lb_cpu_relax(void) { atomic_signal_fence(memory_order_seq_cst); }

#define LB_SPIN_ROUNDS 20000 /* tens of microseconds of polling */

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
        for (int i = 0; gen == seen && i < LB_SPIN_ROUNDS; i++) {
            lb_cpu_relax();
            gen = atomic_load_explicit(&p->generation, memory_order_acquire);
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
    lb_mutex_init(&p->mutex);
    lb_cond_init(&p->wake);
    atomic_init(&p->next_task, 0);
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

void lb_pool_run(lb_pool *p, lb_task_fn fn, void *ctx, int64_t n_tasks) {
    if (n_tasks <= 0) {
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
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
    free(p->workers);
    free(p);
}
