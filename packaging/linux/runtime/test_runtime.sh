#!/bin/sh
# Self-test for the AppImage type 2 runtime: builds it, wraps a tiny AppDir
# into AppImages (zstd and gzip squashfs) and checks offset, extraction,
# FUSE run, extract-and-run fallback, signal forwarding and damaged files.
#
#   sh test_runtime.sh          (needs mksquashfs, unsquashfs; FUSE optional)
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/runtime-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
pass=0 fail=0 skip=0
ok()   { pass=$((pass + 1)); echo "PASS: $*"; }
bad()  { fail=$((fail + 1)); echo "FAIL: $*"; }
skp()  { skip=$((skip + 1)); echo "SKIP: $*"; }
check() { desc=$1; shift; if "$@"; then ok "$desc"; else bad "$desc"; fi; }

# --- build -----------------------------------------------------------------
if make -s -C "$here" OUT="$work/runtime" >"$work/build.log" 2>&1; then
    ok "build ($(stat -c %s "$work/runtime") bytes)"
else
    bad "build"; cat "$work/build.log"; exit 1
fi
grep -i warning "$work/build.log" | sed 's/^/  build note: /'
check "runtime is statically linked" sh -c "file -L '$work/runtime' | grep -q 'statically linked'"
check "magic bytes 41 49 02 ('A' 'I' 2) at offset 8" \
    test "$(od -An -tx1 -j8 -N3 "$work/runtime" | tr -d ' ')" = 414902

# --- AppDir ------------------------------------------------------------------
app=$work/AppDir
mkdir -p "$app/usr/bin" "$app/usr/share/deep/er" "$app/empty"
cat >"$app/AppRun" <<'EOF'
#!/bin/sh
if [ "${1:-}" = sleep ]; then
    trap 'echo "got TERM"; exit 42' TERM
    echo ready
    sleep 30 & wait
    exit 1
fi
for a in "$@"; do printf 'arg=[%s]\n' "$a"; done
echo "APPDIR=$APPDIR"
echo "APPIMAGE=$APPIMAGE"
echo "ARGV0=$ARGV0"
echo "OWD=$OWD"
cat "$APPDIR/usr/share/deep/er/data.txt"
"$APPDIR/usr/bin/link"
echo "big=$(cksum <"$APPDIR/usr/share/big.bin")"
echo "fs=$(awk -v d="$APPDIR" '$2 == d { split($4, o, ","); print $3, o[1] }' /proc/self/mounts)"
exit 7
EOF
printf '#!/bin/sh\necho tool ran\n' >"$app/usr/bin/tool"
chmod 755 "$app/AppRun" "$app/usr/bin/tool"
ln -s tool "$app/usr/bin/link"
echo "nested data" >"$app/usr/share/deep/er/data.txt"
head -c 400000 /dev/urandom >"$app/usr/share/big.bin"   # several data blocks
echo private >"$app/usr/share/private.txt"; chmod 640 "$app/usr/share/private.txt"
chmod 750 "$app/usr/share/deep"

tree_of() { (cd "$1" && find . -printf '%p %y %m %l\n' | sort); }
mounts_left() { grep -c "$work" /proc/self/mounts; }

