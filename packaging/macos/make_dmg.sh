#!/usr/bin/env bash
# Pack the PyInstaller bundle (packaging/build/pyinstaller/Lowbit.app) into a disk image
# with an Applications link to drag it onto:  packaging/macos/make_dmg.sh VERSION
set -euo pipefail
cd "$(dirname "$0")/../build"
version="$1"
arch="$(uname -m)"
app="pyinstaller/Lowbit.app"
[ -d "$app" ] || { echo "no $app: run PyInstaller first" >&2; exit 1; }
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -R "$app" "$stage/"
ln -s /Applications "$stage/Applications"
mkdir -p dist
hdiutil create -volname "Lowbit $version" -srcfolder "$stage" -fs HFS+ -format UDZO -ov \
    "dist/Lowbit-$version-macos-$arch.dmg"
