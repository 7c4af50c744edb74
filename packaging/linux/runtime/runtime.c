/*
 * AppImage type 2 runtime.
 *
 * An AppImage is this ELF executable followed directly by a squashfs image.
 * Format facts relied on (AppImage specification, type 2):
 *   - the squashfs starts where the ELF file ends, computed from the ELF
 *     header as e_shoff + e_shentsize * e_shnum (section headers come last);
 *   - bytes 8..10 of the file are 'A', 'I', 0x02 (patched in at build time);
 *   - the image root holds an executable "AppRun", started with the
 *     environment variables APPIMAGE, APPDIR, ARGV0 and OWD.
 *
 * Normal run: mount the image read-only with FUSE on a fresh directory and
 * serve it from this process while a child runs AppRun.  Without FUSE (or
 * with APPIMAGE_EXTRACT_AND_RUN) the image is extracted to a temporary
 * directory instead, which is deleted afterwards.
 */
#define _GNU_SOURCE
/* squashfuse's config.h defines _POSIX_C_SOURCE; it must come before any
 * system header so that _GNU_SOURCE in <features.h> cleanly overrides it. */
#include <squashfuse/ll.h>

#include <ctype.h> /* C locale: isalnum() is ASCII-only */
#include <elf.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char self_path[PATH_MAX]; /* absolute path of the AppImage */
static int img_fd = -1;          /* the AppImage itself, opened once */
static uint64_t img_size, sq_off;