for comp in zstd gzip; do
    echo "== squashfs compression: $comp"
    d=$work/$comp; mkdir -p "$d/tmp" "$d/cwd"
    img=$d/test.AppImage
    mksquashfs "$app" "$d/img.squashfs" -root-owned -noappend -comp "$comp" \
        -quiet -no-progress >/dev/null
    cat "$work/runtime" "$d/img.squashfs" >"$img"; chmod +x "$img"
    rsize=$(stat -c %s "$work/runtime")

    off=$("$img" --appimage-offset)
    check "[$comp] --appimage-offset = runtime size ($off)" test "$off" = "$rsize"
    check "[$comp] unsquashfs -o OFFSET -l lists the tree" \
        sh -c "unsquashfs -o '$off' -l '$img' | grep -q 'squashfs-root/usr/share/deep/er/data.txt'"

    # Extraction
    (cd "$d/cwd" && "$img" --appimage-extract) >"$d/extract.out" 2>&1
    check "[$comp] --appimage-extract exit 0: $(tail -n1 "$d/extract.out")" test $? -eq 0
    check "[$comp] extracted tree identical (diff -r)" \
        diff -r --no-dereference "$app" "$d/cwd/squashfs-root"
    check "[$comp] types, modes and link targets identical" \
        test "$(tree_of "$app")" = "$(tree_of "$d/cwd/squashfs-root")"
    check "[$comp] symlink preserved" \
        test "$(readlink "$d/cwd/squashfs-root/usr/bin/link")" = tool
    check "[$comp] exec bit preserved" test -x "$d/cwd/squashfs-root/usr/bin/tool"
    (cd "$d/cwd" && "$img" --appimage-extract) >/dev/null 2>&1
    check "[$comp] re-extract over existing tree" test $? -eq 0
    rm -rf "$d/cwd/squashfs-root"
    (cd "$d/cwd" && "$img" --appimage-extract 'usr/share/deep*') >/dev/null 2>&1
    check "[$comp] extract with PATTERN selects only matches" test \
        "$(cd "$d/cwd/squashfs-root" && find . | sort | tr '\n' ' ')" = \
        ". ./usr ./usr/share ./usr/share/deep ./usr/share/deep/er ./usr/share/deep/er/data.txt "
    rm -rf "$d/cwd/squashfs-root"

    expect_run() {  # $1 = label, $2 = output file, $3 = rc
        check "[$comp] $1: exit code 7" test "$3" -eq 7
        check "[$comp] $1: args passed" \
            grep -qx 'arg=\[b c\]' "$2"
        check "[$comp] $1: APPIMAGE absolute" grep -qx "APPIMAGE=$img" "$2"
        check "[$comp] $1: OWD and ARGV0 set" \
            sh -c "grep -qx 'OWD=$d/cwd' '$2' && grep -qx 'ARGV0=$img' '$2'"
        check "[$comp] $1: file and symlinked tool usable" \
            sh -c "grep -qx 'nested data' '$2' && grep -qx 'tool ran' '$2'"
        check "[$comp] $1: multi-block file content intact" \
            grep -qx "big=$(cksum <"$app/usr/share/big.bin")" "$2"
    }

    # Normal run through FUSE
    (cd "$d/cwd" && TMPDIR=$d/tmp "$img" a "b c" --x) >"$d/fuse.out" 2>&1; rc=$?
    if grep -q "FUSE is not available" "$d/fuse.out"; then
        skp "[$comp] FUSE mount not possible here: $(grep 'FUSE is not' "$d/fuse.out")"
    else
        expect_run "FUSE run" "$d/fuse.out" $rc
        check "[$comp] FUSE run: APPDIR was a .mount_test* dir" \
            grep -q "^APPDIR=$d/tmp/.mount_test" "$d/fuse.out"
        check "[$comp] FUSE run: mounted as $(sed -n 's/^fs=//p' "$d/fuse.out")" \
            grep -qx "fs=fuse.appimage ro" "$d/fuse.out"
    fi
    check "[$comp] FUSE run: no directory left in TMPDIR" test -z "$(ls -A "$d/tmp")"
    check "[$comp] FUSE run: nothing left mounted" test "$(mounts_left)" -eq 0

    # Extract-and-run, forced
    (cd "$d/cwd" && APPIMAGE_EXTRACT_AND_RUN=1 TMPDIR=$d/tmp "$img" a "b c") \
        >"$d/ear.out" 2>&1; rc=$?
    expect_run "extract-and-run" "$d/ear.out" $rc
    check "[$comp] extract-and-run: APPDIR was appimage_extracted_test*" \
        grep -q "^APPDIR=$d/tmp/appimage_extracted_test" "$d/ear.out"
    check "[$comp] extract-and-run: no directory left" test -z "$(ls -A "$d/tmp")"

    # Automatic fallback: hide /dev/fuse in a private mount namespace.
    if unshare -m true 2>/dev/null; then
        (cd "$d/cwd" && TMPDIR=$d/tmp unshare -m sh -c \
            "mount --bind /dev/null /dev/fuse && exec '$img' a 'b c'") >"$d/fb.out" 2>&1
        rc=$?
        check "[$comp] no FUSE: one-line notice then extract-and-run (rc $rc)" sh -c \
            "test $rc -eq 7 && test \$(grep -c 'appimage runtime: FUSE is not available' '$d/fb.out') -eq 1"
        sed -n 's/^appimage runtime:/  notice: &/p' "$d/fb.out"
        check "[$comp] no FUSE: no directory left" test -z "$(ls -A "$d/tmp")"
    else
        skp "[$comp] automatic fallback (unshare not permitted)"
    fi

    # SIGTERM sent to the runtime reaches AppRun; cleanup still happens.
    (cd "$d/cwd" && TMPDIR=$d/tmp exec "$img" sleep) >"$d/sig.out" 2>&1 &
    pid=$!
    i=0; while ! grep -q ready "$d/sig.out" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -TERM $pid; wait $pid; rc=$?
    check "[$comp] SIGTERM forwarded to AppRun (rc $rc)" \
        sh -c "test $rc -eq 42 && grep -q 'got TERM' '$d/sig.out'"
    check "[$comp] after SIGTERM: no mount, no directory" \
        sh -c "test $(mounts_left) -eq 0 && test -z \"\$(ls -A '$d/tmp')\""

    # Damaged files: truncated inside the squashfs, and no payload at all.
    sqsize=$(stat -c %s "$d/img.squashfs")
    head -c $((rsize + sqsize / 2)) "$img" >"$d/trunc.AppImage"; chmod +x "$d/trunc.AppImage"
    for mode in --appimage-extract run; do
        arg=$mode; [ "$mode" = run ] && arg=x
        (cd "$d/cwd" && TMPDIR=$d/tmp "$d/trunc.AppImage" "$arg") >"$d/trunc.out" 2>&1; rc=$?
        check "[$comp] truncated image, $mode: clean error (rc $rc: $(head -n1 "$d/trunc.out"))" \
            sh -c "test $rc -ne 0 && test $rc -lt 128 && grep -q '^appimage runtime: .*truncated' '$d/trunc.out'"
    done
    check "[$comp] truncated image: no directory left" test -z "$(ls -A "$d/tmp")"
    rm -rf "$d/cwd/squashfs-root"
    # Random corruption of the squashfs metadata (inode, directory and
    # fragment tables live in its last few KiB): errors are fine, crashes or
    # hangs are not, so extraction must end with 0 or 1.
    worst=0 i=0 errs=0
    while [ $i -lt 40 ]; do
        i=$((i + 1))
        cp "$img" "$d/bad.AppImage"
        pos=$(( rsize + sqsize - 8 - $(od -An -tu4 -N4 /dev/urandom | tr -d ' ') % 4096 ))
        head -c 8 /dev/urandom | dd of="$d/bad.AppImage" bs=1 seek=$pos conv=notrunc status=none
        rm -rf "$d/cwd/squashfs-root"
        (cd "$d/cwd" && timeout 20 "$d/bad.AppImage" --appimage-extract) >/dev/null 2>&1
        rc=$?; [ $rc -gt $worst ] && worst=$rc; [ $rc -ne 0 ] && errs=$((errs + 1))
    done
    rm -rf "$d/cwd/squashfs-root"
    check "[$comp] 40 corrupted images: no crash or hang ($errs clean errors, worst rc $worst)" \
        test $worst -le 1
    cp "$work/runtime" "$d/bare.AppImage"
    "$d/bare.AppImage" >"$d/bare.out" 2>&1; rc=$?
    check "[$comp] runtime without payload: clean error (rc $rc: $(head -n1 "$d/bare.out"))" \
        sh -c "test $rc -eq 1 && grep -q '^appimage runtime: no squashfs' '$d/bare.out'"
