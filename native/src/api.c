/* Error reporting and library-wide entry points. */
#include <stdarg.h>
#include <stdio.h>

#include "lb_internal.h"

static LB_THREAD_LOCAL char lb_error_buf[512];

lb_status lb_fail(lb_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lb_error_buf, sizeof lb_error_buf, fmt, ap);
    va_end(ap);
    return status;
}

void lb_clear_error(void) { lb_error_buf[0] = '\0'; }

const char *lb_last_error(void) { return lb_error_buf; }

const char *lb_version(void) { return "0.1.0"; }