static void msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("appimage runtime: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
#define die(...) (msg(__VA_ARGS__), exit(1))

/* Offset of the squashfs = end of the ELF file according to its header. */
static uint64_t payload_offset(void)
{
    Elf64_Ehdr eh;
    if (pread(img_fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        die("%s is not an ELF file", self_path);
    if (eh.e_ident[EI_CLASS] != ELFCLASS64)
        die("unsupported ELF class %d (only 64-bit runtimes are supported)",
            eh.e_ident[EI_CLASS]);
    if (eh.e_ident[EI_DATA] !=
        (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB))
        die("ELF byte order does not match this machine");
    if (eh.e_shnum == 0 || eh.e_shentsize != sizeof(Elf64_Shdr))
        die("ELF header has no usable section table; cannot locate the image");
    uint64_t tab = (uint64_t)eh.e_shentsize * eh.e_shnum;
    if (eh.e_shoff > img_size || tab > img_size - eh.e_shoff)
        die("ELF section table lies beyond the end of the file; file damaged?");
    return eh.e_shoff + tab;
}

/* Open the embedded squashfs, checking every size against the real file. */
static void open_fs(sqfs *fs)
{
    struct squashfs_super_block sb;
    uint64_t avail = img_size - sq_off;
    /* Check the superblock first for precise messages.  Squashfs facts: it
     * sits at the image start, little-endian, s_magic "hsqs", and
     * bytes_used is the total image length. */
    if (avail < sizeof sb)
        die("no squashfs image after the runtime (offset %" PRIu64
            ", file size %" PRIu64 ")", sq_off, img_size);
    if (pread(img_fd, &sb, sizeof sb, (off_t)sq_off) != (ssize_t)sizeof sb ||
        le32toh(sb.s_magic) != SQUASHFS_MAGIC)
        die("no squashfs image at offset %" PRIu64 " (not an AppImage?)", sq_off);
    if (le64toh(sb.bytes_used) > avail)
        die("image is truncated: squashfs needs %" PRIu64 " bytes after offset %"
            PRIu64 " but only %" PRIu64 " are present",
            (uint64_t)le64toh(sb.bytes_used), sq_off, avail);
    memset(fs, 0, sizeof *fs);
    int maj, min;
    switch (sqfs_init(fs, img_fd, (size_t)sq_off)) {
    case SQFS_OK:
        return;
    case SQFS_BADVERSION:
        sqfs_version(fs, &maj, &min);
        die("unsupported squashfs version %d.%d", maj, min);
    case SQFS_BADCOMP:
        die("squashfs compression '%s' is not supported by this runtime",
            sqfs_compression_name(sqfs_compression(fs)));
    default:
        die("cannot read the squashfs image (file damaged?)");
    }
}

/* ---- extraction -------------------------------------------------------- */

/* A hostile image must not write outside the target: reject absolute paths
 * and empty, "." or ".." components. */
static bool safe_path(const char *p)
{
    if (*p == '/')
        return false;
    for (;;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && !strncmp(p, "..", 2)))
            return false;
        if (p[n] == '\0')
            return true;
        p += n + 1;
    }
}

/* Open the parent directory of `p` below `root` without following symlinks
 * (an image could otherwise plant a symlink and write through it).  Missing
 * parents are created, which happens when a PATTERN selects deep entries. */
static int open_parent(int root, const char *p, const char **leaf)
{
    int fd = fcntl(root, F_DUPFD_CLOEXEC, 0);
    for (const char *slash; fd >= 0 && (slash = strchr(p, '/')); p = slash + 1) {
        char comp[NAME_MAX + 1];
        size_t n = (size_t)(slash - p);
        int next = -1;
        errno = ENAMETOOLONG;
        if (n <= NAME_MAX) {
            memcpy(comp, p, n);
            comp[n] = '\0';
            if (mkdirat(fd, comp, 0755) == 0 || errno == EEXIST)
                next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        int saved = errno;
        close(fd);
        fd = next;
        errno = saved;
    }
    *leaf = p;
    return fd;
}

static int copy_file(sqfs *fs, sqfs_inode *ino, int out)
{
    static char buf[1 << 17];
    uint64_t total = ino->xtra.reg.file_size;
    for (uint64_t pos = 0; pos < total;) {
        sqfs_off_t n = (sqfs_off_t)(total - pos < sizeof buf ? total - pos : sizeof buf);
        if (sqfs_read_range(fs, ino, (sqfs_off_t)pos, &n, buf) != SQFS_OK || n <= 0) {
            errno = EIO; /* corrupt data block */
            return -1;
        }
        for (ssize_t w, done = 0; done < n; done += w)
            if ((w = write(out, buf + done, (size_t)(n - done))) < 0)
                return -1;
        pos += (uint64_t)n;
    }
    return 0;
}

struct dirmode { char *path; mode_t mode; };

/* Create one entry.  Returns 1 if extracted, 0 if skipped, -1 on error. */
static int extract_one(sqfs *fs, int root, const char *path, sqfs_inode *ino,
                       struct dirmode **dirs, size_t *ndirs)
{
    const char *leaf;
    mode_t type = sqfs_mode(ino->base.inode_type) & S_IFMT;
    mode_t perm = ino->base.mode & 07777;
    struct stat st;
    int rc = -1, dfd = open_parent(root, path, &leaf);
    if (dfd < 0)
        return -1;
    if (S_ISDIR(type)) {
        /* Owner-writable while filling; the real mode is applied at the end.
         * An existing directory (earlier extraction) is fine, a file is not. */
        if (mkdirat(dfd, leaf, 0700) == 0 ||
            (errno == EEXIST && fstatat(dfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
             S_ISDIR(st.st_mode))) {
            struct dirmode *d = realloc(*dirs, (*ndirs + 1) * sizeof *d);
            char *copy = strdup(path);
            if (d)
                *dirs = d;
            if (d && copy) {
                d[(*ndirs)++] = (struct dirmode){copy, perm};
                rc = 1;
            } else {
                free(copy);
            }
        }
    } else if (S_ISLNK(type)) {
        size_t len = 0;
        char *target = NULL;
        unlinkat(dfd, leaf, 0); /* replace an earlier extraction; never a dir */
        if (sqfs_readlink(fs, ino, NULL, &len) == SQFS_OK &&
            (target = malloc(++len)) != NULL &&
            sqfs_readlink(fs, ino, target, &len) == SQFS_OK &&
            symlinkat(target, dfd, leaf) == 0)
            rc = 1;
        free(target);
    } else if (S_ISREG(type)) {
        unlinkat(dfd, leaf, 0);
        int out = openat(dfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (out >= 0 && copy_file(fs, ino, out) == 0 && fchmod(out, perm) == 0)
            rc = 1;
        if (out >= 0 && close(out) != 0)
            rc = -1;
    } else {
        rc = 0; /* devices, fifos, sockets have no place in an AppDir */
    }
    int saved = errno;
    close(dfd);
    errno = saved;
    return rc;
}

/* Extract the image (or entries matching `pattern`) into directory `dest`. */
static int extract(const char *dest, const char *pattern, bool quiet)
{
    sqfs fs;
    sqfs_traverse trv;
    sqfs_err err = SQFS_OK;
    struct dirmode *dirs = NULL;
    size_t ndirs = 0, done = 0, skipped = 0;
    int rc = 0;
    open_fs(&fs);
    int root = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (root < 0 || sqfs_traverse_open(&trv, &fs, sqfs_inode_root(&fs)) != SQFS_OK) {
        msg("cannot start extracting to %s: %s", dest,
            root < 0 ? strerror(errno) : "unreadable root directory in image");
        if (root >= 0)
            close(root);
        sqfs_destroy(&fs);
        return -1;
    }
    while (rc == 0 && sqfs_traverse_next(&trv, &err)) {
        const char *p = trv.path;
        sqfs_inode ino;
        if (trv.dir_end || (pattern && safe_path(p) && fnmatch(pattern, p, 0) != 0))
            continue;
        if (!safe_path(p)) {
            msg("refusing unsafe path in image: '%s'", p);
            rc = -1;
        } else if (sqfs_inode_get(&fs, &ino, trv.entry.inode) != SQFS_OK) {
            msg("cannot read inode of '%s' (file damaged?)", p);
            rc = -1;
        } else {
            int r = extract_one(&fs, root, p, &ino, &dirs, &ndirs);
            if (r < 0) {
                msg("cannot extract '%s': %s", p, strerror(errno));
                rc = -1;
            }
            done += r > 0;
            skipped += r == 0;
        }
    }
    if (rc == 0 && err != SQFS_OK) {
        msg("error while reading the directory tree of the image (file damaged?)");
        rc = -1;
    }
    sqfs_traverse_close(&trv);
    /* Directory modes last and deepest-first, so a read-only directory does
     * not block its own extraction.  Every recorded path was checked above
     * to consist of real directories, so following it is safe. */
    while (ndirs > 0) {
        struct dirmode *d = &dirs[--ndirs];
        if (fchmodat(root, d->path, d->mode, 0) != 0 && rc == 0) {
            msg("cannot set mode of '%s': %s", d->path, strerror(errno));
            rc = -1;
        }
        free(d->path);
    }
    free(dirs);
    close(root);
    sqfs_destroy(&fs);
    if (rc == 0 && !quiet)
        printf("Extracted %zu entries to %s/ (%zu special files skipped)\n",
               done, dest, skipped);
    return rc;
}

/* ---- running AppRun ---------------------------------------------------- */

/* Serve FUSE requests (if se) and forward signals until the child exits. */
static int supervise(pid_t child, int sfd, struct fuse_session *se)
{
    struct pollfd pfd[2] = {{sfd, POLLIN, 0}, {se ? fuse_session_fd(se) : -1, POLLIN, 0}};
    struct fuse_buf buf;
    int status = 0;
    memset(&buf, 0, sizeof buf);
    for (;;) {
        if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
            msg("poll failed: %s", strerror(errno)); /* cannot serve; just wait */
            while (waitpid(child, &status, 0) < 0 && errno == EINTR)
                ;
            break;
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                /* Terminal signals (SI_KERNEL) already went to the whole
                 * foreground group, AppRun included; forward only kill()s. */
                if (si.ssi_signo != SIGCHLD && si.ssi_code != SI_KERNEL)
                    kill(child, (int)si.ssi_signo);
            if (waitpid(child, &status, WNOHANG) == child)
                break;
        }
        if (pfd[1].fd >= 0 && (pfd[1].revents & (POLLIN | POLLERR | POLLHUP))) {
            int r = fuse_session_receive_buf(se, &buf);
            if (r > 0)
                fuse_session_process_buf(se, &buf);
            else if (r != -EINTR && r != -EAGAIN)
                pfd[1].fd = -1; /* unmounted from outside: just wait for AppRun */
        }
    }
    free(buf.mem);
    return WIFEXITED(status) ? WEXITSTATUS(status)
         : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
}

static int run_apprun(const char *appdir, char **argv, struct fuse_session *se)
{
    char apprun[PATH_MAX], cwd[PATH_MAX];
    snprintf(apprun, sizeof apprun, "%s/AppRun", appdir); /* fits: see make_tmpdir */
    sigset_t set, old;
    sigemptyset(&set);
    int sigs[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaddset(&set, sigs[i]);
    /* Block before fork so that no SIGCHLD is lost; they are read via an fd.
     * Failures return instead of exiting so the caller still cleans up. */
    sigprocmask(SIG_BLOCK, &set, &old);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    fflush(NULL);
    pid_t pid = sfd < 0 ? -1 : fork();
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        setenv("APPIMAGE", self_path, 1);
        setenv("APPDIR", appdir, 1);
        setenv("ARGV0", argv[0], 1);
        if (getcwd(cwd, sizeof cwd))
            setenv("OWD", cwd, 1);
        argv[0] = apprun;
        execv(apprun, argv);
        msg("cannot execute %s: %s", apprun, strerror(errno));
        _exit(127);
    }
    int st = 1;
    if (pid < 0)
        msg("cannot start AppRun: %s", strerror(errno));
    else
        st = supervise(pid, sfd, se);
    if (sfd >= 0)
        close(sfd);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return st;
}

static void make_tmpdir(char *out, const char *prefix, const char *name)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    /* Leave room for "/AppRun" appended later. */
    if (snprintf(out, PATH_MAX, "%s/%s%sXXXXXX", tmp, prefix, name) >= PATH_MAX - 16)
        die("TMPDIR path too long");
    if (!mkdtemp(out))
        die("cannot create a directory in %s: %s", tmp, strerror(errno));
}

static char fuse_err[256];
static void capture_fuse_log(enum fuse_log_level lvl, const char *fmt, va_list ap)
{
    (void)lvl;
    if (!fuse_err[0]) {
        vsnprintf(fuse_err, sizeof fuse_err, fmt, ap);
        fuse_err[strcspn(fuse_err, "\n")] = '\0';
    }
}

/* Returns AppRun's status, or -1 if FUSE is unusable (caller falls back). */
static int run_mounted(char **argv, const char *name)
{
    char mnt[PATH_MAX], opts[128];
    sqfs_ll *ll = calloc(1, sizeof *ll);
    if (!ll)
        die("out of memory");
    open_fs(&ll->fs);
    if (sqfs_ll_init(ll) != SQFS_OK)
        die("cannot initialise the squashfs inode table");
    make_tmpdir(mnt, ".mount_", name); /* the last step that may exit */
    struct fuse_lowlevel_ops ops = {
        .lookup = sqfs_ll_op_lookup,       .forget = sqfs_ll_op_forget,
        .getattr = sqfs_ll_op_getattr,     .readlink = sqfs_ll_op_readlink,
        .open = sqfs_ll_op_open,           .read = sqfs_ll_op_read,
        .release = sqfs_ll_op_release,     .opendir = sqfs_ll_op_opendir,
        .readdir = sqfs_ll_op_readdir,     .releasedir = sqfs_ll_op_releasedir,
        .statfs = stfs_ll_op_statfs,       .getxattr = sqfs_ll_op_getxattr,
        .listxattr = sqfs_ll_op_listxattr, .create = sqfs_ll_op_create,
    };
    snprintf(opts, sizeof opts, "ro,nosuid,nodev,fsname=%s,subtype=appimage", name);
    char *fargv[] = {"appimage", "-o", opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    fuse_set_log_func(capture_fuse_log); /* summarised in one line below */
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, ll);
    bool mounted = se && fuse_session_mount(se, mnt) == 0;
    fuse_set_log_func(NULL);
    fuse_opt_free_args(&args);
    int st = -1;
    if (mounted) {
        fcntl(fuse_session_fd(se), F_SETFD, FD_CLOEXEC); /* not for AppRun */
        st = run_apprun(mnt, argv, se);
        fuse_session_unmount(se); /* before rmdir, or it would hang on us */
    } else {
        msg("FUSE is not available (%s); extracting the image to a temporary "
            "directory instead", fuse_err[0] ? fuse_err : "mount failed");
    }
    if (se)
        fuse_session_destroy(se);
    sqfs_ll_destroy(ll);
    free(ll);
    if (rmdir(mnt) != 0)
        msg("cannot remove mount point %s: %s", mnt, strerror(errno));
    return st;
}

static int make_writable(const char *p, const struct stat *st, int type, struct FTW *f)
{
    (void)f;
    if (type == FTW_D || type == FTW_DNR)
        chmod(p, (st->st_mode & 07777) | S_IRWXU);
    return 0;
}

static int remove_entry(const char *p, const struct stat *st, int type, struct FTW *f)
{
    (void)st, (void)f;
    if ((type == FTW_DP ? rmdir(p) : unlink(p)) != 0)
        msg("cannot remove %s: %s", p, strerror(errno));
    return 0;
}

static int run_extracted(char **argv, const char *name)
{
    char dir[PATH_MAX];
    make_tmpdir(dir, "appimage_extracted_", name);
    int st = extract(dir, NULL, true) == 0 ? run_apprun(dir, argv, NULL) : 1;
    /* Recursive delete; FTW_PHYS removes symlinks and never follows them. */
    nftw(dir, make_writable, 16, FTW_PHYS);
    nftw(dir, remove_entry, 16, FTW_PHYS | FTW_DEPTH);
    return st;
}

int main(int argc, char **argv)
{
    struct stat st;
    if (argc < 1)
        die("started without argv[0]");
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0 || n >= (ssize_t)sizeof self_path - 1)
        die("cannot resolve /proc/self/exe: %s", n < 0 ? strerror(errno) : "bad path");
    self_path[n] = '\0';
    /* /proc/self/exe is the very file being executed, even if renamed. */
    img_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (img_fd < 0 || fstat(img_fd, &st) != 0)
        die("cannot open %s: %s", self_path, strerror(errno));
    img_size = (uint64_t)st.st_size;
    sq_off = payload_offset();

    const char *opt = argc > 1 ? argv[1] : "";
    const char *ear = getenv("APPIMAGE_EXTRACT_AND_RUN");
    bool extract_run = ear && *ear && strcmp(ear, "0") != 0;
    if (!strcmp(opt, "--appimage-offset")) {
        printf("%" PRIu64 "\n", sq_off);
        return 0;
    } else if (!strcmp(opt, "--appimage-help")) {
        printf("Usage: %s [--appimage-OPTION | ARGS...]\n"
               "Without an --appimage- option, runs the bundled application with ARGS.\n"
               "  --appimage-help              show this help\n"
               "  --appimage-offset            print the offset of the embedded squashfs\n"
               "  --appimage-extract [PATTERN] extract all (or paths matching the shell\n"
               "                               PATTERN) into ./squashfs-root/\n"
               "  --appimage-extract-and-run   run from a temporary copy instead of FUSE\n"
               "Environment: APPIMAGE_EXTRACT_AND_RUN=1 (same as above), TMPDIR.\n",
               argv[0]);
        return 0;
    } else if (!strcmp(opt, "--appimage-extract")) {
        if (mkdir("squashfs-root", 0755) != 0 && errno != EEXIST)
            die("cannot create squashfs-root: %s", strerror(errno));
        return extract("squashfs-root", argc > 2 ? argv[2] : NULL, false) == 0 ? 0 : 1;
    } else if (!strcmp(opt, "--appimage-extract-and-run")) {
        memmove(argv + 1, argv + 2, (size_t)(argc - 1) * sizeof *argv); /* + NULL */
        extract_run = true;
    } else if (!strncmp(opt, "--appimage-", 11)) {
        die("unknown option %s (see --appimage-help)", opt);
    }

    /* Name for temporary directories: basename without extension, limited
     * to characters that are safe in paths and in FUSE mount options. */
    char name[33];
    const char *base = strrchr(self_path, '/') + 1; /* readlink gives abs path */
    const char *dot = strrchr(base, '.');
    size_t len = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    len = len < sizeof name - 1 ? len : sizeof name - 1;
    for (size_t i = 0; i < len; i++)
        name[i] = isalnum((unsigned char)base[i]) || base[i] == '-' ? base[i] : '_';
    name[len] = '\0';
    if (len == 0)
        strcpy(name, "app");

    /* Validate the image up front: later steps create directories and must
     * not exit on a damaged file before removing them. */
    sqfs probe;
    open_fs(&probe);
    sqfs_destroy(&probe);
    int status = extract_run ? -1 : run_mounted(argv, name);
    return status >= 0 ? status : run_extracted(argv, name);
}