done

echo "== hostile image"
# Uncompressed metadata, so a directory entry name can be patched to "..".
h=$work/hostile; mkdir -p "$h/A" "$h/cwd"
printf '#!/bin/sh\nexit 0\n' >"$h/A/AppRun"; chmod 755 "$h/A/AppRun"
echo escaped >"$h/A/QQ"
mksquashfs "$h/A" "$h/img" -root-owned -noappend -noI -noD -noF -noX -quiet -no-progress >/dev/null
at=$(grep -obUa QQ "$h/img" | head -n1 | cut -d: -f1)
printf '..' | dd of="$h/img" bs=1 seek="$at" count=2 conv=notrunc status=none
cat "$work/runtime" "$h/img" >"$h/h.AppImage"; chmod +x "$h/h.AppImage"
(cd "$h/cwd" && "$h/h.AppImage" --appimage-extract) >"$h/out" 2>&1; rc=$?
check "entry named '..' refused (rc $rc: $(tail -n1 "$h/out"))" sh -c \
    "test $rc -eq 1 && grep -q \"refusing unsafe path in image: '..'\" '$h/out' && test ! -e '$h/cwd/QQ'"

echo "== other options"
"$work/runtime" --appimage-help >/dev/null 2>&1
check "--appimage-help exits 0" test $? -eq 0
"$work/runtime" --appimage-bogus >"$work/bogus.out" 2>&1; rc=$?
check "unknown --appimage- option rejected (rc $rc)" sh -c \
    "test $rc -eq 1 && grep -q '^appimage runtime: unknown option' '$work/bogus.out'"

echo "== $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
