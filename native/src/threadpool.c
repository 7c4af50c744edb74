/* A persistent thread pool. The calling thread takes part in every job as
 * worker 0; the others sleep on a condition variable between jobs. Tasks are
 * claimed from an atomic counter, so uneven tasks balance themselves. */
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
#else
#include <pthread.h>
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
    lb_cond_t wake;     /* a new job or shutdown */
    lb_cond_t done;     /* a worker finished the job */
    uint64_t generation;/* bumped per job, under mutex */
    int n_finished;     /* under mutex */
    int shutdown;       /* under mutex */

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

#if defined(_WIN32)
static DWORD WINAPI lb_worker_main(LPVOID arg)
#else
static void *lb_worker_main(void *arg)
#endif
{
    lb_worker *w = (lb_worker *)arg;
    lb_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        lb_mutex_lock(&p->mutex);
        while (!p->shutdown && p->generation == seen) {
            lb_cond_wait(&p->wake, &p->mutex);
        }
        if (p->shutdown) {
            lb_mutex_unlock(&p->mutex);
            break;
        }
        seen = p->generation;
        lb_mutex_unlock(&p->mutex);

        lb_pool_drain(p, w->id);

        lb_mutex_lock(&p->mutex);
        p->n_finished++;
        lb_cond_broadcast(&p->done);
        lb_mutex_unlock(&p->mutex);
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
    lb_cond_init(&p->done);
    atomic_init(&p->next_task, 0);
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
        lb_mutex_lock(&p->mutex);
        p->n_finished = 0;
        p->generation++;
        lb_cond_broadcast(&p->wake);
        lb_mutex_unlock(&p->mutex);
    }
    lb_pool_drain(p, 0);
    if (use_workers) {
        lb_mutex_lock(&p->mutex);
        while (p->n_finished < p->n_started) {
            lb_cond_wait(&p->done, &p->mutex);
        }
        lb_mutex_unlock(&p->mutex);
    }
}

void lb_pool_free(lb_pool *p) {
    if (!p) {
        return;
    }
    lb_mutex_lock(&p->mutex);
    p->shutdown = 1;
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
    lb_cond_destroy(&p->done);
    lb_mutex_destroy(&p->mutex);
    free(p->workers);
    free(p);
}
