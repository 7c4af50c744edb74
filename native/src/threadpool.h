/* Persistent thread pool (threadpool.c). Internal. */
#ifndef LB_THREADPOOL_H
#define LB_THREADPOOL_H

#include <stdint.h>

#include "lowbit.h"

typedef struct lb_pool lb_pool;

/* Called once per task index; thread_id is in 0..n_threads-1 and lets a task
 * use per-thread scratch memory. */
typedef void (*lb_task_fn)(void *ctx, int64_t task, int thread_id);

lb_status lb_pool_create(int n_threads, lb_pool **out);
int lb_pool_size(const lb_pool *p);
/* Run tasks 0..n_tasks-1 on all threads (the caller included); returns when
 * every task has finished. Not reentrant. */
void lb_pool_run(lb_pool *p, lb_task_fn fn, void *ctx, int64_t n_tasks);
void lb_pool_free(lb_pool *p);

#endif /* LB_THREADPOOL_H */
